//! Prometheus metrics (served on `/metrics` by [`crate::http`]): one [`Metrics`] registry per
//! process, passed to whatever counts — no global singleton — and a [`TargetMetrics`] handle per
//! target whose every series carries the label `target="<name>"`.
//!
//! The handles are `prometheus_client` counters, gauges and histograms: clones share one atomic,
//! so the auth and SSM layers get plain clones ([`AuthMetrics`], [`SsmCounters`]) and need no
//! knowledge of the registry. Values that are state rather than events (SSM sessions open) are
//! read from the tunnels at scrape time.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;


/// The `Content-Type` of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric name starts with this.
pub const PREFIX: &str = "rds_auth_proxy";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    target: String,
    sqlstate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    target: String,
    /// `to_upstream` (client → database) or `to_client`.
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiscardLabels {
    target: String,
    /// `aged`, `dead` or `evicted`.
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    target: String,
    /// `minted` or `reused`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    target: String,
    /// `rds`, `dsql`, `redshift` or `redshift-serverless`.
    engine: String,
    endpoint: String,
}

type HistogramFamily = Family<TargetLabel, Histogram, fn() -> Histogram>;

/// Connect latency buckets: 5 ms doubling to ~20 s (an SSM session open takes about a second,
/// a reused one a few milliseconds; the client's own limit is 30 s).
fn connect_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The families, one series per target (and SQLSTATE, direction, outcome).
#[derive(Clone)]
struct Families {
    connections_open: Family<TargetLabel, Gauge>,
    connections: Family<TargetLabel, Counter>,
    login_failures: Family<FailureLabels, Counter>,
    relayed_bytes: Family<DirectionLabels, Counter>,
    iam_tokens: Family<TokenLabels, Counter>,
    credential_refreshes: Family<TargetLabel, Counter>,
    password_reads: Family<TargetLabel, Counter>,
    ssm_sessions_open: Family<TargetLabel, Gauge>,
    ssm_sessions_started: Family<TargetLabel, Counter>,
    ssm_sessions_resumed: Family<TargetLabel, Counter>,
    ssm_sessions_failed: Family<TargetLabel, Counter>,
    ssm_messages_resent: Family<TargetLabel, Counter>,
    connect_seconds: HistogramFamily,
    spare_hits: Family<TargetLabel, Counter>,
    spare_misses: Family<TargetLabel, Counter>,
    spares_opened: Family<TargetLabel, Counter>,
    spares_discarded: Family<DiscardLabels, Counter>,
    spares_ready: Family<TargetLabel, Gauge>,
    target_info: Family<InfoLabels, Gauge>,
    connections_aged_out: Family<TargetLabel, Counter>,
}

/// A tunnel whose open sessions are a gauge read at every scrape (an SSM tunnel), so metrics
/// need not know the tunnel's type.
pub trait OpenSessions: Send + Sync {
    fn open_sessions(&self) -> usize;
}

/// The process's metrics registry.
pub struct Metrics {
    registry: Registry,
    families: Families,
    /// Tunnels whose open SSM sessions are counted at scrape time, by target name.
    tunnels: Mutex<Vec<(String, Arc<dyn OpenSessions>)>>,
    /// What `target_info` says for each target now.
    described: Mutex<std::collections::HashMap<String, InfoLabels>>,
    /// Config file reloads applied (SIGHUP or the file watcher), and those refused.
    reloads: Counter,
    reload_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let families = Families {
            connections_open: Family::default(),
            connections: Family::default(),
            login_failures: Family::default(),
            relayed_bytes: Family::default(),
            iam_tokens: Family::default(),
            credential_refreshes: Family::default(),
            password_reads: Family::default(),
            ssm_sessions_open: Family::default(),
            ssm_sessions_started: Family::default(),
            ssm_sessions_resumed: Family::default(),
            ssm_sessions_failed: Family::default(),
            ssm_messages_resent: Family::default(),
            connect_seconds: Family::new_with_constructor(connect_histogram as fn() -> Histogram),
            spare_hits: Family::default(),
            spare_misses: Family::default(),
            spares_opened: Family::default(),
            spares_discarded: Family::default(),
            spares_ready: Family::default(),
            target_info: Family::default(),
            connections_aged_out: Family::default(),
        };
        let mut registry = Registry::with_prefix(PREFIX);
        let f = &families;
        registry.register("connections_open", "Client connections open now", f.connections_open.clone());
        registry.register("connections", "Client connections accepted", f.connections.clone());
        registry.register(
            "login_failures",
            "Connections refused before login completed, by the SQLSTATE the client got",
            f.login_failures.clone(),
        );
        registry.register(
            "relayed_bytes",
            "Bytes relayed after login (to_upstream: client to database; to_client), counted as they are written",
            f.relayed_bytes.clone(),
        );
        registry.register(
            "iam_tokens",
            "IAM tokens used for logins: minted (signed anew) or reused from the cache",
            f.iam_tokens.clone(),
        );
        registry.register(
            "credential_refreshes",
            "AWS credentials loaded from the provider chain (the first load included)",
            f.credential_refreshes.clone(),
        );
        registry.register(
            "password_reads",
            "Password user passwords read from their file or AWS Secrets Manager secret (the first read included)",
            f.password_reads.clone(),
        );
        registry.register("ssm_sessions_open", "SSM sessions open now", f.ssm_sessions_open.clone());
        registry.register("ssm_sessions_started", "SSM sessions opened (StartSession and handshake done)", f.ssm_sessions_started.clone());
        registry.register(
            "ssm_sessions_resumed",
            "SSM data channels resumed (ResumeSession) after the WebSocket dropped",
            f.ssm_sessions_resumed.clone(),
        );
        registry.register(
            "ssm_sessions_failed",
            "SSM sessions that failed to open or were lost",
            f.ssm_sessions_failed.clone(),
        );
        registry.register(
            "ssm_messages_resent",
            "SSM data-channel messages sent again (unacknowledged in time, or replayed after a resume)",
            f.ssm_messages_resent.clone(),
        );
        registry.register(
            "connect_duration_seconds",
            "From accepting a client connection to its login completing",
            f.connect_seconds.clone(),
        );
        registry.register(
            "spare_hits",
            "Logins served at once by a spare connection (--spare-connections)",
            f.spare_hits.clone(),
        );
        registry.register(
            "spare_misses",
            "Logins that found no spare connection for their startup parameters and logged in upstream",
            f.spare_misses.clone(),
        );
        registry.register("spares_opened", "Spare connections logged in ahead of time", f.spares_opened.clone());
        registry.register(
            "spares_discarded",
            "Spare connections closed unused: aged (--spare-max-age or the token's end), dead (closed by the server), evicted (a newer kind of client took their place)",
            f.spares_discarded.clone(),
        );
        registry.register("spares_ready", "Spare connections ready now", f.spares_ready.clone());
        registry.register(
            "target_info",
            "1 per target served, labelled with its engine (rds, dsql, redshift, redshift-serverless) and endpoint",
            f.target_info.clone(),
        );
        registry.register(
            "connections_aged_out",
            "Client connections ended by the proxy at --max-connection-age (57P01), or by the server once that end was due",
            f.connections_aged_out.clone(),
        );
        let (reloads, reload_failures) = (Counter::default(), Counter::default());
        registry.register("config_reloads", "Config file reloads applied (SIGHUP or a change of the file)", reloads.clone());
        registry.register(
            "config_reload_failures",
            "Config file reloads refused (a mistake in the file, a port in use); the running configuration stayed",
            reload_failures.clone(),
        );
        Metrics {
            registry,
            families,
            tunnels: Mutex::new(Vec::new()),
            described: Mutex::default(),
            reloads,
            reload_failures,
        }
    }

    /// The handle for target `name`: its series exist (at zero) from now on, so a scrape shows
    /// every target before its first connection.
    pub fn target(&self, name: &str) -> TargetMetrics {
        let f = &self.families;
        let label = TargetLabel { target: name.to_owned() };
        let direction = |d: &str| DirectionLabels {
            target: name.to_owned(),
            direction: d.to_owned(),
        };
        let tokens = |o: &str| TokenLabels {
            target: name.to_owned(),
            outcome: o.to_owned(),
        };
        let discarded = |r: &str| DiscardLabels {
            target: name.to_owned(),
            reason: r.to_owned(),
        };
        TargetMetrics {
            name: name.to_owned(),
            connections_open: f.connections_open.get_or_create_owned(&label),
            connections: f.connections.get_or_create_owned(&label),
            login_failures: f.login_failures.clone(),
            bytes_to_upstream: f.relayed_bytes.get_or_create_owned(&direction("to_upstream")),
            bytes_to_client: f.relayed_bytes.get_or_create_owned(&direction("to_client")),
            connect_seconds: f.connect_seconds.get_or_create_owned(&label),
            auth: AuthMetrics {
                tokens_minted: f.iam_tokens.get_or_create_owned(&tokens("minted")),
                tokens_reused: f.iam_tokens.get_or_create_owned(&tokens("reused")),
                credential_refreshes: f.credential_refreshes.get_or_create_owned(&label),
            },
            password_reads: f.password_reads.get_or_create_owned(&label),
            ssm: SsmCounters {
                started: f.ssm_sessions_started.get_or_create_owned(&label),
                resumed: f.ssm_sessions_resumed.get_or_create_owned(&label),
                failed: f.ssm_sessions_failed.get_or_create_owned(&label),
                resent: f.ssm_messages_resent.get_or_create_owned(&label),
            },
            spares: SpareMetrics {
                hits: f.spare_hits.get_or_create_owned(&label),
                misses: f.spare_misses.get_or_create_owned(&label),
                opened: f.spares_opened.get_or_create_owned(&label),
                aged: f.spares_discarded.get_or_create_owned(&discarded("aged")),
                dead: f.spares_discarded.get_or_create_owned(&discarded("dead")),
                evicted: f.spares_discarded.get_or_create_owned(&discarded("evicted")),
                ready: f.spares_ready.get_or_create_owned(&label),
            },
            aged_out: f.connections_aged_out.get_or_create_owned(&label),
        }
    }

    /// Counts `tunnel`'s open SSM sessions under `name` at every scrape (the tunnel reports
    /// itself: [`crate::tunnel::Tunnel::report_sessions`]; direct tunnels have none).
    pub fn watch_tunnel(&self, name: &str, tunnel: Arc<dyn OpenSessions>) {
        self.families
            .ssm_sessions_open
            .get_or_create_owned(&TargetLabel { target: name.to_owned() });
        self.tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), tunnel));
    }

    /// Stops counting target `name`'s SSM sessions (removed or replaced by a reload).
    pub fn unwatch_tunnel(&self, name: &str) {
        self.tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _)| n != name);
    }

    /// Says what target `name` is (`rds_auth_proxy_target_info`); a later call for the same
    /// name (a reload) replaces what it said before.
    pub fn describe_target(&self, name: &str, engine: crate::engine::Engine, endpoint: &str) {
        let labels = InfoLabels {
            target: name.to_owned(),
            engine: engine.as_str().to_owned(),
            endpoint: endpoint.to_owned(),
        };
        let mut described = self.described.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = described.insert(name.to_owned(), labels.clone()) {
            self.families.target_info.remove(&old);
        }
        self.families.target_info.get_or_create(&labels).set(1);
    }

    /// Drops target `name`'s `target_info` line (removed by a reload).
    pub fn forget_target(&self, name: &str) {
        let mut described = self.described.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = described.remove(name) {
            self.families.target_info.remove(&old);
        }
    }

    /// Counts one config reload, applied or refused.
    pub fn count_reload(&self, applied: bool) {
        if applied {
            self.reloads.inc();
        } else {
            self.reload_failures.inc();
        }
    }

    /// The scrape: OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        for (name, tunnel) in self.tunnels.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let open = i64::try_from(tunnel.open_sessions()).unwrap_or(i64::MAX);
            self.families
                .ssm_sessions_open
                .get_or_create(&TargetLabel { target: name.clone() })
                .set(open);
        }
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a metric's name.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// What [`crate::auth::IamAuth`] counts for `/metrics` (clones of the registry's counters; `Default`:
/// counted nowhere).
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    pub tokens_minted: Counter,
    pub tokens_reused: Counter,
    /// Credential loads from the provider chain, the first included.
    pub credential_refreshes: Counter,
}

/// What the SSM tunnel counts for `/metrics` (clones of the registry's counters, carried in
/// [`crate::tunnel::ssm::datachannel::Config`]; `Default`: counted nowhere).
#[derive(Debug, Clone, Default)]
pub struct SsmCounters {
    /// Sessions opened (StartSession, WebSocket and handshake done).
    pub started: Counter,
    /// Data channels resumed after a WebSocket drop.
    pub resumed: Counter,
    /// Sessions that failed to open, or were lost after opening.
    pub failed: Counter,
    /// Data-channel messages sent again.
    pub resent: Counter,
}

/// What spares ([`crate::spare`]) count for `/metrics` (clones of the registry's series; `Default`: counted nowhere).
#[derive(Debug, Clone, Default)]
pub struct SpareMetrics {
    /// Logins served by a spare.
    pub hits: Counter,
    /// Logins with spares on that found none for their key (a normal login followed).
    pub misses: Counter,
    /// Spares opened (logged in) in the background.
    pub opened: Counter,
    /// Spares closed at `--spare-max-age` (or the token's end) without being used.
    pub aged: Counter,
    /// Spares whose upstream closed or spoke while idle: dropped, never handed out.
    pub dead: Counter,
    /// Spares closed because their key gave way to a newer one.
    pub evicted: Counter,
    /// Spares ready now.
    pub ready: Gauge,
}

/// One target's series. Cheap to clone (shared atomics).
#[derive(Clone, Debug)]
pub struct TargetMetrics {
    name: String,
    pub connections_open: Gauge,
    pub connections: Counter,
    login_failures: Family<FailureLabels, Counter>,
    pub bytes_to_upstream: Counter,
    pub bytes_to_client: Counter,
    pub connect_seconds: Histogram,
    pub auth: AuthMetrics,
    /// Reads of password users' passwords (files, Secrets Manager).
    pub password_reads: Counter,
    pub ssm: SsmCounters,
    pub spares: SpareMetrics,
    /// Connections ended at `--max-connection-age`.
    pub aged_out: Counter,
}

impl TargetMetrics {
    /// A handle counted nowhere (a context built without a registry).
    pub fn detached(name: &str) -> Self {
        Metrics::new().target(name)
    }

    /// One connection refused before login, with the SQLSTATE its client got.
    pub fn login_failed(&self, sqlstate: &str) {
        self.login_failures
            .get_or_create(&FailureLabels {
                target: self.name.clone(),
                sqlstate: sqlstate.to_owned(),
            })
            .inc();
    }

    /// Counts one open connection until the guard is dropped.
    pub fn open_connection(&self) -> OpenConnection {
        self.connections.inc();
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }
}

/// Decrements `connections_open` when the connection ends, however it ends.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_info_names_the_engine_and_follows_a_reload() {
        let metrics = Metrics::new();
        metrics.describe_target("dw", crate::engine::Engine::Redshift, "dw.abc.eu-west-1.redshift.amazonaws.com");
        metrics.describe_target("dev", crate::engine::Engine::Rds, "dev.abc.eu-west-1.rds.amazonaws.com");
        let text = metrics.encode();
        assert!(text.contains(r#"rds_auth_proxy_target_info{target="dw",engine="redshift",endpoint="dw.abc.eu-west-1.redshift.amazonaws.com"} 1"#), "{text}");
        assert!(text.contains(r#"rds_auth_proxy_target_info{target="dev",engine="rds",endpoint="dev.abc.eu-west-1.rds.amazonaws.com"} 1"#), "{text}");
        // A reload that points the target elsewhere replaces its line.
        metrics.describe_target("dw", crate::engine::Engine::RedshiftServerless, "wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com");
        let text = metrics.encode();
        assert!(!text.contains(r#"engine="redshift","#), "{text}");
        assert!(text.contains(r#"rds_auth_proxy_target_info{target="dw",engine="redshift-serverless","#), "{text}");
        // A reload that removes it removes its line.
        metrics.forget_target("dw");
        let text = metrics.encode();
        assert!(!text.contains(r#"target="dw""#), "{text}");
        assert!(text.contains(r#"target_info{target="dev""#), "{text}");
    }

    #[test]
    fn a_scrape_names_every_target_series_and_counts() {
        let metrics = Metrics::new();
        let a = metrics.target("dev");
        let _b = metrics.target("prod");
        let open = a.open_connection();
        a.login_failed("28P01");
        a.login_failed("28P01");
        a.bytes_to_client.inc_by(1234);
        a.auth.tokens_minted.inc();
        a.connect_seconds.observe(0.015);
        let text = metrics.encode();
        for line in [
            "rds_auth_proxy_connections_total{target=\"dev\"} 1",
            "rds_auth_proxy_connections_open{target=\"dev\"} 1",
            "rds_auth_proxy_connections_total{target=\"prod\"} 0",
            "rds_auth_proxy_login_failures_total{target=\"dev\",sqlstate=\"28P01\"} 2",
            "rds_auth_proxy_relayed_bytes_total{target=\"dev\",direction=\"to_client\"} 1234",
            "rds_auth_proxy_iam_tokens_total{target=\"dev\",outcome=\"minted\"} 1",
            "rds_auth_proxy_iam_tokens_total{target=\"dev\",outcome=\"reused\"} 0",
            "rds_auth_proxy_connect_duration_seconds_count{target=\"dev\"} 1",
            "rds_auth_proxy_connect_duration_seconds_bucket{le=\"0.01\",target=\"dev\"} 0",
            "rds_auth_proxy_connect_duration_seconds_bucket{le=\"0.02\",target=\"dev\"} 1",
            "rds_auth_proxy_ssm_messages_resent_total{target=\"prod\"} 0",
            "rds_auth_proxy_spare_hits_total{target=\"dev\"} 0",
            "rds_auth_proxy_spares_discarded_total{target=\"dev\",reason=\"aged\"} 0",
            "rds_auth_proxy_spares_ready{target=\"dev\"} 0",
            "rds_auth_proxy_connections_aged_out_total{target=\"prod\"} 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        drop(open);
        assert!(metrics
            .encode()
            .lines()
            .any(|l| l == "rds_auth_proxy_connections_open{target=\"dev\"} 0"));
    }
}
