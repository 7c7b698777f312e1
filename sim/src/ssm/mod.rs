//! The simulated SSM service: the Session Manager API ([`api`]) and, behind the data channel
//! WebSocket ([`channel`]), MGS plus the agent's side of a port-forwarding session ([`agent`],
//! [`port`]), byte-faithful to `ssm-protocol.md`. Faults and realism are knobs
//! ([`SsmSimOptions`]) that tests may flip while a transfer runs.

mod agent;
mod api;
mod channel;
mod flights;
mod port;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::sigv4::SimCredentials;
pub use flights::StreamFlights;

/// The managed node id StartSession accepts; anything else is "not connected".
pub const SIM_TARGET_ID: &str = "i-0123456789abcdef0";

/// One managed node DescribeInstanceInformation lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimNode {
    pub id: &'static str,
    /// Whether its agent is connected (`Online`) or not (`ConnectionLost`).
    pub online: bool,
    pub tags: &'static [(&'static str, &'static str)],
    pub ip: &'static str,
}

/// The managed nodes of the simulated account, in no particular order (AWS promises none). The
/// ones online forward to the database; an offline one sorts first and shares the tags of
/// [`SIM_TARGET_ID`], so `--ssm-target auto` must skip it.
pub const SIM_NODES: &[SimNode] = &[
    SimNode {
        id: "i-0fedcba9876543210",
        online: true,
        tags: &[("Name", "web")],
        ip: "10.0.1.20",
    },
    SimNode {
        id: "i-00aaaaaaaaaaaaaa0",
        online: false,
        tags: &[("Name", "bastion-old"), ("role", "db-tunnel")],
        ip: "10.0.1.5",
    },
    SimNode {
        id: SIM_TARGET_ID,
        online: true,
        tags: &[("Name", "bastion"), ("role", "db-tunnel")],
        ip: "10.0.1.10",
    },
];

/// The agent version the simulated node reports unless told otherwise (the spec's reference agent).
pub const DEFAULT_AGENT_VERSION: &str = "3.3.987.0";

/// AWS's `StreamDataPayloadSize`: the most bytes the agent puts in one Output message.
pub const DEFAULT_PAYLOAD_CAP: usize = 1024;

/// The agent's sleep after each Output message (`ssm-protocol.md` §5.4).
pub const AWS_AGENT_PACING: Duration = Duration::from_millis(1);

/// The gateway's observed inbound limit, in client data messages per second (§5.4).
pub const AWS_CLIENT_RATE_LIMIT: u32 = 1000;

/// How long after sending HandshakeComplete AWS's agent drops client input, unacked, because its
/// port plugin is not ready yet (`ssm-protocol.md` §6a: 0.4–5 ms observed; the upper bound, so
/// the simulator is never kinder).
pub const AWS_EARLY_INPUT_WINDOW: Duration = Duration::from_millis(5);

/// One-way latency of [`SsmSimOptions::real_network`]: 25 ms each way, a 50 ms round trip, as
/// between a laptop and a nearby AWS region.
pub const REAL_NETWORK_LATENCY: Duration = Duration::from_millis(25);

/// Errors starting the simulated SSM service.
#[derive(Debug, thiserror::Error)]
pub enum SsmSimError {
    /// The API/WebSocket listener could not be bound.
    #[error("cannot bind the simulated SSM endpoint on 127.0.0.1")]
    Bind(#[source] std::io::Error),
}

/// Behaviour of the simulated service. Every field can also be changed while it runs, through
/// [`SsmSimKnobs`]; running sessions pick the change up at their next message.
///
/// **The network model** (`latency`, `jitter`): the client is that far from AWS, and every
/// exchange pays for it as it would over the internet:
/// - every data channel WebSocket frame, in each direction (client → agent and agent → client,
///   data, acks, the OpenDataChannel text frame and close frames alike), arrives `latency` plus
///   a random `0..=jitter` after it was sent, never before the frame sent ahead of it on the same
///   WebSocket (one FIFO delay line per direction per WebSocket, as TCP delivers in order). It is
///   a delay, not a stop-and-wait: frames in flight overlap, so throughput does not collapse;
/// - an HTTP request (the API calls, the WebSocket upgrade) costs one round trip: the request
///   reaches the service one way later, the answer the client another one way later;
/// - the first request on a new TCP connection pays two more round trips first: the TCP
///   handshake and the TLS 1.3 handshake of the real `https://`/`wss://` endpoint. A data
///   channel upgrade (always a new connection) therefore answers after 3 round trips — TCP +
///   TLS 1.3 + the HTTP upgrade — and an API call on a kept-alive connection after 1.
#[derive(Debug, Clone, PartialEq)]
pub struct SsmSimOptions {
    /// `AgentVersion` in the HandshakeRequest. Clients key mux support on it (> 3.0.196.0).
    pub agent_version: String,
    /// Most bytes per agent → client Output message (AWS: 1024).
    pub payload_cap: usize,
    /// Sleep after each agent → client Output message, as the agent does (AWS-like: 1 ms).
    /// `None` sends as fast as the window allows.
    pub pacing: Option<Duration>,
    /// Probability that a stream-data message (either direction) is lost.
    pub drop_rate: f64,
    /// Probability that a stream-data message (either direction) is delivered twice.
    pub duplicate_rate: f64,
    /// Probability that a stream-data message (either direction) is held back behind the next one.
    pub reorder_rate: f64,
    /// Seed of the fault RNG, so a failing fault pattern can be replayed. Changing it at run time
    /// reseeds.
    pub seed: u64,
    /// Abruptly close (TCP reset, no close frame) each WebSocket after this many new
    /// stream-data messages on it, counted in both directions. Acks, resends, replays and
    /// duplicates do not count, so a resumed session always makes progress before the next kill.
    pub kill_ws_after_messages: Option<u64>,
    /// Abruptly close each WebSocket this long after it opened.
    pub kill_ws_after: Option<Duration>,
    /// Close each WebSocket with `1000 Bye` this long after it opened, as MGS does about hourly.
    pub bye_after: Option<Duration>,
    /// End a session after this long without stream data in either direction (smux NOPs count,
    /// WebSocket pings do not), with the service's idle-timeout `channel_closed`.
    pub idle_timeout: Option<Duration>,
    /// ResumeSession answers without a TokenValue, as for a session that already timed out.
    pub refuse_resume: bool,
    /// The gateway's inbound limit (`ssm-protocol.md` §5.4): a data channel WebSocket whose
    /// client sends more than this many `input_stream_data` messages per second (fresh and
    /// resent alike; acks do not count) is cut abruptly — TCP reset, no close frame — as third
    /// parties observe on AWS. Judged by a token bucket per WebSocket: N tokens, refilled at N
    /// per second, so a burst of N is tolerated but not a sustained rate above N. The session
    /// itself survives: ResumeSession and a new WebSocket carry on. `None` = no limit.
    pub client_rate_limit: Option<u32>,
    /// While on, the agent sends no `acknowledge` for client stream data. It still processes
    /// that data (delivers it in order to the target); once off, the client's resends of the
    /// unacked messages are acked as duplicates.
    pub hold_acks: bool,
    /// While on, the gateway stops reading client WebSockets, so the client's writes stall in
    /// TCP once the socket buffers fill (nothing sent is lost; reading resumes when it is
    /// turned off). Applies to every connection attached while the knob was off; a WebSocket
    /// opened while it is on (a client's resume) is read normally, so a client that abandons
    /// a stuck connection and resumes makes progress.
    pub stop_reading: bool,
    /// While on, data channel WebSocket upgrade requests get no answer at all (held until the
    /// client gives up or the simulator stops), like an unreachable `ssmmessages` path.
    pub hang_upgrade: bool,
    /// While on, new sessions' agents hold back their HandshakeRequest; it is sent once the
    /// knob is turned off. The agent's 15 s handshake timeout still runs from StartSession.
    pub hang_handshake: bool,
    /// StartSession fails with this AWS error code (`__type`), e.g. `AccessDeniedException`
    /// or `ThrottlingException`, with the message AWS gives for it. Other calls still work.
    pub refuse_start: Option<String>,
    /// Resend as the real agent does (`ssm-protocol.md` §4.3): every 100 ms look only at the
    /// oldest unacked message and resend it if overdue — one message per tick, however many
    /// are missing. Off: every overdue message each pass (kinder than AWS).
    pub resend_front_only: bool,
    /// The managed node [`SIM_TARGET_ID`] has lost its connection: DescribeInstanceInformation
    /// reports it `ConnectionLost` and StartSession answers TargetNotConnected, as AWS does for
    /// a stopped instance or a dead agent.
    pub node_offline: bool,
    /// One-way network delay between the client and the service (see the network model above).
    /// `None` = loopback speed.
    pub latency: Option<Duration>,
    /// Extra random delay per frame or request, uniform in `0..=jitter`, on top of `latency`.
    /// Never reorders frames of one WebSocket direction.
    pub jitter: Option<Duration>,
    /// For this long after the agent sends HandshakeComplete, client Output is dropped without
    /// an ack and without advancing the sequence (the port plugin is not ready yet), so the
    /// client must resend it, as AWS's agent does (`ssm-protocol.md` §6a; AWS: up to 5 ms,
    /// [`AWS_EARLY_INPUT_WINDOW`]). Measured at the agent from the moment it sends
    /// HandshakeComplete. Counted in [`SsmSimStats::early_input_dropped`].
    pub early_input_window: Option<Duration>,
    // --- Failure-branch knobs (the `faults` work); kept together at the end. ---
    /// While on, ResumeSession calls get no answer at all (held until the client gives up or
    /// the simulator stops), like a request lost when the Wi-Fi drops mid-call.
    pub hang_resume: bool,
    /// A newer agent: its HandshakeRequest also asks for this action, which no client knows
    /// (parameters `{"Feature":"sim"}`). For the actions it knows the agent does what AWS's
    /// does (any status but Success cancels the session); for this one it accepts the answer
    /// every plugin released so far gives an unknown action (`ActionResult` 3 with status 0,
    /// or status 3 Unsupported), notes it in [`SessionInfo::declined_actions`] and goes on, as
    /// it must to work with them. Any other failed answer cancels the session.
    pub extra_handshake_action: Option<String>,
}

impl SsmSimOptions {
    /// AWS's limits as far as they are known (`ssm-protocol.md` §4.3, §5.4, §6a): 1024-byte
    /// agent payloads, 1 ms agent pacing, the gateway cutting a client above 1000 data messages
    /// per second, the agent's front-only resend scheduler, and its 5 ms early-input window
    /// after HandshakeComplete. Every part stays its own knob. No latency: that is
    /// [`SsmSimOptions::real_network`], so tests at loopback speed stay fast.
    pub fn aws_limits() -> Self {
        SsmSimOptions::default().with_aws_limits()
    }

    /// These options with [`SsmSimOptions::aws_limits`]' five knobs set.
    pub fn with_aws_limits(mut self) -> Self {
        self.payload_cap = DEFAULT_PAYLOAD_CAP;
        self.pacing = Some(AWS_AGENT_PACING);
        self.client_rate_limit = Some(AWS_CLIENT_RATE_LIMIT);
        self.resend_front_only = true;
        self.early_input_window = Some(AWS_EARLY_INPUT_WINDOW);
        self
    }

    /// A real network between the client and AWS: [`REAL_NETWORK_LATENCY`] (25 ms) each way
    /// (see the network model on [`SsmSimOptions`]) and the agent's early-input window. Combine
    /// with AWS's limits as `SsmSimOptions::aws_limits().with_real_network()`.
    pub fn real_network() -> Self {
        SsmSimOptions::default().with_real_network()
    }

    /// These options with [`SsmSimOptions::real_network`]'s two knobs set.
    pub fn with_real_network(mut self) -> Self {
        self.latency = Some(REAL_NETWORK_LATENCY);
        self.early_input_window = Some(AWS_EARLY_INPUT_WINDOW);
        self
    }
}

impl Default for SsmSimOptions {
    fn default() -> Self {
        Self {
            agent_version: DEFAULT_AGENT_VERSION.to_owned(),
            payload_cap: DEFAULT_PAYLOAD_CAP,
            pacing: None,
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            reorder_rate: 0.0,
            seed: 0,
            kill_ws_after_messages: None,
            kill_ws_after: None,
            bye_after: None,
            idle_timeout: None,
            refuse_resume: false,
            client_rate_limit: None,
            hold_acks: false,
            stop_reading: false,
            hang_upgrade: false,
            hang_handshake: false,
            refuse_start: None,
            resend_front_only: false,
            node_offline: false,
            latency: None,
            jitter: None,
            early_input_window: None,
            hang_resume: false,
            extra_handshake_action: None,
        }
    }
}

/// Shared handle to the running simulator's [`SsmSimOptions`]. Sessions subscribe to changes, so a
/// knob flipped mid-transfer takes effect without reconnecting.
#[derive(Debug)]
pub struct SsmSimKnobs {
    /// The current options; `watch` so connection tasks can re-arm their timers on a change.
    current: watch::Sender<SsmSimOptions>,
}

impl SsmSimKnobs {
    fn new(options: SsmSimOptions) -> Self {
        Self {
            current: watch::Sender::new(options),
        }
    }

    /// A copy of the current options.
    pub fn get(&self) -> SsmSimOptions {
        self.current.borrow().clone()
    }

    /// Changes options in place, e.g. `knobs.update(|o| o.drop_rate = 0.01)`.
    pub fn update(&self, change: impl FnOnce(&mut SsmSimOptions)) {
        self.current.send_modify(change);
    }

    /// Replaces all options.
    pub fn set(&self, options: SsmSimOptions) {
        self.current.send_replace(options);
    }

    /// Reads one value without copying the whole struct.
    fn read<T>(&self, f: impl FnOnce(&SsmSimOptions) -> T) -> T {
        f(&self.current.borrow())
    }

    fn subscribe(&self) -> watch::Receiver<SsmSimOptions> {
        self.current.subscribe()
    }
}

/// Counters tests can read while the simulator runs. All monotonic except `active_sessions`
/// and the `peak_*` maxima.
#[derive(Debug, Default)]
pub struct SsmSimStats {
    /// Successful StartSession calls.
    pub sessions_started: AtomicU64,
    /// ResumeSession calls that returned a token.
    pub sessions_resumed: AtomicU64,
    /// ResumeSession calls answered without a token (knob, or session already over).
    pub resume_refused: AtomicU64,
    /// TerminateSession API calls for known sessions (including repeats).
    pub terminate_api_calls: AtomicU64,
    /// TerminateSession flags (Flag payload 2) received from clients.
    pub terminate_flags: AtomicU64,
    /// Sessions whose handshake completed.
    pub handshakes_completed: AtomicU64,
    /// Sessions that ended for any reason.
    pub sessions_ended: AtomicU64,
    /// Sessions ended by the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Sessions currently open: from a successful StartSession until the session ends
    /// (TerminateSession API or flag, idle timeout, handshake timeout, port failure), whether
    /// or not a client ever connected its WebSocket. See [`SsmSimStats::wait_for_open_sessions`].
    pub active_sessions: AtomicU64,
    /// Sessions ended by the agent's 15 s handshake timeout (no HandshakeResponse in time,
    /// e.g. because the client never connected).
    pub handshake_timeouts: AtomicU64,
    /// StartSession calls refused by the `refuse_start` knob.
    pub starts_refused: AtomicU64,
    /// WebSocket upgrade requests left unanswered by the `hang_upgrade` knob.
    pub upgrades_hung: AtomicU64,
    /// WebSockets cut by the `client_rate_limit` knob.
    pub rate_limit_cuts: AtomicU64,
    /// `input_stream_data` messages received from clients (fresh and resent; acks excluded).
    pub client_data_messages: AtomicU64,
    /// The most client `input_stream_data` messages one WebSocket carried within any sliding
    /// one-second window so far: what to compare with the 1000/s limit. Measured whether or
    /// not the limit is on. [`SsmSimStats::reset_peak`] clears it between phases of a test.
    pub peak_client_msgs_per_sec: AtomicU64,
    /// Acks the agent withheld because of the `hold_acks` knob.
    pub acks_held: AtomicU64,
    /// Client WebSockets whose reading was paused by the `stop_reading` knob.
    pub reads_stopped: AtomicU64,
    /// Wakes [`SsmSimStats::wait_for_open_sessions`] whenever `active_sessions` changes.
    sessions_changed: tokio::sync::Notify,
    /// WebSocket upgrades accepted on the data channel path.
    pub ws_connections: AtomicU64,
    /// WebSockets killed abruptly by the `kill_ws_*` knobs.
    pub ws_killed: AtomicU64,
    /// WebSockets closed with `1000 Bye` by the `bye_after` knob.
    pub ws_byes: AtomicU64,
    /// Target connections opened: smux streams accepted (mux) or dials (basic).
    pub streams_opened: AtomicU64,
    /// Failed dials to the target (each one a ConnectToPortError flag in mux mode).
    pub connect_errors: AtomicU64,
    /// Stream-data messages dropped by the `drop_rate` knob.
    pub messages_dropped: AtomicU64,
    /// Stream-data messages duplicated by the `duplicate_rate` knob.
    pub messages_duplicated: AtomicU64,
    /// Stream-data messages held back by the `reorder_rate` knob.
    pub messages_reordered: AtomicU64,
    /// Duplicate client messages the agent acknowledged again.
    pub duplicates_reacked: AtomicU64,
    /// Agent messages sent again after their retransmission timeout.
    pub resends: AtomicU64,
    /// Client Output messages that were one smux NOP alone (the client's keepalive), counted
    /// once each, in sequence. Each one is activity that pushes the idle timeout back.
    pub client_keepalives: AtomicU64,
    /// Client Output messages the agent dropped, unacked and without advancing the sequence,
    /// because they arrived within the `early_input_window` after HandshakeComplete (each
    /// arrival counts, so a message resent into the window again counts again).
    pub early_input_dropped: AtomicU64,
    /// Round trips per target connection; see [`SsmSimStats::stream_flights`].
    flights: flights::Registry,
    // --- Failure-branch counters (the `faults` work); kept together at the end. ---
    /// ResumeSession calls left unanswered by the `hang_resume` knob.
    pub resumes_hung: AtomicU64,
}

impl SsmSimStats {
    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Sessions open right now (see `active_sessions`).
    pub fn open_sessions(&self) -> u64 {
        self.active_sessions.load(Ordering::SeqCst)
    }

    /// Waits until exactly `n` sessions are open, for at most `deadline`. On timeout, returns
    /// how many are open then. Event-driven: wakes on every session start and end.
    pub async fn wait_for_open_sessions(&self, n: u64, deadline: Duration) -> Result<(), u64> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let changed = self.sessions_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open_sessions() == n {
                return Ok(());
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                let open = self.open_sessions();
                return if open == n { Ok(()) } else { Err(open) };
            }
        }
    }

    /// The round-trip account of every target connection (mux: smux stream; basic: the
    /// session's connection), in the order they opened (the last 65 536 are kept). Its
    /// `client_flights` is how many times the client had to wait for the far side (a plain
    /// login through the proxy: 4). See [`StreamFlights`].
    pub fn stream_flights(&self) -> Vec<StreamFlights> {
        self.flights.snapshot()
    }

    /// Clears `peak_client_msgs_per_sec`, e.g. after a warm-up phase.
    pub fn reset_peak(&self) {
        self.peak_client_msgs_per_sec.store(0, Ordering::Relaxed);
    }

    fn session_opened(&self) {
        self.active_sessions.fetch_add(1, Ordering::SeqCst);
        self.sessions_changed.notify_waiters();
    }

    fn session_closed(&self) {
        self.active_sessions.fetch_sub(1, Ordering::SeqCst);
        self.sessions_changed.notify_waiters();
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the tests may ask about one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInfo {
    /// ClientId from the first OpenDataChannel, if the client sent one.
    pub client_id: Option<String>,
    /// ClientVersion from the HandshakeResponse, once received.
    pub client_version: Option<String>,
    /// Whether the agent chose mux (`Some`) once the handshake completed.
    pub mux: Option<bool>,
    /// Whether the agent's smux keepalive is on (mux only).
    pub agent_keepalive: Option<bool>,
    /// Set once the session is over, with the `channel_closed` Output text (may be empty).
    pub ended: Option<String>,
    // --- Failure-branch fields (the `faults` work). ---
    /// Handshake actions the client answered as unknown (see `extra_handshake_action`).
    pub declined_actions: Vec<String>,
}

/// A fault decision for one stream-data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Drop,
    Duplicate,
    Reorder,
}

/// State shared by the API server, the WebSocket connections and the session tasks.
struct Inner {
    /// Where the API and data channel listen.
    addr: SocketAddr,
    /// The only credentials the API accepts.
    credentials: SimCredentials,
    /// The region the endpoint is in; requests signed for another are refused like AWS does.
    region: String,
    /// `host` document parameter → where the "instance" actually dials.
    targets: HashMap<String, SocketAddr>,
    knobs: Arc<SsmSimKnobs>,
    stats: Arc<SsmSimStats>,
    /// Every session ever started, live or ended: ResumeSession must tell "over" from "unknown".
    sessions: Mutex<HashMap<String, Arc<agent::SessionShared>>>,
    /// Every stream token ever issued (StartSession and ResumeSession), so tests can assert
    /// that none of them shows up in logs.
    issued_tokens: Mutex<Vec<String>>,
    /// Fault RNG and the seed it was built from (reseeded when the knob changes).
    faults: Mutex<(u64, StdRng)>,
    /// Flipped once by [`SsmSim::stop`]; every task watches it.
    shutdown: watch::Sender<bool>,
}

impl Inner {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<agent::SessionShared>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn session(&self, id: &str) -> Option<Arc<agent::SessionShared>> {
        self.sessions().get(id).cloned()
    }

    /// Remembers a stream token handed to a client.
    fn record_token(&self, token: &str) {
        self.issued_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token.to_owned());
    }

    /// Rolls the fault for one stream-data message from the current rates.
    fn roll_fault(&self) -> Fault {
        let (seed, drop, dup, reorder) = self
            .knobs
            .read(|o| (o.seed, o.drop_rate, o.duplicate_rate, o.reorder_rate));
        if drop <= 0.0 && dup <= 0.0 && reorder <= 0.0 {
            return Fault::None;
        }
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        if faults.0 != seed {
            *faults = (seed, StdRng::seed_from_u64(seed));
        }
        let x: f64 = faults.1.random();
        let fault = if x < drop {
            Fault::Drop
        } else if x < drop + dup {
            Fault::Duplicate
        } else if x < drop + dup + reorder {
            Fault::Reorder
        } else {
            Fault::None
        };
        match fault {
            Fault::Drop => bump(&self.stats.messages_dropped),
            Fault::Duplicate => bump(&self.stats.messages_duplicated),
            Fault::Reorder => bump(&self.stats.messages_reordered),
            Fault::None => {}
        }
        fault
    }

    /// One network crossing's delay for something sent now: `latency` plus a random
    /// `0..=jitter` (zero without the knobs).
    fn one_way_delay(&self) -> Duration {
        let (latency, jitter) = self.knobs.read(|o| (o.latency, o.jitter));
        let base = latency.unwrap_or_default();
        match jitter {
            Some(jitter) if !jitter.is_zero() => base + jitter.mul_f64(rand::rng().random::<f64>()),
            _ => base,
        }
    }

    fn stream_url(&self, session_id: &str) -> String {
        format!(
            "ws://{}/v1/data-channel/{session_id}?role=publish_subscribe",
            self.addr
        )
    }
}

/// A running simulated SSM service. Dropping it stops it.
pub struct SsmSim {
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl SsmSim {
    /// Binds `127.0.0.1:0` and serves the API and data channel there. `targets` maps the `host`
    /// document parameter to the address the simulated instance dials for it; a host not in the
    /// map fails to dial, as an unreachable endpoint would.
    pub async fn start(
        options: SsmSimOptions,
        credentials: SimCredentials,
        region: &str,
        targets: HashMap<String, SocketAddr>,
    ) -> Result<SsmSim, SsmSimError> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(SsmSimError::Bind)?;
        let addr = listener.local_addr().map_err(SsmSimError::Bind)?;
        let seed = options.seed;
        let inner = Arc::new(Inner {
            addr,
            credentials,
            region: region.to_owned(),
            targets,
            knobs: Arc::new(SsmSimKnobs::new(options)),
            stats: Arc::default(),
            sessions: Mutex::default(),
            issued_tokens: Mutex::default(),
            faults: Mutex::new((seed, StdRng::seed_from_u64(seed))),
            shutdown: watch::Sender::new(false),
        });
        let server = tokio::spawn(api::serve(listener, inner.clone()));
        Ok(SsmSim { inner, server })
    }

    /// The API endpoint, for `AWS_ENDPOINT_URL_SSM` or an SDK endpoint override.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The listening address (API and data channel share it).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The managed node id StartSession accepts.
    pub fn target_id(&self) -> &str {
        SIM_TARGET_ID
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<SsmSimStats> {
        self.inner.stats.clone()
    }

    /// The knobs, changeable while sessions run.
    pub fn options(&self) -> Arc<SsmSimKnobs> {
        self.inner.knobs.clone()
    }

    /// What the simulator knows about one session, or `None` for an unknown id.
    pub fn session_info(&self, session_id: &str) -> Option<SessionInfo> {
        self.inner.session(session_id).map(|s| s.info())
    }

    /// Every stream token (TokenValue) issued so far, for tests that check logs for leaks.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner
            .issued_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The round-trip account of every target connection, in the order they opened: the same
    /// as [`SsmSimStats::stream_flights`].
    pub fn stream_flights(&self) -> Vec<StreamFlights> {
        self.inner.stats.stream_flights()
    }

    /// Ids of every session started so far, in no particular order.
    pub fn session_ids(&self) -> Vec<String> {
        self.inner.sessions().keys().cloned().collect()
    }

    /// Stops serving: the listener closes and every session ends (its WebSocket is closed).
    pub fn stop(&self) {
        self.inner.shutdown.send_replace(true);
        self.server.abort();
    }
}

impl Drop for SsmSim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Parses a duration flag: `250ms`, `5s`, `20m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 5s, 20m or 1h"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses a probability flag in `0..=1`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a probability between 0 and 1")),
    }
}

/// Parses the payload cap: 1 to 65535 bytes.
pub fn parse_payload_cap(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=65_535).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a payload size between 1 and 65535"
        )),
    }
}
