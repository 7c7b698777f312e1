#![forbid(unsafe_code)]
//! rds-auth-proxy: a password-less local PostgreSQL endpoint for Amazon RDS.
//!
//! How it fits together — one client connection flows left to right:
//!
//! ```text
//! client ─TCP/Unix─▶ listener ─▶ session: read startup ─▶ tunnel.open ─▶ TLS (verify-full)
//!                                  ─▶ send startup ─▶ auth (IAM token, or a password: SCRAM-SHA-256(-PLUS),
//!                                     MD5, cleartext) ─▶ AuthenticationOk ─▶ relay
//! ```
//!
//! * [`cli`], [`config`]: flags and the validated [`config::Config`]; [`config_file`]: the TOML
//!   file of several targets, layered under flags and variables; [`version`]: `--version`.
//! * [`connect_info`]: `connect-info`, client settings pointing at the local listener.
//! * [`local_tls`]: `--local-tls`, TLS towards clients from a local CA kept on disk.
//! * [`app`]: builds the shared [`target::TargetContext`] and runs the [`listener`]; [`fleet`]
//!   serves several targets in one process; [`conntest`] is `--run-connection-test`; [`reload`]
//!   applies config file changes (SIGHUP, the file watcher) to the running targets.
//! * [`session`]: the per-connection pipeline; [`upstream`] is its connect side, [`relay`] the
//!   byte pump after auth, [`cancel`] routes CancelRequests; [`spare`] keeps logged-in upstream
//!   connections ready (`--spare-connections`) so a matching client skips the connect side.
//! * [`client_auth`]: who may use a listener — the owner's OS user on loopback (checked on Linux)
//!   and on its Unix socket freely, remote clients over TLS with the client password (server-side
//!   SCRAM-SHA-256-PLUS) or a client certificate, nobody else.
//! * [`pg`]: startup packets, backend framing, client-facing ErrorResponses.
//! * [`auth`]: credentials, IAM token minting and reuse; passwords (`--password-file`,
//!   `--password-secret` via Secrets Manager), each for one database user, and the SCRAM
//!   mechanism choice and channel binding; at most one reload per interval after refused logins.
//! * [`tls`]: the upstream rustls config: the embedded RDS CA bundle, or for RDS Proxy endpoint
//!   names the embedded Amazon Trust Services roots ([`tls::classify_endpoint`]).
//! * [`tunnel`]: how bytes reach the upstream port (direct TCP; SSM).
//! * [`logfmt`]: the text log format, escaped so no client- or server-supplied value can forge a line.
//! * The local AWS simulator used by `sim`, `demo` and the tests is its own crate
//!   (`rds_auth_proxy_sim`, in `sim/`), and the wire code it shares with the proxy another
//!   (`rds_auth_proxy_protocol`, in `protocol/`: SSM message, handshake, reliable, smux; pg startup
//!   and backend), re-exported at their old paths ([`tunnel::ssm`], [`pg`]).
//! * Operations: [`http`] (health checks, `/metrics`, `wait`), [`metrics`] (the Prometheus
//!   registry, passed in each target's context), [`audit`] (a line per connection at open and
//!   close), [`drain`] (the end of the shutdown window: 57P01 to each remaining client).
//! * `fuzzing` (hidden): the entry points of the fuzz targets in `fuzz/` and of `tests/fuzz_corpus.rs`.

pub mod app;
pub mod audit;
pub mod auth;
pub mod cancel;
pub mod cli;
pub mod client_auth;
pub mod config;
pub mod doctor;
pub mod config_file;
pub mod connect_info;
pub mod der;
pub mod conntest;
pub mod drain;
pub mod fleet;
pub mod http;
pub mod listener;
pub mod logfmt;
pub mod local_tls;
pub mod lookup;
pub mod metrics;
pub mod os;
pub mod pg;
pub mod rds_api;
pub mod relay;
pub mod reload;
pub mod session;
pub mod spare;
pub mod target;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod version;
#[doc(hidden)]
pub mod fuzzing;
