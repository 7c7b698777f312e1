//! How a session ends (`ssm-protocol.md` §5): why ([`End`]), and the `channel_closed` Output
//! MGS sends before it closes the WebSocket.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Agent, WsOut, IDLE_TIMEOUT_TEXT};
use crate::ssm::bump;
use rds_auth_proxy_protocol::ssm::message::{message_type, now_millis, ChannelClosed};

/// What the agent says when the handshake times out.
const HANDSHAKE_TIMEOUT_TEXT: &str =
    "Handshake timed out. Please ensure that you have the latest version of the session manager plugin.";

/// Why a session ended; decides the `channel_closed` Output.
#[derive(Debug)]
pub(super) enum End {
    TerminateFlag,
    TerminateApi,
    IdleTimeout,
    HandshakeTimeout,
    /// The client refused an action or sent an unreadable response.
    HandshakeFailed(String),
    /// The port plugin failed (basic-mode dial, smux session death).
    PortFailed(String),
    /// Internal limits (sequence space) or the simulator is stopping.
    Stopped(String),
}

impl End {
    pub(super) fn output(&self) -> String {
        match self {
            End::IdleTimeout => IDLE_TIMEOUT_TEXT.to_owned(),
            End::HandshakeTimeout => HANDSHAKE_TIMEOUT_TEXT.to_owned(),
            End::HandshakeFailed(text) | End::PortFailed(text) | End::Stopped(text) => text.clone(),
            // Nothing documents a reason for a requested termination; MGS is assumed to send none.
            End::TerminateFlag | End::TerminateApi => String::new(),
        }
    }
}

impl Agent {
    pub(super) async fn finish(mut self, end: End) {
        let output = end.output();
        tracing::debug!(session = %self.shared.id, reason = ?end, "simulated session ended");
        let stats = &self.inner.stats;
        bump(&stats.sessions_ended);
        stats.session_closed();
        self.shared.tokens().clear();
        let client_id = {
            let mut info = self.shared.info_mut();
            info.ended = Some(output.clone());
            info.client_id.clone()
        };
        if let Some(flights) = &mut self.flights {
            flights.finish();
        }
        // Close the target side first, as the agent cancels its plugin before closing.
        self.port = None;
        self.port_events = None;
        if let Some((_, tx)) = self.ws.take() {
            let frame = channel_closed_frame(&self.shared.id, client_id.as_deref(), &output);
            let send = async {
                tx.send(WsOut::Binary(frame)).await.ok()?;
                tx.send(WsOut::Close {
                    code: 1000,
                    reason: "",
                })
                .await
                .ok()
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
        }
        self.shared.ended.send_replace(true);
    }
}

/// `channel_closed` as MGS frames it (§2.2): HeaderLength 112 (no PayloadType field) and the
/// type NUL-padded, so clients exercise the same lenient parsing they need against AWS.
pub(super) fn channel_closed_frame(session_id: &str, client_id: Option<&str>, output: &str) -> Bytes {
    let message_id = Uuid::new_v4();
    let body = ChannelClosed {
        message_id: Some(message_id.hyphenated().to_string()),
        created_date: Some(iso8601_now()),
        destination_id: client_id.map(str::to_owned),
        session_id: Some(session_id.to_owned()),
        message_type: Some(message_type::CHANNEL_CLOSED.to_owned()),
        schema_version: Some(1),
        output: Some(output.to_owned()),
    };
    let payload = serde_json::to_vec(&body).unwrap_or_default();
    let mut buf = BytesMut::with_capacity(116 + payload.len());
    buf.put_u32(112);
    let name = message_type::CHANNEL_CLOSED.as_bytes();
    buf.put_slice(name);
    buf.put_bytes(0, 32 - name.len());
    buf.put_u32(1);
    buf.put_u64(now_millis());
    buf.put_i64(0);
    buf.put_u64(0);
    let (high, low) = message_id.as_bytes().split_at(8);
    buf.put_slice(low);
    buf.put_slice(high);
    buf.put_slice(&Sha256::digest(&payload));
    buf.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    buf.put_slice(&payload);
    buf.freeze()
}

/// UTC now as `2006-01-02T15:04:05.000Z`.
pub(super) fn iso8601_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days, for days since 1970-01-01.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rds_auth_proxy_protocol::ssm::message::ClientMessage;

    #[test]
    fn channel_closed_uses_the_mgs_header_quirk_and_decodes() {
        let frame = channel_closed_frame("sim-1", Some("c"), IDLE_TIMEOUT_TEXT);
        assert_eq!(&frame[..4], &112u32.to_be_bytes());
        assert_eq!(frame[4 + "channel_closed".len()], 0);
        let message = ClientMessage::decode(&frame).expect("decodes");
        assert_eq!(message.message_type, message_type::CHANNEL_CLOSED);
        let closed = ChannelClosed::from_payload(&message.payload).expect("json");
        assert_eq!(closed.reason(), Some(IDLE_TIMEOUT_TEXT));
        assert_eq!(closed.session_id.as_deref(), Some("sim-1"));
    }

    #[test]
    fn iso_dates_look_like_go() {
        let date = iso8601_now();
        assert_eq!(date.len(), "2006-01-02T15:04:05.000Z".len());
        assert!(date.ends_with('Z') && date.as_bytes()[10] == b'T');
    }
}
