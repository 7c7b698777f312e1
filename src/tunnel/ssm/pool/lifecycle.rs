//! A shared session's life after it opened: its monitor (keepalive while streams are open,
//! rate and congestion samples, stalled streams reset, retirement when idle, out of the pool
//! when it dies) and `--ssm-prewarm`'s one kept session.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{MuxSession, Pool};
use crate::tunnel::ssm::datachannel::DataChannelError;
use crate::tunnel::ssm::{sleep_opt, smux, SsmError};

/// How often each session's message rate is sampled.
const RATE_SAMPLE: Duration = Duration::from_millis(500);

impl Pool {
    /// Drops a session from the pool (it died).
    pub(super) fn forget(&self, session: &Arc<MuxSession>) {
        self.lock().sessions.retain(|s| !Arc::ptr_eq(s, session));
    }

    /// Removes the session if it is still unused (and, with `prewarm`, not the last one); true
    /// when it was removed.
    fn retire_if_idle(&self, session: &Arc<MuxSession>) -> bool {
        let mut st = self.lock();
        if session.active.load(Ordering::Acquire) != 0 {
            return false;
        }
        let others = st.sessions.iter().filter(|s| !Arc::ptr_eq(s, session) && s.is_alive());
        if self.settings.prewarm && others.count() == 0 {
            return false;
        }
        st.sessions.retain(|s| !Arc::ptr_eq(s, session));
        true
    }
}

/// Follows one shared session: keepalive on while streams are open, its message rate and
/// congestion sampled, retired after the idle timeout, out of the pool when it dies.
pub(super) async fn monitor(pool: Weak<Pool>, session: Arc<MuxSession>) {
    let Some(idle_timeout) = pool.upgrade().map(|p| p.settings.idle_timeout) else {
        return;
    };
    // The session --ssm-prewarm keeps must outlive the account's idle session timeout too.
    let prewarm = pool.upgrade().is_some_and(|p| p.settings.prewarm);
    let id = session.channel.session_id().to_owned();
    let mut sample =
        tokio::time::interval_at(tokio::time::Instant::now() + RATE_SAMPLE, RATE_SAMPLE);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (session.channel.stats(), tokio::time::Instant::now());
    let mut was_congested = false;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let active = session.active.load(Ordering::Acquire);
        session.smux.set_keepalive(active > 0 || prewarm);
        if active > 0 {
            idle_since = tokio::time::Instant::now();
        }
        let idle_at = (active == 0).then_some(idle_since + idle_timeout);
        tokio::select! {
            () = session.changed.notified() => continue,
            _ = sample.tick() => {
                let now = (session.channel.stats(), tokio::time::Instant::now());
                let secs = now.1.duration_since(last.1).as_secs_f64().max(0.1);
                let out = now.0.messages_out.saturating_sub(last.0.messages_out);
                let inn = now.0.messages_in.saturating_sub(last.0.messages_in);
                session.rate.store((out.max(inn) as f64 / secs) as u64, Ordering::Relaxed);
                last = now;
                if let Some(pool) = pool.upgrade() {
                    let stall = pool.settings.stall_timeout;
                    for (stream, dropped) in session.smux.reset_stalled(stall) {
                        session.stalls_reset.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            session = %id,
                            stream,
                            discarded_bytes = dropped,
                            stalled_s = stall.as_secs(),
                            "a client stopped reading its results; its stream is reset so the other connections on the session can go on"
                        );
                    }
                }
                let congested = session.is_congested();
                if congested != was_congested {
                    if congested {
                        tracing::info!(session = %id, streams = active, "SSM session congested: a client is not reading its results; new connections go to another session");
                    } else {
                        tracing::info!(session = %id, "SSM session no longer congested");
                    }
                    was_congested = congested;
                }
            }
            reason = session.channel.wait_ended() => {
                if let Some(pool) = pool.upgrade() {
                    pool.forget(&session);
                }
                session.smux.close();
                if !matches!(reason, DataChannelError::Terminated) {
                    if let Some(pool) = pool.upgrade() {
                        pool.config.counters.failed.inc();
                    }
                    tracing::warn!(session = %id, reason = reason.to_string(), "SSM session lost; the next connection opens a new one");
                }
                return;
            }
            reason = session.smux.closed() => {
                if let Some(pool) = pool.upgrade() {
                    pool.forget(&session);
                }
                if matches!(reason.root_cause(), smux::SmuxError::ClosedLocally) {
                    tracing::debug!(session = %id, "SSM multiplexer closed; terminating the session");
                } else {
                    tracing::warn!(session = %id, reason = reason.to_string(), "SSM multiplexer failed; terminating the session");
                }
                session.channel.terminate().await;
                return;
            }
            () = sleep_opt(idle_at) => {
                let retired = pool.upgrade().is_none_or(|p| p.retire_if_idle(&session));
                if retired {
                    tracing::info!(
                        session = %id,
                        idle_s = idle_timeout.as_secs(),
                        streams = session.opened.load(Ordering::Relaxed),
                        "closing the idle SSM session"
                    );
                    session.smux.close();
                    session.channel.terminate().await;
                    return;
                }
                // Kept (in use again, or the one --ssm-prewarm keeps): a new idle period.
                idle_since = tokio::time::Instant::now();
            }
        }
    }
}

/// After a failed prewarm open, the first wait before trying again; it doubles up to
/// [`PREWARM_RETRY_MAX`].
const PREWARM_RETRY_FIRST: Duration = Duration::from_secs(15);
const PREWARM_RETRY_MAX: Duration = Duration::from_secs(300);
/// A kept session that ends is reopened at once, but when two in a row lasted less than this,
/// only after the retry wait: a session that dies as it opens makes no loop of StartSessions.
const PREWARM_MIN_LIFE: Duration = Duration::from_secs(60);

/// `--ssm-prewarm`: makes sure one shared session is open, now and whenever the last one ends
/// (the monitor never retires the last one). Opens at most one at a time, through the same
/// path as a connection, and only while none is open. A failure is logged once as a warning
/// (not fatal: connections still open sessions as usual) and retried with a growing wait.
/// Ends with the pool, at shutdown, or when the agent turns out too old for mux.
pub(super) async fn keep_warm(pool: Weak<Pool>) {
    let mut retry = PREWARM_RETRY_FIRST;
    let mut failures = 0u32;
    let mut short_lives = 0u32;
    loop {
        let Some(p) = pool.upgrade() else { return };
        let warm = p.warm_session().await;
        let target = p.settings.target.clone();
        drop(p);
        let wait = match warm {
            Ok(Some(session)) => {
                if failures > 0 {
                    tracing::info!(%target, "--ssm-prewarm: an SSM session is open again");
                }
                failures = 0;
                let found = tokio::time::Instant::now();
                tokio::select! {
                    _ = session.channel.wait_ended() => {}
                    _ = session.smux.closed() => {}
                }
                if found.elapsed() >= PREWARM_MIN_LIFE {
                    short_lives = 0;
                    retry = PREWARM_RETRY_FIRST;
                    continue;
                }
                short_lives += 1;
                if short_lives == 1 {
                    continue;
                }
                retry
            }
            Ok(None) => {
                tracing::info!(%target, "--ssm-prewarm keeps no session open: the SSM agent is too old for multiplexing, so every connection needs a session of its own");
                return;
            }
            Err(SsmError::ShuttingDown) => return,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%target, error = %crate::errors::display_chain(&e), hint = %e.hint(), retry_s = retry.as_secs(), "--ssm-prewarm could not open an SSM session; trying again in the background (connections open one as usual meanwhile)");
                } else {
                    tracing::debug!(%target, error = %crate::errors::display_chain(&e), retry_s = retry.as_secs(), "--ssm-prewarm: still no SSM session");
                }
                retry
            }
        };
        tokio::time::sleep(wait).await;
        retry = (retry * 2).min(PREWARM_RETRY_MAX);
    }
}
