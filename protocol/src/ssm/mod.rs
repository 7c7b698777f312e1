//! The SSM Session Manager data channel as both ends speak it: the binary message codec
//! ([`message`]), the handshake ([`handshake`]), acks/resends/reordering ([`reliable`]) and smux
//! v1 multiplexing ([`smux`]).

pub mod handshake;
pub mod message;
pub mod reliable;
pub mod smux;

/// Sleeps until `at`, or for ever when there is no deadline (a `select!` branch that is off).
pub async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
