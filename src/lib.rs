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
//! ## Layers
//!
//! Find a behaviour in its layer below, then in the module's own map. Each module uses only
//! modules of its own layer or lower ones, and no two modules use each other —
//! `tests/layers.rs` reads this list and checks every `crate::` path against it. The per-target
//! context ([`target`]) sits above the two modules it owns: [`spare`] and [`upstream`] reach it
//! only through traits of their own ([`spare::SpareHost`], [`upstream::UpstreamContext`]).
//!
//! ### Layer 5 — the process: commands, serving, operations
//! * [`app`]: builds the shared [`target::TargetContext`] of a target and runs its listeners.
//! * [`fleet`]: several targets in one process, bound together, stopped together.
//! * [`reload`]: config file changes (SIGHUP, the file watcher) applied to the running targets.
//! * [`listener`]: the accept side — TCP and Unix sockets, the connection limit, the drain.
//! * [`http`]: health checks, `/metrics` and `wait` on the operations port.
//! * [`conntest`]: `--run-connection-test`, one real login through each listener at start.
//! * [`doctor`]: `doctor`, the whole chain checked once in order, with a fix for each failure.
//! * [`connect_info`]: `connect-info`, client settings pointing at the local listener.
//! * `fuzzing` (hidden): the entry points of the fuzz targets in `fuzz/` and of `tests/fuzz_corpus.rs`.
//!
//! ### Layer 4 — configuration
//! * [`cli`]: the flags and subcommands with their help text (parsing only).
//! * [`config`]: the validated [`config::Config`] of one target, each mistake a one-line reason.
//! * [`config_file`]: the TOML file of several targets, layered under flags and variables.
//! * [`lookup`]: `--db-instance`/`--db-cluster` and `--ssm-target auto` resolved by name.
//! * [`version`]: `--version`, with the embedded CA bundles' expiry.
//!
//! ### Layer 3 — one client connection
//! * [`session`]: the per-connection pipeline: read startup ─▶ tunnel ─▶ TLS ─▶ startup ─▶ auth ─▶ relay.
//! * [`target`]: one configured destination and the context all its sessions share.
//! * [`upstream`]: the connect side — TLS (verify-full), startup and the login to the server.
//! * [`spare`]: logged-in upstream connections kept ready (`--spare-connections`).
//! * [`relay`]: the byte pump after auth, saying which side closed.
//! * [`cancel`]: CancelRequests routed to the right server.
//! * [`drain`]: the end of the shutdown window: 57P01 to each remaining client.
//! * [`connection_age`]: `--max-connection-age`, a NOTICE then 57P01 before the limit (Aurora DSQL's 60 minutes).
//! * [`audit`]: a line per connection at open and close, and per config reload.
//!
//! ### Layer 2 — credentials, clients and the ways to the database
//! * [`auth`]: AWS credentials, IAM token minting and reuse; passwords (`--password-file`,
//!   `--password-secret`) each for one database user; SCRAM mechanisms and channel binding.
//! * [`client_auth`]: who may use a listener — the owner's OS user on loopback and its Unix
//!   socket, remote clients over TLS with the client password or a client certificate.
//! * [`local_tls`]: `--local-tls`, TLS towards clients from a local CA kept on disk.
//! * [`tunnel`]: how bytes reach the upstream port (direct TCP; SSM, spoken natively).
//! * [`rds_api`]: the RDS API calls the name lookups need.
//! * [`aws_api`]: one signed AWS API call (endpoint, SigV4, HTTP, XML/JSON answers and errors)
//!   for the hand-written clients; temporary database credentials and their errors' HINTs.
//! * [`redshift_api`], [`redshift_serverless_api`], [`dsql_api`]: the Redshift, Redshift
//!   Serverless and Aurora DSQL API calls (temporary credentials, lookups by name).
//!
//! ### Layer 1 — protocols and shared services
//! * [`pg`]: startup packets, backend framing, client-facing ErrorResponses ([`pg::UserFacing`]).
//! * [`engine`]: which AWS database a target is (RDS, Aurora DSQL, Redshift, Redshift
//!   Serverless), from the endpoint name or `--engine`.
//! * [`tls`]: the upstream rustls config: the embedded RDS CA bundle, or for RDS Proxy endpoint
//!   names the embedded Amazon Trust Services roots ([`tls::classify_endpoint`]).
//! * [`metrics`]: the Prometheus registry, passed in each target's context; the counting
//!   modules get clones of its handles.
//!
//! ### Layer 0 — foundation
//! * [`errors`]: an error with its source chain, as one line.
//! * [`aws`]: the one AWS HTTP client, SDK configuration (loaded, or of fixed credentials),
//!   the region lookup.
//! * [`net`]: socket options (TCP keepalive) for both sides.
//! * [`logfmt`]: the text log format, escaped so no client- or server-supplied value can forge a line.
//! * [`der`]: the little DER the proxy reads itself.
//! * [`os`]: what differs per operating system.
//!
//! Below layer 0, in a crate of its own (`protocol/`, `rds_auth_proxy_protocol`): the wire code
//! both ends speak — SSM messages, handshake, the reliable sequencing core, smux; PostgreSQL
//! startup and backend framing — re-exported at [`tunnel::ssm`] and [`pg`]. The local AWS
//! simulator used by `sim`, `demo` and the tests is the crate `rds_auth_proxy_sim` (`sim/`),
//! used by the binary only (`src/main.rs`, `src/demo.rs`), never by this library.

pub mod app;
pub mod audit;
pub mod auth;
pub mod aws;
pub mod aws_api;
pub mod cancel;
pub mod cli;
pub mod client_auth;
pub mod config;
pub mod doctor;
pub mod config_file;
pub mod connect_info;
pub mod connection_age;
pub mod der;
pub mod engine;
pub mod conntest;
pub mod drain;
pub mod dsql_api;
pub mod errors;
pub mod fleet;
pub mod http;
pub mod listener;
pub mod logfmt;
pub mod local_tls;
pub mod lookup;
pub mod metrics;
pub mod net;
pub mod os;
pub mod pg;
pub mod rds_api;
pub mod redshift_api;
pub mod redshift_serverless_api;
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
