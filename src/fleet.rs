//! Several targets in one process: each its own listeners and [`TargetContext`] (tunnel, TLS,
//! credentials), all bound before any is served and all stopped by the same shutdown.

use std::future::Future;

use futures_util::FutureExt;

use crate::app::{build_context, AppError, Credentials, Proxy};
use crate::config::Config;
use crate::listener::Listeners;

/// Bound proxies, one per target, in the order of the configuration.
pub struct Fleet {
    pub proxies: Vec<Proxy>,
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
        let mut listeners = Vec::with_capacity(configs.len());
        for config in configs {
            listeners.push(
                Listeners::bind(&config.listen)
                    .await
                    .map_err(|e| named(config)(e.into()))?,
            );
        }
        let mut proxies = Vec::with_capacity(configs.len());
        for (config, listeners) in configs.iter().zip(listeners) {
            let ctx = build_context(config, credentials.clone())
                .await
                .map_err(named(config))?;
            proxies.push(Proxy { listeners, ctx });
        }
        Ok(Fleet { proxies })
    }

    /// Serves every target until `shutdown` resolves, then drains them all.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let stop = shutdown.shared();
        futures_util::future::join_all(self.proxies.into_iter().map(|p| p.run(stop.clone()))).await;
    }
}
