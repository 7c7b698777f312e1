//! Which shared session a new connection joins: the least-loaded healthy one, or a new one
//! (opened once, however many connections wait for it), or basic mode's own session.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::{MuxSession, OpenResult, Pool, PoolState};
use crate::tunnel::ssm::datachannel::Opened;
use crate::tunnel::ssm::SsmError;

/// What `acquire` found: a shared session (with a stream slot reserved) or a fresh channel.
pub(super) enum Acquired {
    Mux(Arc<MuxSession>),
    Basic(Opened),
}

/// Gives back a stream slot and tells the monitor.
pub(super) fn release(session: &MuxSession) {
    session.active.fetch_sub(1, Ordering::AcqRel);
    session.changed.notify_one();
}

/// Reserves a stream slot on `session`.
fn reserve(session: &Arc<MuxSession>) -> Arc<MuxSession> {
    session.active.fetch_add(1, Ordering::AcqRel);
    session.changed.notify_one();
    session.clone()
}
impl Pool {
    /// A shared session to open a stream on (its slot reserved), or `None`: open a new one.
    /// A session being resumed is never picked and does not count against `max_sessions`:
    /// it may not come back, and a new session works now.
    fn pick(&self, st: &mut PoolState) -> Option<Arc<MuxSession>> {
        st.sessions.retain(|s| s.is_alive());
        let usable: Vec<&Arc<MuxSession>> = st
            .sessions
            .iter()
            .filter(|s| !s.is_reconnecting())
            .collect();
        let least = |pred: &dyn Fn(&MuxSession) -> bool| {
            usable
                .iter()
                .filter(|s| pred(s))
                .min_by_key(|s| s.active.load(Ordering::Acquire))
                .map(|s| (*s).clone())
        };
        if let Some(s) = least(&|s| !s.is_congested() && !s.is_busy()) {
            return Some(reserve(&s));
        }
        if usable.len() < self.settings.max_sessions.max(1) {
            return None;
        }
        // At the limit: share a busy session rather than a congested one, if there is a choice.
        least(&|s| !s.is_congested())
            .or_else(|| least(&|_| true))
            .map(|s| reserve(&s))
    }

    pub(super) async fn acquire(self: &Arc<Self>) -> Result<Acquired, SsmError> {
        loop {
            let waiting = {
                let mut st = self.lock();
                if st.shutting_down {
                    return Err(SsmError::ShuttingDown);
                }
                if st.basic_mode {
                    if let Some(opened) = st.spare_basic.take() {
                        return Ok(Acquired::Basic(opened));
                    }
                    None
                } else if let Some(s) = self.pick(&mut st) {
                    return Ok(Acquired::Mux(s));
                } else {
                    Some(self.join_opening(&mut st))
                }
            };
            let Some(mut rx) = waiting else {
                return self.open_basic().await.map(Acquired::Basic);
            };
            let outcome = match rx.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => Some(Err(SsmError::ShuttingDown)),
            };
            if let Some(Err(e)) = outcome {
                return Err(e);
            }
        }
    }

    /// The session open in flight, or a new one started: its outcome is published there.
    fn join_opening(self: &Arc<Self>, st: &mut PoolState) -> watch::Receiver<OpenResult> {
        match &st.opening {
            Some(rx) => rx.clone(),
            None => {
                let (tx, rx) = watch::channel(None);
                st.opening = Some(rx.clone());
                tokio::spawn(self.clone().open_shared(tx));
                rx
            }
        }
    }

    /// A live shared session, opened if there is none (or joining the open in flight); `None`
    /// in basic mode, where sessions are not shared.
    pub(super) async fn warm_session(
        self: &Arc<Self>,
    ) -> Result<Option<Arc<MuxSession>>, SsmError> {
        loop {
            let mut rx = {
                let mut st = self.lock();
                if st.shutting_down {
                    return Err(SsmError::ShuttingDown);
                }
                if st.basic_mode {
                    return Ok(None);
                }
                st.sessions.retain(|s| s.is_alive());
                if let Some(session) = st.sessions.first() {
                    return Ok(Some(session.clone()));
                }
                self.join_opening(&mut st)
            };
            let outcome = match rx.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => return Err(SsmError::ShuttingDown),
            };
            if let Some(Err(e)) = outcome {
                return Err(e);
            }
        }
    }
}
