//! The end of a graceful drain as sessions see it: on SIGTERM the listeners close at once and
//! open connections get `--drain-timeout` to finish; then [`DrainTrigger::fire`] tells every
//! session still open to stop (at a message boundary) and send its client [`shutdown_error`].

use tokio::sync::watch;

use crate::pg::{ClientError, SqlState};

/// Fires the end of the drain window.
#[derive(Debug)]
pub struct DrainTrigger(watch::Sender<bool>);

/// What a session waits on: resolves once the drain window is over.
#[derive(Debug, Clone)]
pub struct DrainSignal(watch::Receiver<bool>);

/// A connected trigger and signal.
pub fn channel() -> (DrainTrigger, DrainSignal) {
    let (tx, rx) = watch::channel(false);
    (DrainTrigger(tx), DrainSignal(rx))
}

impl DrainTrigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl DrainSignal {
    /// A signal that never fires (a session served outside a listener).
    pub fn never() -> Self {
        channel().1
    }

    /// Whether the drain window is already over.
    pub fn fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when the drain window is over; never, if the trigger is gone unfired.
    pub async fn expired(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|fired| *fired).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What PostgreSQL itself sends on `pg_ctl stop -m fast` (57P01), so clients and poolers that
/// know to reconnect after a server restart do so here too.
pub fn shutdown_error() -> ClientError {
    ClientError {
        sqlstate: SqlState::AdminShutdown,
        message: "terminating connection due to administrator command".into(),
        hint: Some(
            "rds-auth-proxy was stopped and its drain timeout (--drain-timeout) ran out; reconnect \
             once it runs again."
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_resolves_once_fired_and_never_without_a_trigger() {
        let (trigger, signal) = channel();
        assert!(!signal.fired());
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.expired().await }
        });
        trigger.fire();
        waiting.await.unwrap();
        assert!(signal.fired());
        let never = DrainSignal::never();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), never.expired())
                .await
                .is_err()
        );
    }

    #[test]
    fn the_shutdown_error_is_fatal_57p01() {
        let bytes = shutdown_error().encode();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0H"), "{text:?}");
    }
}
