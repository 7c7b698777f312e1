//! Opening a session for the pool: StartSession, the data channel and its handshake, then
//! smux on top (or basic mode for an agent too old for it), each step under its own limit.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use tokio::sync::{oneshot, watch, Notify};

use super::lifecycle::monitor;
use super::{MuxSession, OpenResult, Pool};
use crate::tunnel::ssm::api::StartRequest;
use crate::tunnel::ssm::datachannel::{self, DataChannel, Opened};
use crate::tunnel::ssm::{handshake, smux, SsmError};

impl Pool {
    /// Opens a session for the pool, detached from any one connection; publishes the outcome.
    pub(super) async fn open_shared(self: Arc<Self>, done: watch::Sender<OpenResult>) {
        let outcome = match self.open_session().await {
            Err(e) => Err(e),
            Ok(opened) => {
                let mux = handshake::agent_supports_mux(opened.channel.agent_version())
                    && opened.channel.properties().is_local_port_forwarding();
                if mux {
                    self.add_mux(opened).await
                } else {
                    tracing::info!(
                        agent_version = opened.channel.agent_version(),
                        "SSM agent too old for multiplexing: one SSM session per connection"
                    );
                    let unused = {
                        let mut st = self.lock();
                        st.basic_mode = true;
                        if st.shutting_down {
                            Some(opened)
                        } else {
                            st.spare_basic.replace(opened)
                        }
                    };
                    if let Some(unused) = unused {
                        unused.channel.terminate().await;
                    }
                    Ok(())
                }
            }
        };
        self.lock().opening = None;
        done.send_replace(Some(outcome));
    }

    async fn add_mux(self: &Arc<Self>, opened: Opened) -> Result<(), SsmError> {
        let session = match self.start_mux(opened) {
            Ok(session) => session,
            Err((e, channel)) => {
                channel.terminate().await;
                return Err(e);
            }
        };
        let added = {
            let mut st = self.lock();
            if !st.shutting_down {
                st.sessions.push(session.clone());
            }
            !st.shutting_down
        };
        if !added {
            session.channel.terminate().await;
            return Err(SsmError::ShuttingDown);
        }
        tokio::spawn(monitor(Arc::downgrade(self), session));
        Ok(())
    }

    /// Basic mode: a session of its own, opened detached; if the caller is gone by the time it
    /// is ready, it is terminated.
    pub(super) async fn open_basic(self: &Arc<Self>) -> Result<Opened, SsmError> {
        let (tx, rx) = oneshot::channel();
        let pool = self.clone();
        tokio::spawn(async move {
            let result = pool.open_session().await;
            if let Err(Ok(opened)) = tx.send(result) {
                opened.channel.terminate().await;
            }
        });
        rx.await.unwrap_or(Err(SsmError::ShuttingDown))
    }

    /// StartSession, then the data channel and its handshake, each step under its own limit.
    /// A session whose channel failed is terminated so it does not linger until the idle
    /// timeout.
    async fn open_session(&self) -> Result<Opened, SsmError> {
        let request = StartRequest {
            target: self.settings.target.clone(),
            host: self.settings.host.clone(),
            port: self.settings.port,
        };
        let limit = self.settings.start_timeout;
        let grant = match tokio::time::timeout(limit, self.control.start_session(&request)).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(e)) => {
                self.config.counters.failed.inc();
                return Err(e.into());
            }
            Err(_) => {
                self.config.counters.failed.inc();
                return Err(SsmError::StartTimeout(limit.as_secs()));
            }
        };
        let session_id = grant.session_id.clone();
        match datachannel::open(
            grant,
            self.config.clone(),
            self.connector.clone(),
            self.control.clone(),
        )
        .await
        {
            Ok(opened) => {
                self.config.counters.started.inc();
                tracing::info!(
                    session = %session_id,
                    target = %self.settings.target,
                    agent_version = opened.channel.agent_version(),
                    "SSM session open"
                );
                Ok(opened)
            }
            Err(source) => {
                self.config.counters.failed.inc();
                tracing::debug!(session = %session_id, error = source.to_string(), "SSM session failed to open; terminating it");
                datachannel::terminate_api(&*self.control, &session_id).await;
                Err(SsmError::DataChannel { session_id, source })
            }
        }
    }

    #[allow(clippy::result_large_err)]
    fn start_mux(&self, opened: Opened) -> Result<Arc<MuxSession>, (SsmError, DataChannel)> {
        let config = smux::Config {
            // NOPs only while streams are open (the monitor switches them); the agent's
            // keepalive is off for our ClientVersion, so silence is normal.
            keepalive_interval: Some(self.settings.keepalive_interval),
            keepalive_timeout: None,
            max_receive_buffer: self.settings.session_buffer,
            max_stream_buffer: self.settings.stream_buffer,
            // Small frames, so streams interleave finely at ~1 KiB per data-channel message.
            max_frame_size: 8 * 1024,
        };
        let smux = match smux::Session::client(opened.stream, config) {
            Ok(smux) => smux,
            Err(e) => return Err((SsmError::Smux(e), opened.channel)),
        };
        smux.set_keepalive(false);
        Ok(Arc::new(MuxSession {
            channel: opened.channel,
            smux,
            active: AtomicUsize::new(0),
            changed: Notify::new(),
            opened: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            stalls_reset: AtomicU64::new(0),
        }))
    }
}
