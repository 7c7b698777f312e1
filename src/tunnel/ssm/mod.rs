//! The SSM Session Manager port-forwarding tunnel, spoken natively: the data channel's binary
//! message codec ([`message`]), the handshake ([`handshake`]), acks/resends/reordering
//! ([`reliable`]) and smux v1 multiplexing ([`smux`]).

pub mod handshake;
pub mod message;
pub mod reliable;
pub mod smux;
