//! The session's opening as the agent runs it (`ssm-protocol.md` §3): the HandshakeRequest it
//! sends, the client's HandshakeResponse, the mode it picks from both versions (basic or mux,
//! its smux keepalive on or off) and the HandshakeComplete that starts the port plugin.

use std::cmp::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use super::{Agent, End, Phase};
use crate::ssm::bump;
use crate::ssm::flights::SessionFlights;
use crate::ssm::port;
use rds_auth_proxy_protocol::ssm::handshake::{
    self, ActionStatus, HandshakeCompletePayload, HandshakeResponsePayload,
    AGENT_KEEPALIVE_OFF_AFTER_CLIENT_VERSION, LOCAL_PORT_FORWARDING, MUX_MIN_CLIENT_VERSION,
};
use rds_auth_proxy_protocol::ssm::message::{ClientMessage, PayloadType};

/// First agent release that turns its smux keepalive off for new clients (3.1.1575.0 release
/// notes); older agents always keep it on.
const AGENT_KEEPALIVE_GATE_SINCE: &str = "3.1.1575.0";

impl Agent {
    /// Sends the HandshakeRequest now, unless the `hang_handshake` knob holds it back (then
    /// the run loop sends it once the knob is off).
    pub(super) fn send_handshake_request_unless_held(&mut self) -> Result<(), End> {
        if self.handshake_sent || self.inner.knobs.read(|o| o.hang_handshake) {
            return Ok(());
        }
        self.handshake_sent = true;
        self.send_handshake_request()
    }

    fn send_handshake_request(&mut self) -> Result<(), End> {
        /// Go's struct field order (`SessionType`, then `Properties`), which a `serde_json::Value`
        /// would sort the other way round.
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct SessionTypeRequest<'a> {
            session_type: &'a str,
            properties: &'a serde_json::Value,
        }
        /// One requested action; its parameters are a SessionType request or raw JSON.
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Parameters<'a> {
            SessionType(SessionTypeRequest<'a>),
            Other(serde_json::Value),
        }
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Action<'a> {
            action_type: &'a str,
            action_parameters: Parameters<'a>,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Request<'a> {
            agent_version: &'a str,
            requested_client_actions: Vec<Action<'a>>,
        }
        self.agent_version = self.inner.knobs.read(|o| o.agent_version.clone());
        self.extra_action = self.inner.knobs.read(|o| o.extra_handshake_action.clone());
        let agent_version = self.agent_version.clone();
        let mut actions = vec![Action {
            action_type: handshake::ACTION_SESSION_TYPE,
            action_parameters: Parameters::SessionType(SessionTypeRequest {
                session_type: handshake::SESSION_TYPE_PORT,
                properties: &self.properties,
            }),
        }];
        if let Some(extra) = &self.extra_action {
            actions.push(Action {
                action_type: extra,
                action_parameters: Parameters::Other(serde_json::json!({ "Feature": "sim" })),
            });
        }
        let request = Request {
            agent_version: &agent_version,
            requested_client_actions: actions,
        };
        let payload = serde_json::to_vec(&request)
            .map_err(|e| End::Stopped(format!("cannot encode HandshakeRequest: {e}")))?;
        // The agent's handshake timer runs from the session's start, whether or not the
        // request was held back.
        self.phase = Phase::AwaitingResponse {
            sent_at: self.started,
        };
        self.push(PayloadType::HandshakeRequest, Bytes::from(payload))
            .map(drop)
    }

    pub(super) fn complete_handshake(
        &mut self,
        message: &ClientMessage,
        elapsed: Duration,
    ) -> Result<(), End> {
        let response: HandshakeResponsePayload =
            message.json_payload("HandshakeResponse").map_err(|e| {
                End::HandshakeFailed(format!("Failed to read the handshake response: {e}"))
            })?;
        let mut declined = Vec::new();
        for action in &response.processed_client_actions {
            // A newer agent's optional action: what every released client answers for an
            // action it does not know (the plugin: status 0, result 3) is accepted.
            let optional = self.extra_action.as_deref() == Some(action.action_type.as_str());
            let unsupported = action.action_status == ActionStatus::Unsupported
                || (action.action_status == ActionStatus::Unknown(0)
                    && action.action_result == serde_json::json!(3));
            if optional && unsupported {
                declined.push(action.action_type.clone());
            }
        }
        if let Some(failed) = response.processed_client_actions.iter().find(|a| {
            a.action_status != ActionStatus::Success && !declined.contains(&a.action_type)
        }) {
            return Err(End::HandshakeFailed(format!(
                "{} failed on client with status {} error: {}",
                failed.action_type,
                i64::from(failed.action_status),
                failed.error
            )));
        }
        let client_version = response.client_version;
        // The agent's rules (§3.3, §5.1), for the agent version this node pretends to run: an
        // agent from before mux existed runs basic whatever the client says, and one from
        // before the version gate keeps its smux keepalive on.
        let agent_version = &self.agent_version;
        let local_port_forwarding =
            self.properties.get("type").and_then(|t| t.as_str()) == Some(LOCAL_PORT_FORWARDING);
        let mux = local_port_forwarding
            && handshake::agent_supports_mux(agent_version)
            && compare_client_version(&client_version, MUX_MIN_CLIENT_VERSION) != Ordering::Less;
        let keepalive = compare_client_version(agent_version, AGENT_KEEPALIVE_GATE_SINCE)
            == Ordering::Less
            || compare_client_version(&client_version, AGENT_KEEPALIVE_OFF_AFTER_CLIENT_VERSION)
                != Ordering::Greater;

        let complete = HandshakeCompletePayload {
            handshake_time_to_complete: i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX),
            customer_message: String::new(),
        };
        let payload = serde_json::to_vec(&complete)
            .map_err(|e| End::Stopped(format!("cannot encode HandshakeComplete: {e}")))?;
        self.push(PayloadType::HandshakeComplete, Bytes::from(payload))?;
        self.complete_sent_at = Some(Instant::now());
        self.phase = Phase::Complete;
        bump(&self.inner.stats.handshakes_completed);
        {
            let mut info = self.shared.info_mut();
            info.client_version = Some(client_version);
            info.mux = Some(mux);
            info.agent_keepalive = mux.then_some(keepalive);
            info.declined_actions = declined;
        }
        let host = self
            .properties
            .get("host")
            .and_then(|h| h.as_str())
            .filter(|h| !h.is_empty())
            .unwrap_or("localhost")
            .to_owned();
        let (handle, events) = if mux {
            port::start_mux(self.inner.clone(), host, keepalive)
        } else {
            port::start_basic(self.inner.clone(), host)
        };
        self.port = Some(handle);
        self.port_events = Some(events);
        self.flights = Some(SessionFlights::new(
            self.inner.stats.clone(),
            &self.shared.id,
            mux,
        ));
        Ok(())
    }
}

/// The agent's `versionutil.Compare` on what clients send: the numeric dotted prefix decides
/// ("1.2.0.0-gimlet" is 1.2.0.0), and an unreadable version counts as the lowest, which picks
/// basic mode and keeps the smux keepalive on.
pub(super) fn compare_client_version(client: &str, reference: &str) -> Ordering {
    let end = client
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(client.len());
    let numeric = client[..end].trim_end_matches('.');
    handshake::compare_versions(numeric, reference).unwrap_or(Ordering::Less)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_versions_compare_like_the_agent() {
        assert_eq!(
            compare_client_version("1.2.650.0", "1.1.70"),
            Ordering::Greater
        );
        assert_eq!(compare_client_version("1.1.70", "1.1.70"), Ordering::Equal);
        assert_eq!(compare_client_version("0.0.1", "1.1.70"), Ordering::Less);
        assert_eq!(
            compare_client_version("1.2.0.0-gimlet", "1.2.331.0"),
            Ordering::Less
        );
        assert_eq!(
            compare_client_version("1.2.0.0-gimlet", "1.1.70"),
            Ordering::Greater
        );
        assert_eq!(compare_client_version("", "1.1.70"), Ordering::Less);
        assert_eq!(
            compare_client_version("1.3.0.0", "1.2.331.0"),
            Ordering::Greater
        );
    }
}
