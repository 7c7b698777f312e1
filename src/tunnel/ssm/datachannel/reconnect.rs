//! Reconnecting a data channel whose WebSocket dropped: ResumeSession with backoff within
//! the budget, a new [`Link`], and every unacked message replayed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::link::{dial, Link};
use super::pump::Pump;
use super::{Command, Config, DataChannelError};
use crate::tunnel::ssm::api::ControlPlane;
use crate::tunnel::ssm::websocket::{Connector, WsStream};

impl Pump {
    /// ResumeSession + reconnect with backoff, for as long as the budget allows and the
    /// service keeps handing out tokens. A Terminate ends it at any point.
    pub(super) async fn reconnect(&mut self, cause: String) -> Result<(), DataChannelError> {
        tracing::warn!(session = %self.session_id, cause = cause.as_str(), "SSM data channel lost; resuming the session");
        let started = Instant::now();
        let mut delay = self.config.reconnect_initial_delay;
        loop {
            let attempt = resume(
                &*self.control,
                &*self.connector,
                &self.session_id,
                &self.url,
                self.client_id,
                &self.config,
            );
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                command = self.commands.recv() => {
                    if let Some(Command::Terminate(done)) = command {
                        self.pending_terminate = Some(done);
                    }
                    return Err(DataChannelError::Terminated);
                }
            };
            let last = match outcome {
                Ok((ws, url)) => {
                    self.url = url;
                    self.link = Link::start(ws, self.config.write_timeout);
                    let now = Instant::now();
                    self.last_rx = now;
                    self.last_agent = now;
                    self.replay();
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.config.counters.resumed.inc();
                    tracing::info!(session = %self.session_id, "SSM data channel resumed");
                    return Ok(());
                }
                Err(Err(fatal)) => return Err(fatal),
                Err(Ok(transient)) => transient,
            };
            if started.elapsed() + delay > self.config.reconnect_budget {
                return Err(DataChannelError::ReconnectGaveUp {
                    secs: self.config.reconnect_budget.as_secs(),
                    last,
                });
            }
            tracing::debug!(session = %self.session_id, error = %last, delay_ms = delay.as_millis() as u64, "resume attempt failed; retrying");
            let jitter = Duration::from_millis(rand::random_range(
                0..=delay.as_millis().min(1000) as u64 / 2,
            ));
            tokio::select! {
                () = tokio::time::sleep(delay + jitter) => {}
                command = self.commands.recv() => {
                    if let Some(Command::Terminate(done)) = command {
                        self.pending_terminate = Some(done);
                    }
                    return Err(DataChannelError::Terminated);
                }
            }
            delay = (delay * 2).min(self.config.reconnect_max_delay);
        }
    }

    /// Sends every unacked message again on a new connection: all are due at once, and go out
    /// as fast as the pacer and the writer take them.
    fn replay(&mut self) {
        self.out.mark_all_lost();
        self.resend();
    }
}

/// One resume attempt: ResumeSession, dial, OpenDataChannel. `Err(Ok(text))`: worth retrying;
/// `Err(Err(e))`: the session is over.
async fn resume(
    control: &dyn ControlPlane,
    connector: &dyn Connector,
    session_id: &str,
    url: &str,
    client_id: Uuid,
    config: &Config,
) -> Result<(WsStream, String), Result<String, DataChannelError>> {
    let limit = config.resume_timeout;
    let Ok(answer) = tokio::time::timeout(limit, control.resume_session(session_id)).await else {
        return Err(Ok(format!(
            "ResumeSession did not answer within {} ms",
            limit.as_millis()
        )));
    };
    let grant = match answer {
        Ok(Some(grant)) => grant,
        Ok(None) => {
            return Err(Err(DataChannelError::ResumeRefused {
                session_id: session_id.to_owned(),
            }))
        }
        Err(e) if e.is_transient() => return Err(Ok(e.to_string())),
        Err(e) => return Err(Err(DataChannelError::Resume(e))),
    };
    let url = if grant.stream_url.is_empty() {
        url.to_owned()
    } else {
        grant.stream_url.clone()
    };
    let ws = dial(connector, &url, &grant.token, client_id, config)
        .await
        .map_err(|e| Ok(e.to_string()))?;
    Ok((ws, url))
}
