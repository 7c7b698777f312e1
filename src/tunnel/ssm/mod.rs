//! The SSM Session Manager port-forwarding tunnel, spoken natively (no session-manager-plugin).
//!
//! Bottom up: the data channel's binary message codec ([`message`]), the handshake
//! ([`handshake`]), acks/resends/reordering ([`reliable`]), smux v1 multiplexing ([`smux`]);
//! the control plane ([`api`]: StartSession/ResumeSession/TerminateSession), the WebSocket dial
//! ([`websocket`]), one session's data channel with reconnects ([`datachannel`]), and the pool
//! the proxy opens connections from ([`pool`]: lazy, shared, kept alive, retired, terminated).

pub mod api;
pub mod datachannel;
pub mod pool;
pub mod websocket;

// The codec, handshake, reliability and smux layers are shared with the simulator's agent.
pub use rds_auth_proxy_protocol::ssm::{handshake, message, reliable, smux};

#[cfg(test)]
pub(crate) mod testing;

pub use pool::{SsmSettings, SsmStream, SsmTunnel};

pub use crate::metrics::SsmCounters;

/// Why an SSM tunnel connection failed, as the user should hear it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SsmError {
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("SSM session {session_id}")]
    DataChannel {
        session_id: String,
        #[source]
        source: datachannel::DataChannelError,
    },
    #[error("the managed node {target} could not connect to {host}:{port}")]
    ConnectToPort {
        target: String,
        host: String,
        port: u16,
    },
    #[error("the SSM multiplexer failed")]
    Smux(#[source] smux::SmuxError),
    #[error("StartSession did not answer within {0} s")]
    StartTimeout(u64),
    #[error("the SSM tunnel is shutting down")]
    ShuttingDown,
}

impl SsmError {
    /// What the user should do about it.
    pub fn hint(&self) -> String {
        match self {
            SsmError::Api(e) => e.hint(),
            SsmError::DataChannel { source, .. } => source.hint(),
            SsmError::ConnectToPort { target, host, port } => format!(
                "The SSM tunnel works but {target} cannot open TCP to {host}:{port}: allow the \
                 node's security group in the database's security group on port {port}, and \
                 check NACLs, routes and that {host} resolves inside the VPC."
            ),
            SsmError::Smux(_) => "Reconnect; a fresh SSM session will be opened.".into(),
            SsmError::StartTimeout(_) => "Check the network path to ssm.<region>.amazonaws.com \
                 (HTTPS proxy, VPN, VPC endpoint) and that the region is right."
                .into(),
            SsmError::ShuttingDown => "rds-auth-proxy is stopping; reconnect once it runs again.".into(),
        }
    }

    /// The tunnel error carried inside a stream's `io::Error`, if that is what it is: lets the
    /// connect side report e.g. ConnectToPortError, which only shows up on the first read.
    pub fn from_io(err: &std::io::Error) -> Option<&SsmError> {
        err.get_ref().and_then(|e| e.downcast_ref::<SsmError>())
    }
}

pub(crate) use rds_auth_proxy_protocol::ssm::sleep_opt;
