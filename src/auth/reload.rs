//! How often a refused login may reload credentials: at most once per interval, so a client
//! looping on a wrong user name or a stale password costs one STS/SSO/Secrets Manager call per
//! interval, not one per attempt (throttling would then hit every user of the process).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The default interval between reloads after refused logins: the first refusal after a
/// rotation re-reads at once; a storm of refusals re-reads twice a minute at most.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// Lets one reload through per interval. A reload that is not let through is not queued: the
/// refused login gets its error at once.
#[derive(Debug)]
pub struct ReloadGate {
    interval: Duration,
    /// When the last reload was let through.
    last: Mutex<Option<Instant>>,
}

impl Default for ReloadGate {
    fn default() -> Self {
        ReloadGate::new(RELOAD_INTERVAL)
    }
}

impl ReloadGate {
    pub fn new(interval: Duration) -> Self {
        ReloadGate {
            interval,
            last: Mutex::new(None),
        }
    }

    /// Whether a reload may happen now; if so, it counts as done from now.
    pub fn may_reload(&self) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(at) if now.duration_since(at) < self.interval => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_reload_per_interval() {
        let gate = ReloadGate::new(Duration::from_secs(30));
        assert!(gate.may_reload(), "the first refusal reloads");
        for _ in 0..100 {
            assert!(!gate.may_reload(), "refusals within the interval do not");
        }
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!gate.may_reload());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(gate.may_reload(), "the interval is over");
        assert!(!gate.may_reload());
    }
}
