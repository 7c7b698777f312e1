//! What a client sees when the proxy fails its connection: an ErrorResponse with severity FATAL,
//! a SQLSTATE, a message naming the cause and a HINT saying what to do. Only errors that implement
//! [`UserFacing`] can produce one, so internal detail never leaks to a client by accident.

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;

use super::startup::StartupError;

/// The SQLSTATEs the proxy itself uses (PostgreSQL's errcodes.txt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlState {
    /// 28000 invalid_authorization_specification: IAM login refused, no credentials, not IAM user.
    InvalidAuthorization,
    /// 28P01 invalid_password: a password (SCRAM/MD5/cleartext) refused upstream.
    InvalidPassword,
    /// 08001 sqlclient_unable_to_establish_sqlconnection: tunnel, TCP or TLS failure upstream.
    UnableToConnect,
    /// 08006 connection_failure: upstream broke during startup.
    ConnectionFailure,
    /// 08P01 protocol_violation: malformed startup or upstream reply.
    ProtocolViolation,
    /// 0A000 feature_not_supported.
    FeatureNotSupported,
    /// 22023 invalid_parameter_value: a startup parameter PostgreSQL would refuse (`replication`).
    InvalidParameterValue,
    /// 53300 too_many_connections.
    TooManyConnections,
    /// 57P01 admin_shutdown.
    AdminShutdown,
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::InvalidAuthorization => "28000",
            SqlState::InvalidPassword => "28P01",
            SqlState::UnableToConnect => "08001",
            SqlState::ConnectionFailure => "08006",
            SqlState::ProtocolViolation => "08P01",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::InvalidParameterValue => "22023",
            SqlState::TooManyConnections => "53300",
            SqlState::AdminShutdown => "57P01",
        }
    }
}

/// An error that knows what the client should be told.
pub trait UserFacing: std::error::Error {
    fn sqlstate(&self) -> SqlState;
    /// The primary message; defaults to the error's Display, which must therefore hold no secret.
    fn client_message(&self) -> String {
        crate::errors::with_sources(format!("rds-auth-proxy: {self}"), self.source())
    }
    fn hint(&self) -> Option<String>;
    fn to_client_error(&self) -> ClientError {
        ClientError {
            sqlstate: self.sqlstate(),
            message: self.client_message(),
            hint: self.hint(),
        }
    }
}

/// A ready-to-send ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub sqlstate: SqlState,
    pub message: String,
    pub hint: Option<String>,
}

impl ClientError {
    /// Encodes the FATAL ErrorResponse (fields S, V, C, M, H).
    pub fn encode(&self) -> BytesMut {
        let mut fields = vec![
            (b'S', "FATAL".to_owned()),
            (b'V', "FATAL".to_owned()),
            (b'C', self.sqlstate.code().to_owned()),
            (b'M', self.message.clone()),
        ];
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        let mut buf = BytesMut::new();
        // Encoding into a BytesMut only fails for messages over 1 GiB, which ours never are.
        if ErrorResponse::new(fields).encode(&mut buf).is_err() {
            buf.clear();
        }
        buf
    }
}

/// A client's first packet refused ([`super::startup`] parses it; what the client is told is
/// decided here, beside the trait, whichever crate the parser lives in).
impl UserFacing for StartupError {
    fn sqlstate(&self) -> SqlState {
        match self {
            StartupError::UnsupportedVersion(..) | StartupError::DirectTls => {
                SqlState::FeatureNotSupported
            }
            // PostgreSQL's own SQLSTATEs for these, so a client sees what the server would say.
            StartupError::MissingUser => SqlState::InvalidAuthorization,
            StartupError::InvalidReplication(_) => SqlState::InvalidParameterValue,
            _ => SqlState::ProtocolViolation,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            StartupError::DirectTls => {
                "Connect without sslnegotiation=direct: the local listener answers SSLRequest with N."
                    .into()
            }
            StartupError::UnsupportedVersion(..) => {
                "Use a PostgreSQL client that speaks protocol 3 (every client since PostgreSQL 7.4)."
                    .into()
            }
            StartupError::MissingUser => "Give the database user name (psql -U NAME, or user= in the connection string).".into(),
            StartupError::InvalidReplication(_) => {
                "Valid values are: \"false\", 0, \"true\", 1, \"database\".".into()
            }
            StartupError::TooLong(_) => {
                "Send fewer or shorter startup parameters (options, application_name, …).".into()
            }
            _ => "This port expects the PostgreSQL wire protocol; check the client and port.".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);
    impl UserFacing for Outer {
        fn sqlstate(&self) -> SqlState {
            SqlState::UnableToConnect
        }
        fn hint(&self) -> Option<String> {
            Some("do this".into())
        }
    }

    #[test]
    fn encodes_byte_exact() {
        let e = ClientError {
            sqlstate: SqlState::InvalidAuthorization,
            message: "m".into(),
            hint: Some("h".into()),
        };
        assert_eq!(
            &e.encode()[..],
            b"E\x00\x00\x00\x20SFATAL\x00VFATAL\x00C28000\x00Mm\x00Hh\x00\x00"
        );
    }

    #[test]
    fn message_includes_source_chain() {
        let e = Outer(std::io::Error::other("inner cause")).to_client_error();
        assert_eq!(e.message, "rds-auth-proxy: outer: inner cause");
        assert_eq!(e.sqlstate.code(), "08001");
        assert_eq!(e.hint.as_deref(), Some("do this"));
    }
}
