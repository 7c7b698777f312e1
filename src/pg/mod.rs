//! The PostgreSQL wire protocol as far as the proxy needs it before relay: the client's first
//! packet, backend message framing, and the ErrorResponse a client sees when we fail it.
//!
//! pgwire supplies the message types and encoders; every message read from a socket is first cut
//! by its own length (with a maximum) here, because pgwire's decoders trust the length field and
//! can read past the end of a malformed message.

pub mod error;

// Shared with the simulator's RDS front.
pub use rds_auth_proxy_protocol::pg::{backend, startup};

pub use error::{ClientError, SqlState, UserFacing};
