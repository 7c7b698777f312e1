//! The PostgreSQL wire protocol before relay, as both the proxy and the simulated RDS front read
//! it: the client's first packet ([`startup`]) and backend message framing ([`backend`]).

pub mod backend;
pub mod startup;

/// PostgreSQL's registered ALPN protocol id.
pub const POSTGRESQL_ALPN: &[u8] = b"postgresql";
