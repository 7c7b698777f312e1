//! The data channel handshake (`ssm-protocol.md` §2.8, §3): its JSON payloads, our answer to
//! the agent's requested actions, and the version comparisons that pick basic or mux mode.

use std::cmp::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

use super::message::PayloadType;

/// The one session type this proxy accepts.
pub const SESSION_TYPE_PORT: &str = "Port";
/// `Properties.type` that selects port forwarding to a local listener (basic or mux).
pub const LOCAL_PORT_FORWARDING: &str = "LocalPortForwarding";
/// Requested action carrying the session type and document properties.
pub const ACTION_SESSION_TYPE: &str = "SessionType";
/// Requested action asking for KMS encryption, which we refuse.
pub const ACTION_KMS_ENCRYPTION: &str = "KMSEncryption";

/// Text we put in a refused KMSEncryption action; the agent echoes it in its cancel reason.
pub const KMS_REFUSAL: &str = "KMS-encrypted sessions are not supported by rds-auth-proxy";

/// The plugin uses mux only for agents strictly newer than this (§5.1).
pub const MUX_SUPPORTED_AFTER_AGENT_VERSION: &str = "3.0.196.0";
/// The agent runs mux only for clients reporting at least this (§3.3).
pub const MUX_MIN_CLIENT_VERSION: &str = "1.1.70";
/// The agent turns its smux keepalive off only for clients reporting more than this (§3.3).
pub const AGENT_KEEPALIVE_OFF_AFTER_CLIENT_VERSION: &str = "1.2.331.0";
/// The TerminateSession flag is honoured only by agents newer than this (§2.7).
pub const TERMINATE_FLAG_AFTER_AGENT_VERSION: &str = "2.3.722.0";

/// Errors from the handshake: malformed payloads, actions we refuse, unparsable versions.
///
/// The `Display` text of a refusal is what goes into the `Error` field sent to the agent.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A handshake payload did not match its schema.
    #[error("SSM {what} payload is not valid JSON")]
    Json {
        /// Which payload was being read or written.
        what: &'static str,
        /// The underlying parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The agent asked for KMS encryption, which this proxy does not implement.
    #[error("{KMS_REFUSAL}")]
    KmsNotSupported,
    /// The session is not a port-forwarding session (wrong document?).
    #[error("session type {0:?} is not supported by rds-auth-proxy (only \"Port\")")]
    UnsupportedSessionType(String),
    /// The SessionType action's parameters lacked a SessionType string.
    #[error("SessionType action has no valid SessionType parameter")]
    MalformedSessionType,
    /// An action type this client does not know; answered Unsupported, never a refusal.
    /// The text is the plugin's, word for word.
    #[error("Unsupported action {0}")]
    UnsupportedAction(String),
    /// The agent never told us the session type, so we cannot know how to forward.
    #[error("the agent's handshake request has no SessionType action")]
    MissingSessionType,
    /// A version string is not dot-separated decimal numbers.
    #[error("version {0:?} is not dot-separated decimal numbers")]
    InvalidVersion(String),
}

/// Go encodes a nil slice as `null`; treat that like an empty list.
fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// Agent → client, PayloadType 5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeRequestPayload {
    /// Decides mux support (§5.1) and whether the TerminateSession flag works.
    #[serde(default)]
    pub agent_version: String,
    /// Every action needs exactly one answer in the response.
    #[serde(default, deserialize_with = "null_as_default")]
    pub requested_client_actions: Vec<RequestedClientAction>,
}

impl HandshakeRequestPayload {
    /// Parses the payload of a `PayloadType::HandshakeRequest` message.
    pub fn from_payload(payload: &[u8]) -> Result<Self, HandshakeError> {
        serde_json::from_slice(payload).map_err(|source| HandshakeError::Json {
            what: "HandshakeRequest",
            source,
        })
    }
}

/// One action the agent asks the client to perform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestedClientAction {
    /// `SessionType`, `KMSEncryption`, or something newer.
    #[serde(default)]
    pub action_type: String,
    /// Kept raw: its shape depends on `action_type`, and unknown actions must still be answered.
    #[serde(default)]
    pub action_parameters: serde_json::Value,
}

/// Client → agent, PayloadType 6; sent as our stream message seq 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeResponsePayload {
    /// The agent picks basic/mux and its smux keepalive from this (§3.3).
    pub client_version: String,
    /// One entry per requested action, in request order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub processed_client_actions: Vec<ProcessedClientAction>,
    /// `null` when there are none, as Go's nil slice encodes.
    pub errors: Option<Vec<String>>,
}

impl HandshakeResponsePayload {
    /// The JSON payload for a `PayloadType::HandshakeResponse` message.
    pub fn to_payload(&self) -> Result<Bytes, HandshakeError> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|source| HandshakeError::Json {
                what: "HandshakeResponse",
                source,
            })
    }

    /// The payload type the response must be sent with.
    pub const PAYLOAD_TYPE: PayloadType = PayloadType::HandshakeResponse;
}

/// Our answer to one requested action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessedClientAction {
    /// Echoes the request's action type.
    pub action_type: String,
    /// Anything but Success makes the agent cancel the session.
    pub action_status: ActionStatus,
    /// Action-specific result; `null` for everything we do.
    #[serde(default)]
    pub action_result: serde_json::Value,
    /// Empty on success; the agent quotes it when it cancels.
    #[serde(default)]
    pub error: String,
}

/// `ActionStatus` numbers (§2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub enum ActionStatus {
    /// 1
    Success,
    /// 2
    Failed,
    /// 3
    Unsupported,
    /// Any other number, kept verbatim.
    Unknown(i64),
}

impl From<i64> for ActionStatus {
    fn from(value: i64) -> Self {
        match value {
            1 => Self::Success,
            2 => Self::Failed,
            3 => Self::Unsupported,
            other => Self::Unknown(other),
        }
    }
}

impl From<ActionStatus> for i64 {
    fn from(value: ActionStatus) -> Self {
        match value {
            ActionStatus::Success => 1,
            ActionStatus::Failed => 2,
            ActionStatus::Unsupported => 3,
            ActionStatus::Unknown(other) => other,
        }
    }
}

/// Agent → client, PayloadType 7: the handshake is over and Output may flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeCompletePayload {
    /// Nanoseconds the agent measured for the handshake; informational.
    #[serde(default)]
    pub handshake_time_to_complete: i64,
    /// Shown to the user when non-empty.
    #[serde(default)]
    pub customer_message: String,
}

impl HandshakeCompletePayload {
    /// Parses the payload of a `PayloadType::HandshakeComplete` message.
    pub fn from_payload(payload: &[u8]) -> Result<Self, HandshakeError> {
        serde_json::from_slice(payload).map_err(|source| HandshakeError::Json {
            what: "HandshakeComplete",
            source,
        })
    }

    /// The agent's measured handshake time; negative values read as zero.
    pub fn time_to_complete(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.handshake_time_to_complete).unwrap_or(0))
    }
}

/// `ActionParameters` of a SessionType action.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionTypeParameters {
    session_type: String,
    #[serde(default)]
    properties: serde_json::Value,
}

/// The session document's properties, as the agent passed them on. Values are kept raw because
/// documents are free to add fields.
#[derive(Debug, Clone, PartialEq)]
pub struct PortProperties(pub serde_json::Value);

impl PortProperties {
    fn str_field(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(serde_json::Value::as_str)
    }

    /// `type`: `LocalPortForwarding` for the port documents; empty for the SSH-style one.
    pub fn forwarding_type(&self) -> Option<&str> {
        self.str_field("type")
    }

    /// True when the agent will run its LocalPortForwarding path (basic or mux).
    pub fn is_local_port_forwarding(&self) -> bool {
        self.forwarding_type() == Some(LOCAL_PORT_FORWARDING)
    }

    /// `host` the agent dials; absent means localhost on the instance.
    pub fn host(&self) -> Option<&str> {
        self.str_field("host")
    }

    /// `portNumber` the agent dials, as the string the document holds.
    pub fn port_number(&self) -> Option<&str> {
        self.str_field("portNumber")
    }
}

/// What the handshake means for the caller.
#[derive(Debug)]
pub enum Outcome {
    /// Every action succeeded; forward once HandshakeComplete arrives.
    Accepted(PortProperties),
    /// We refused at least one action. The agent will cancel the session after reading our
    /// response, so send it (the reason then shows in the agent's log) and fail the tunnel.
    Refused(Vec<HandshakeError>),
}

/// `ActionResult` the plugin puts in its answer to an action it does not know.
const UNSUPPORTED_RESULT: i64 = 3;

/// Builds the HandshakeResponse for `request` (§3.2): accept a `Port` SessionType, refuse
/// KMSEncryption with Failed, and answer unknown actions as AWS's plugin does, then go on: an
/// entry with the error "Unsupported action X" (also listed in `Errors`) and `ActionResult` 3.
/// The plugin leaves `ActionStatus` at 0 there (a bug: it means to say Unsupported); we send
/// 3, Unsupported, so an agent that looks at either field reads the same answer. Whether the
/// session goes on is the agent's call: today's agents only ask for actions every client
/// knows, and a newer one must accept this answer to work with any plugin released so far.
pub fn respond(
    request: &HandshakeRequestPayload,
    client_version: &str,
) -> (HandshakeResponsePayload, Outcome) {
    let mut processed = Vec::with_capacity(request.requested_client_actions.len());
    let mut refusals = Vec::new();
    let mut properties = None;

    for action in &request.requested_client_actions {
        let result = match action.action_type.as_str() {
            ACTION_SESSION_TYPE => {
                match serde_json::from_value::<SessionTypeParameters>(
                    action.action_parameters.clone(),
                ) {
                    Ok(params) if params.session_type == SESSION_TYPE_PORT => {
                        properties.get_or_insert(PortProperties(params.properties));
                        Ok(())
                    }
                    Ok(params) => Err((
                        ActionStatus::Failed,
                        HandshakeError::UnsupportedSessionType(params.session_type),
                    )),
                    Err(_) => Err((ActionStatus::Failed, HandshakeError::MalformedSessionType)),
                }
            }
            ACTION_KMS_ENCRYPTION => Err((ActionStatus::Failed, HandshakeError::KmsNotSupported)),
            other => Err((
                ActionStatus::Unsupported,
                HandshakeError::UnsupportedAction(other.to_owned()),
            )),
        };
        let (status, error, action_result) = match result {
            Ok(()) => (
                ActionStatus::Success,
                String::new(),
                serde_json::Value::Null,
            ),
            Err((ActionStatus::Unsupported, err)) => (
                ActionStatus::Unsupported,
                err.to_string(),
                UNSUPPORTED_RESULT.into(),
            ),
            Err((status, err)) => {
                let text = err.to_string();
                refusals.push(err);
                (status, text, serde_json::Value::Null)
            }
        };
        processed.push(ProcessedClientAction {
            action_type: action.action_type.clone(),
            action_status: status,
            action_result,
            error,
        });
    }

    let errors: Vec<String> = processed
        .iter()
        .filter(|p| !p.error.is_empty())
        .map(|p| p.error.clone())
        .collect();
    let response = HandshakeResponsePayload {
        client_version: client_version.to_owned(),
        processed_client_actions: processed,
        errors: (!errors.is_empty()).then_some(errors),
    };
    let outcome = match (refusals.is_empty(), properties) {
        (true, Some(properties)) => Outcome::Accepted(properties),
        // No SessionType at all: the agent would carry on, but we cannot tell how to forward.
        (true, None) => Outcome::Refused(vec![HandshakeError::MissingSessionType]),
        (false, _) => Outcome::Refused(refusals),
    };
    (response, outcome)
}

/// Splits a version into numeric components; `None` on anything but ASCII digits between dots.
fn components(version: &str) -> Option<Vec<u64>> {
    version
        .split('.')
        .map(|part| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        })
        .collect()
}

/// Compares dotted numeric versions component by component, as the agent's `versionutil` does
/// for non-SemVer strings; when one is a prefix of the other, the shorter is lower
/// (`1.2 < 1.2.0`).
pub fn compare_versions(a: &str, b: &str) -> Result<Ordering, HandshakeError> {
    let parse = |v: &str| components(v).ok_or_else(|| HandshakeError::InvalidVersion(v.to_owned()));
    let (a, b) = (parse(a)?, parse(b)?);
    // Lexicographic order on the component lists is exactly "numeric, shorter prefix lower".
    Ok(a.cmp(&b))
}

/// True when `agent_version > 3.0.196.0` with exactly four numeric components; anything
/// unparsable counts as unsupported, as in the plugin (§5.1).
pub fn agent_supports_mux(agent_version: &str) -> bool {
    components(agent_version).is_some_and(|c| c.len() == 4)
        && matches!(
            compare_versions(agent_version, MUX_SUPPORTED_AFTER_AGENT_VERSION),
            Ok(Ordering::Greater)
        )
}

/// True when the agent honours the TerminateSession flag (`> 2.3.722.0`); unparsable versions
/// count as no, so the caller falls back to the TerminateSession API.
pub fn agent_supports_terminate_flag(agent_version: &str) -> bool {
    matches!(
        compare_versions(agent_version, TERMINATE_FLAG_AFTER_AGENT_VERSION),
        Ok(Ordering::Greater)
    )
}

/// True when reporting `client_version` makes the agent run mux for LocalPortForwarding
/// (`>= 1.1.70`, §3.3).
pub fn client_version_selects_mux(client_version: &str) -> Result<bool, HandshakeError> {
    Ok(compare_versions(client_version, MUX_MIN_CLIENT_VERSION)? != Ordering::Less)
}

/// True when reporting `client_version` makes the agent disable smux keepalive
/// (`> 1.2.331.0`, §3.3); otherwise the client must send smux frames at least every 30 s.
pub fn client_version_disables_agent_keepalive(
    client_version: &str,
) -> Result<bool, HandshakeError> {
    Ok(
        compare_versions(client_version, AGENT_KEEPALIVE_OFF_AFTER_CLIENT_VERSION)?
            == Ordering::Greater,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GIMLET_REQUEST: &str = r#"{"AgentVersion":"3.1.1732.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"host":"172.31.25.54","localPortNumber":"7406","portNumber":"3000","type":"LocalPortForwarding"}}}]}"#;

    #[test]
    fn accepts_port_session_and_returns_properties() {
        let request =
            HandshakeRequestPayload::from_payload(GIMLET_REQUEST.as_bytes()).expect("json");
        assert_eq!(request.agent_version, "3.1.1732.0");
        let (response, outcome) = respond(&request, "1.2.650.0");
        let Outcome::Accepted(props) = outcome else {
            panic!("expected acceptance, got {outcome:?}");
        };
        assert!(props.is_local_port_forwarding());
        assert_eq!(props.host(), Some("172.31.25.54"));
        assert_eq!(props.port_number(), Some("3000"));
        let wire = String::from_utf8(response.to_payload().expect("json").to_vec()).expect("utf8");
        assert_eq!(
            wire,
            r#"{"ClientVersion":"1.2.650.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#
        );
    }

    #[test]
    fn refuses_kms_with_failed_and_clear_error() {
        let request: HandshakeRequestPayload = serde_json::from_value(json!({
            "AgentVersion": "3.3.987.0",
            "RequestedClientActions": [
                {"ActionType": "SessionType", "ActionParameters": {"SessionType": "Port", "Properties": {"type": "LocalPortForwarding"}}},
                {"ActionType": "KMSEncryption", "ActionParameters": {"KMSKeyId": "arn:aws:kms:k", "Challenge": "AAAA"}}
            ]
        }))
        .expect("json");
        let (response, outcome) = respond(&request, "1.2.650.0");
        let statuses: Vec<_> = response
            .processed_client_actions
            .iter()
            .map(|p| p.action_status)
            .collect();
        assert_eq!(statuses, [ActionStatus::Success, ActionStatus::Failed]);
        assert_eq!(response.processed_client_actions[1].error, KMS_REFUSAL);
        assert_eq!(response.errors, Some(vec![KMS_REFUSAL.to_owned()]));
        assert!(
            matches!(outcome, Outcome::Refused(ref e) if matches!(e[..], [HandshakeError::KmsNotSupported]))
        );
        let value: serde_json::Value =
            serde_json::from_slice(&response.to_payload().expect("json")).expect("json");
        assert_eq!(value["ProcessedClientActions"][1]["ActionStatus"], 2);
    }

    #[test]
    fn unknown_action_is_unsupported_and_other_session_types_fail() {
        let request: HandshakeRequestPayload = serde_json::from_value(json!({
            "AgentVersion": "3.3.987.0",
            "RequestedClientActions": [
                {"ActionType": "SessionType", "ActionParameters": {"SessionType": "Standard_Stream"}},
                {"ActionType": "Teleport", "ActionParameters": null}
            ]
        }))
        .expect("json");
        let (response, outcome) = respond(&request, "1.2.650.0");
        let statuses: Vec<_> = response
            .processed_client_actions
            .iter()
            .map(|p| p.action_status)
            .collect();
        assert_eq!(statuses, [ActionStatus::Failed, ActionStatus::Unsupported]);
        assert_eq!(response.processed_client_actions[1].action_type, "Teleport");
        assert!(response.processed_client_actions[1]
            .error
            .contains("Teleport"));
        let Outcome::Refused(errors) = outcome else {
            panic!("expected refusal")
        };
        // Only the session type is a refusal; the unknown action is merely declined.
        assert!(
            matches!(errors[..], [HandshakeError::UnsupportedSessionType(ref t)] if t == "Standard_Stream")
        );
    }

    #[test]
    fn an_unknown_action_is_declined_as_the_plugin_does_and_the_session_goes_on() {
        let request: HandshakeRequestPayload = serde_json::from_value(json!({
            "AgentVersion": "3.9.1.0",
            "RequestedClientActions": [
                {"ActionType": "SessionType", "ActionParameters": {"SessionType": "Port", "Properties": {"type": "LocalPortForwarding"}}},
                {"ActionType": "Teleport", "ActionParameters": {"Where": "Mars"}}
            ]
        }))
        .expect("json");
        let (response, outcome) = respond(&request, "1.2.650.0");
        assert!(
            matches!(outcome, Outcome::Accepted(ref p) if p.is_local_port_forwarding()),
            "{outcome:?}"
        );
        let wire = String::from_utf8(response.to_payload().expect("json").to_vec()).expect("utf8");
        assert_eq!(
            wire,
            r#"{"ClientVersion":"1.2.650.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""},{"ActionType":"Teleport","ActionStatus":3,"ActionResult":3,"Error":"Unsupported action Teleport"}],"Errors":["Unsupported action Teleport"]}"#
        );
    }

    #[test]
    fn malformed_or_missing_session_type_is_refused() {
        let request: HandshakeRequestPayload = serde_json::from_value(json!({
            "RequestedClientActions": [{"ActionType": "SessionType", "ActionParameters": {"SessionType": 5}}]
        }))
        .expect("json");
        let (response, outcome) = respond(&request, "1.2.650.0");
        assert_eq!(
            response.processed_client_actions[0].action_status,
            ActionStatus::Failed
        );
        assert!(
            matches!(outcome, Outcome::Refused(ref e) if matches!(e[..], [HandshakeError::MalformedSessionType]))
        );

        let request = HandshakeRequestPayload::from_payload(
            br#"{"AgentVersion":"3.3.1.0","RequestedClientActions":null}"#,
        )
        .expect("null list accepted");
        let (response, outcome) = respond(&request, "1.2.650.0");
        assert!(response.processed_client_actions.is_empty());
        assert_eq!(response.errors, None);
        assert!(
            matches!(outcome, Outcome::Refused(ref e) if matches!(e[..], [HandshakeError::MissingSessionType]))
        );
        assert!(HandshakeRequestPayload::from_payload(b"[1,2]").is_err());
    }

    #[test]
    fn handshake_complete_parses() {
        let done = HandshakeCompletePayload::from_payload(
            br#"{"HandshakeTimeToComplete":1500000000,"CustomerMessage":"This session is encrypted using AWS KMS."}"#,
        )
        .expect("json");
        assert_eq!(done.time_to_complete(), Duration::from_millis(1500));
        assert_eq!(
            done.customer_message,
            "This session is encrypted using AWS KMS."
        );
        let empty = HandshakeCompletePayload::from_payload(br#"{"HandshakeTimeToComplete":-1}"#)
            .expect("json");
        assert_eq!(empty.time_to_complete(), Duration::ZERO);
        assert!(empty.customer_message.is_empty());
    }

    #[test]
    fn action_status_numbers_round_trip() {
        for n in -1..6i64 {
            assert_eq!(i64::from(ActionStatus::from(n)), n);
        }
        let parsed: ProcessedClientAction = serde_json::from_str(
            r#"{"ActionType":"X","ActionStatus":3,"ActionResult":null,"Error":""}"#,
        )
        .expect("json");
        assert_eq!(parsed.action_status, ActionStatus::Unsupported);
    }

    #[test]
    fn version_comparison() {
        let cmp = |a, b| compare_versions(a, b).expect("valid versions");
        assert_eq!(cmp("1.2.650.0", "1.2.331.0"), Ordering::Greater);
        assert_eq!(cmp("1.2.0.0", "1.2.331.0"), Ordering::Less);
        assert_eq!(cmp("3.0.196.0", "3.0.196.0"), Ordering::Equal);
        assert_eq!(
            cmp("10.0", "9.99"),
            Ordering::Greater,
            "numeric, not lexical"
        );
        assert_eq!(
            cmp("1.2", "1.2.0"),
            Ordering::Less,
            "shorter prefix is lower"
        );
        assert_eq!(cmp("1.3", "1.2.9.9"), Ordering::Greater);
        assert_eq!(cmp("1.1.70", "1.1.70.0"), Ordering::Less);
        for bad in ["", "1..2", "1.2.0.0-gimlet", "+1.2", "1.a", " 1.2", "1.2."] {
            assert!(
                matches!(
                    compare_versions(bad, "1.0"),
                    Err(HandshakeError::InvalidVersion(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mux_support_needs_four_components_strictly_above_threshold() {
        assert!(agent_supports_mux("3.0.197.0"));
        assert!(agent_supports_mux("3.3.987.0"));
        assert!(agent_supports_mux("3.0.196.1"));
        assert!(!agent_supports_mux("3.0.196.0"), "strictly greater");
        assert!(!agent_supports_mux("2.3.722.0"));
        assert!(!agent_supports_mux("3.1"), "wrong component count");
        assert!(!agent_supports_mux("3.1.0.0.0"), "wrong component count");
        assert!(!agent_supports_mux("3.3.987.0-beta"));
        assert!(!agent_supports_mux(""));
    }

    #[test]
    fn client_version_and_terminate_flag_thresholds() {
        assert!(client_version_selects_mux("1.1.70").expect("valid"));
        assert!(client_version_selects_mux("1.2.650.0").expect("valid"));
        assert!(!client_version_selects_mux("0.0.1").expect("valid"));
        assert!(client_version_disables_agent_keepalive("1.2.650.0").expect("valid"));
        assert!(!client_version_disables_agent_keepalive("1.2.331.0").expect("valid"));
        assert!(!client_version_disables_agent_keepalive("1.2.0.0").expect("valid"));
        assert!(client_version_selects_mux("x").is_err());
        assert!(agent_supports_terminate_flag("3.3.987.0"));
        assert!(!agent_supports_terminate_flag("2.3.722.0"));
        assert!(!agent_supports_terminate_flag("garbage"));
    }
}
