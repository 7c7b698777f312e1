//! Several targets in one process: each its own listeners and [`TargetContext`] (tunnel, TLS,
//! credentials), all bound before any is served and all stopped by the same shutdown.

use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::app::{build_context_with, AppError, Credentials, Proxy};
use crate::config::Config;
use crate::http::Ops;
use crate::listener::Listeners;

/// Bound proxies, one per target, in the order of the configuration, and the process's one
/// health/metrics endpoint.
pub struct Fleet {
    pub proxies: Vec<Proxy>,
    /// Health state and metrics of every target (one registry, a `target` label each).
    pub ops: Arc<Ops>,
    /// The bound `--http-address`/`--http-port` listener, if asked for (a process-wide key).
    pub http: Option<tokio::net::TcpListener>,
}

#[derive(Debug, thiserror::Error)]
#[error("target {name:?}: {source}")]
pub struct FleetError {
    pub name: String,
    #[source]
    pub source: AppError,
}

impl Fleet {
    /// Binds every target's listeners first — a port in use is the most common start-up mistake,
    /// and it should not wait behind AWS configuration — then builds each target's context.
    pub async fn bind(configs: &[Config], credentials: Credentials) -> Result<Fleet, FleetError> {
        let named = |c: &Config| {
            let name = c.name.clone();
            move |e: AppError| FleetError { name, source: e }
        };
        let http = match configs.first().and_then(|c| c.http) {
            Some(addr) => Some(crate::http::bind(addr).await.map_err(|e| FleetError {
                name: configs[0].name.clone(),
                source: e.into(),
            })?),
            None => None,
        };
        let mut listeners = Vec::with_capacity(configs.len());
        for config in configs {
            listeners.push(
                Listeners::bind(&config.listen)
                    .await
                    .map_err(|e| named(config)(e.into()))?,
            );
        }
        let ops = Arc::new(Ops::new());
        let mut proxies = Vec::with_capacity(configs.len());
        for (config, listeners) in configs.iter().zip(listeners) {
            let ctx = build_context_with(config, credentials.clone(), &ops.metrics)
                .await
                .map_err(named(config))?;
            ops.add_target(ctx.clone(), config.listen.max_connections);
            proxies.push(Proxy {
                listeners,
                ctx,
                ops: ops.clone(),
                http: None,
            });
        }
        Ok(Fleet { proxies, ops, http })
    }

    /// Serves every target until `shutdown` resolves, then drains them all.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let http = self.http.map(|listener| {
            tracing::info!(http = %listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()), "serving /startup /readiness /liveness /metrics");
            crate::app::AbortOnDrop(tokio::spawn(crate::http::serve(listener, self.ops.clone())))
        });
        let stop = shutdown.shared();
        futures_util::future::join_all(self.proxies.into_iter().map(|p| p.run(stop.clone()))).await;
        drop(http);
    }
}
