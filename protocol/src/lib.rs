#![forbid(unsafe_code)]
//! The wire protocols both ends of rds-auth-proxy speak, with no proxy or simulator logic: the
//! proxy (`rds_auth_proxy`) and the local AWS simulator (`rds_auth_proxy_sim`) use the same code,
//! so the simulated SSM agent and RDS front parse exactly what the client sends.
//!
//! * [`ssm`]: the SSM data channel — message codec, handshake, sans-IO reliability, smux v1.
//! * [`pg`]: PostgreSQL startup packets and backend message framing before relay.
//! * [`shell`]: POSIX shell quoting for the settings both print as shell lines.
//! * [`time`]: RFC 3339 timestamps (credential expiries) without another dependency.

pub mod pg;
pub mod shell;
pub mod ssm;
pub mod time;
