//! `--spare-connections N`: upstream connections opened and logged in ahead of time, so a client
//! whose StartupMessage matches one is served without a single tunnel round trip.
//!
//! **The key** is the exact StartupMessage the upstream saw (after `--db-user`): the protocol
//! version and every parameter in the client's order — user, database, application_name,
//! client_encoding, options, DateStyle, `_pq_.*`. Same bytes, same session: the server cannot tell
//! a spare from a connection opened for that client, so the client gets exactly what its own login
//! would have given it, the spare's AuthenticationOk, ParameterStatus set, BackendKeyData and
//! ReadyForQuery ([`Upstream::to_client`]), replayed. The proxy passes BackendKeyData through
//! unchanged ([`crate::cancel`]), so a CancelRequest with the spare's key reaches the spare's
//! backend with nothing to map. A client that sends parameters in another order, or any other
//! value, misses and logs in as usual.
//!
//! **Which keys**: only keys already seen. After a client with key K logs in, up to N spares for
//! K are opened in the background, and topped up again after each is used or discarded while K is
//! in use (a session with K is open, or K's last login was within `--spare-max-age`). At most
//! [`MAX_KEYS`] keys are kept — a developer's psql, an IDE's two connections, an application —
//! and the least recently logged-in one gives way, its spares closed, so the server connections
//! spares hold stay at most `MAX_KEYS × N`. A background login that fails is not retried until a
//! client logs in with that key again (no loop against a refusing server).
//!
//! **Each spare** is held by its own task, which waits on three things: the upstream becoming
//! readable — an idle backend sends nothing unless it is going away (FATAL from
//! pg_terminate_backend or a restart, EOF, a reset), so any byte or end discards the spare —;
//! its deadline (`--spare-max-age` from the start of its login, never past the IAM token's or
//! the AWS credentials' expiry, see [`crate::auth::IamAuth::token_valid_until`]), after which it
//! is closed with Terminate; and a hand-over request. Readability is polled first in the very
//! step that hands a spare over, so a spare known to be closed or past its age is never handed
//! out. Every spare is used once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::pg::startup::StartupMessage;
use crate::upstream::{self, Upstream, UpstreamContext};

/// The most keys spares are kept for (see the module docs).
pub const MAX_KEYS: usize = 4;
/// Most `--spare-connections`: each one is a server connection per key.
pub const MAX_PER_KEY: usize = 16;
/// `--spare-max-age` when not given.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Longest `--spare-max-age`: an RDS IAM token's life (a spare never outlives its token anyway).
pub const MAX_MAX_AGE: Duration = crate::auth::token::TOKEN_LIFETIME;
/// How long closing one spare (Terminate, TLS close_notify) may take.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);
/// PostgreSQL's Terminate message.
pub const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// `--spare-connections` and `--spare-max-age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpareSettings {
    /// Spares kept per key; 0 turns spares off.
    pub per_key: usize,
    /// The longest a spare is kept, from the start of its login.
    pub max_age: Duration,
}

impl Default for SpareSettings {
    fn default() -> Self {
        SpareSettings {
            per_key: 0,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

pub use crate::metrics::SpareMetrics;

/// The target whose spares these are, as the background logins reach it: to log in (the connect
/// side's [`UpstreamContext`]) and to hand a spare back to its [`Spares`]
/// ([`crate::target::TargetContext`] implements it).
pub trait SpareHost: UpstreamContext {
    fn spares(&self) -> &Spares;
}

/// The spares of one target. Lives in its [`TargetContext`]; the tasks that open and hold spares
/// reach it again through `ctx`, weakly, so a dropped context closes every spare.
#[derive(Debug)]
pub struct Spares {
    settings: SpareSettings,
    ctx: Option<Weak<dyn SpareHost>>,
    metrics: SpareMetrics,
    state: Mutex<State>,
    /// How many tasks own an upstream connection (opening or holding a spare): [`Spares::closed`]
    /// waits for none.
    tasks: Arc<watch::Sender<usize>>,
}

/// A clone is a new, empty set of spares with the same settings and metrics, attached to no
/// context (a cloned [`TargetContext`] is another context: its connections are its own, and it
/// opens no spares in the background).
impl Clone for Spares {
    fn clone(&self) -> Self {
        Spares::new(self.settings, None, self.metrics.clone())
    }
}

#[derive(Debug, Default)]
struct State {
    /// At most [`MAX_KEYS`]; a linear search is the fastest map at that size.
    keys: Vec<KeyState>,
    next_id: u64,
    /// Shutting down: nothing is opened or kept any more.
    closed: bool,
}

#[derive(Debug)]
struct KeyState {
    /// The key, and what the background logins send.
    startup: StartupMessage,
    /// Oldest first: it is the next to age, so it is the one handed out.
    ready: VecDeque<Ready>,
    /// Background logins under way.
    opening: usize,
    /// Client sessions with this key open now.
    sessions: usize,
    last_login: Instant,
    /// The last background login failed: none again until a client logs in with this key.
    open_failed: bool,
}

impl KeyState {
    fn in_use(&self, max_age: Duration) -> bool {
        self.sessions > 0 || self.last_login.elapsed() < max_age
    }
}

/// A spare handed to a client, and when its login began (its age counts from there:
/// `--max-connection-age`).
pub type Handed = (Upstream, Instant);

/// A spare held by its task; dropping this closes it.
struct Ready {
    id: u64,
    /// Send a reply channel here and the task answers with the connection.
    handoff: oneshot::Sender<oneshot::Sender<Handed>>,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why a held spare's task stopped waiting.
enum Exit {
    /// Data, EOF or an error on an idle upstream.
    Readable(std::io::Result<usize>),
    Aged,
    Take(oneshot::Sender<Handed>),
    /// The pool forgot it: its key gave way, or the proxy is closing.
    Dropped,
}

/// Counts one task that owns an upstream connection while it lives.
struct TaskGuard(Arc<watch::Sender<usize>>);

impl TaskGuard {
    fn new(tasks: &Arc<watch::Sender<usize>>) -> Self {
        tasks.send_modify(|n| *n += 1);
        TaskGuard(tasks.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Spares {
    /// Spares for the context `ctx` (built with [`Arc::new_cyclic`]).
    pub fn new(settings: SpareSettings, ctx: Option<Weak<dyn SpareHost>>, metrics: SpareMetrics) -> Self {
        Spares {
            settings,
            ctx,
            metrics,
            state: Mutex::new(State::default()),
            tasks: Arc::new(watch::channel(0).0),
        }
    }

    /// Spares ready to be handed out now, of every kind.
    pub fn ready(&self) -> usize {
        self.state().keys.iter().map(|k| k.ready.len()).sum()
    }

    pub fn enabled(&self) -> bool {
        self.settings.per_key > 0
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A spare logged in with exactly `startup`, taken for good, or `None` (a miss: log in as
    /// usual), with when its login began. Costs no upstream round trip.
    pub async fn take(&self, startup: &StartupMessage) -> Option<Handed> {
        if !self.enabled() {
            return None;
        }
        loop {
            let handoff = {
                let mut state = self.state();
                let Some(key) = state.keys.iter_mut().find(|k| k.startup.as_bytes() == startup.as_bytes()) else {
                    break;
                };
                let Some(ready) = key.ready.pop_front() else { break };
                self.count_ready(&state);
                ready.handoff
            };
            let (reply, answer) = oneshot::channel();
            if handoff.send(reply).is_err() {
                continue; // its task just ended (closed, aged): try the next one
            }
            if let Ok(handed) = answer.await {
                self.metrics.hits.inc();
                return Some(handed);
            }
        }
        self.metrics.misses.inc();
        None
    }

    /// Marks `startup`'s key in use while the lease lives (a client logged in with it) and tops
    /// its spares up in the background.
    pub fn lease(&self, startup: &StartupMessage) -> Lease<'_> {
        if !self.enabled() {
            return Lease { spares: self, key: None };
        }
        let mut state = self.state();
        if state.closed {
            return Lease { spares: self, key: None };
        }
        let i = match state.keys.iter().position(|k| k.startup.as_bytes() == startup.as_bytes()) {
            Some(i) => i,
            None => {
                if state.keys.len() >= MAX_KEYS {
                    self.evict_one(&mut state);
                }
                state.keys.push(KeyState {
                    startup: startup.clone(),
                    ready: VecDeque::new(),
                    opening: 0,
                    sessions: 0,
                    last_login: Instant::now(),
                    open_failed: false,
                });
                state.keys.len() - 1
            }
        };
        let key = &mut state.keys[i];
        key.sessions += 1;
        key.last_login = Instant::now();
        key.open_failed = false;
        self.top_up(&mut state, i);
        Lease {
            spares: self,
            key: Some(startup.clone()),
        }
    }

    /// Drops the key to give way: the one without sessions logged in longest ago, else the one
    /// logged in longest ago. Its spares close (their tasks see the hand-over channel dropped).
    fn evict_one(&self, state: &mut State) {
        let oldest = state
            .keys
            .iter()
            .enumerate()
            .min_by_key(|(_, k)| (k.sessions > 0, k.last_login))
            .map(|(i, _)| i);
        if let Some(i) = oldest {
            let gone = state.keys.remove(i);
            self.metrics.evicted.inc_by(gone.ready.len() as u64);
            tracing::debug!(db_user = %gone.startup.user(), database = %gone.startup.database(), spares = gone.ready.len(), "spare connections: a newer kind of client takes this one's place; its spares close");
            self.count_ready(state);
        }
    }

    /// Starts background logins until key `i` has its N spares (ready or opening), if it is in
    /// use and its last background login did not fail.
    fn top_up(&self, state: &mut State, i: usize) {
        if state.closed {
            return;
        }
        let Some(ctx) = self.ctx.as_ref().and_then(Weak::upgrade) else { return };
        let key = &mut state.keys[i];
        if key.open_failed || !key.in_use(self.settings.max_age) {
            return;
        }
        let want = self.settings.per_key.saturating_sub(key.ready.len() + key.opening);
        for _ in 0..want {
            key.opening += 1;
            let guard = TaskGuard::new(&self.tasks);
            tokio::spawn(open_and_hold(ctx.clone(), key.startup.clone(), guard));
        }
    }

    /// A background login ended: `Some` spare to keep (its id and hand-over channel), or `None`
    /// when it failed or is no longer wanted.
    fn opened(&self, startup: &StartupMessage, ok: bool) -> Option<(u64, oneshot::Receiver<oneshot::Sender<Handed>>)> {
        let mut state = self.state();
        let closed = state.closed;
        let id = state.next_id;
        let i = state.keys.iter().position(|k| k.startup.as_bytes() == startup.as_bytes())?;
        let key = &mut state.keys[i];
        key.opening = key.opening.saturating_sub(1);
        if !ok {
            key.open_failed = true;
            return None;
        }
        if closed {
            return None;
        }
        let (handoff, requests) = oneshot::channel();
        key.ready.push_back(Ready { id, handoff });
        state.next_id += 1;
        self.metrics.opened.inc();
        self.count_ready(&state);
        Some((id, requests))
    }

    /// A held spare `id` is gone (aged, dead): forget it and top its key up.
    fn forget(&self, startup: &StartupMessage, id: u64) {
        let mut state = self.state();
        if let Some(i) = state.keys.iter().position(|k| k.startup.as_bytes() == startup.as_bytes()) {
            state.keys[i].ready.retain(|r| r.id != id);
            self.count_ready(&state);
            self.top_up(&mut state, i);
        }
    }

    fn count_ready(&self, state: &State) {
        let ready: usize = state.keys.iter().map(|k| k.ready.len()).sum();
        self.metrics.ready.set(i64::try_from(ready).unwrap_or(i64::MAX));
    }

    /// Stops keeping spares (shutdown): nothing opens any more and every held spare closes with
    /// Terminate. [`Spares::closed`] waits for that.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.keys.clear();
        self.count_ready(&state);
    }

    /// Resolves once no task holds or opens an upstream connection (after [`Spares::close`]).
    pub async fn closed(&self) {
        let mut rx = self.tasks.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// A client session's hold on its key (see [`Spares::lease`]).
pub struct Lease<'a> {
    spares: &'a Spares,
    key: Option<StartupMessage>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(startup) = &self.key else { return };
        let mut state = self.spares.state();
        if let Some(key) = state.keys.iter_mut().find(|k| k.startup.as_bytes() == startup.as_bytes()) {
            key.sessions = key.sessions.saturating_sub(1);
        }
    }
}

/// One background login, then (if it worked and is still wanted) holding the spare until it is
/// taken, ages or dies.
async fn open_and_hold(ctx: Arc<dyn SpareHost>, startup: StartupMessage, _guard: TaskGuard) {
    let started = Instant::now();
    let token_request = ctx.passwords().known(&startup.user()).is_none().then(|| ctx.token_request(&startup.user()));
    let valid_before = token_request.as_ref().and_then(|r| ctx.auth().token_valid_until(r));
    let connected = upstream::connect(&*ctx, &startup).await;
    let valid_after = token_request.as_ref().and_then(|r| ctx.auth().token_valid_until(r));
    let upstream = match connected {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!(db_user = %startup.user(), database = %startup.database(), error = crate::errors::display_chain(&e), "could not open a spare connection; none for these parameters until a client logs in with them again");
            ctx.spares().opened(&startup, false);
            return;
        }
    };
    // The token this login used is the one cached before it (if it was still reusable) or one
    // minted during it; the earlier of the two ends is never later than the real one.
    let mut deadline = started + ctx.spares().settings.max_age;
    if let Some(until) = [valid_before, valid_after].into_iter().flatten().min() {
        let left = until.duration_since(SystemTime::now()).unwrap_or_default();
        deadline = deadline.min(Instant::now() + left);
    }
    let Some((id, requests)) = ctx.spares().opened(&startup, true) else {
        terminate(upstream).await;
        return;
    };
    tracing::debug!(db_user = %startup.user(), database = %startup.database(), login_ms = started.elapsed().as_millis() as u64, keep_s = deadline.saturating_duration_since(Instant::now()).as_secs(), "spare connection ready");
    let ctx = Arc::downgrade(&ctx);
    hold(ctx, startup, id, (upstream, started), deadline, requests).await;
}

/// Holds one spare (see the module docs), without keeping the target's context alive.
async fn hold(
    ctx: Weak<dyn SpareHost>,
    startup: StartupMessage,
    id: u64,
    (mut upstream, started): Handed,
    deadline: Instant,
    mut requests: oneshot::Receiver<oneshot::Sender<Handed>>,
) {
    let exit = {
        let mut probe = [0u8; 1];
        tokio::select! {
            biased;
            read = upstream.stream.read(&mut probe) => Exit::Readable(read),
            () = tokio::time::sleep_until(deadline) => Exit::Aged,
            request = &mut requests => request.map_or(Exit::Dropped, Exit::Take),
        }
    };
    let reason = match exit {
        Exit::Take(reply) => {
            tracing::debug!(db_user = %startup.user(), database = %startup.database(), "spare connection handed to a client");
            if let Err((upstream, _)) = reply.send((upstream, started)) {
                terminate(upstream).await; // the client left while asking
            }
            return;
        }
        Exit::Dropped => {
            terminate(upstream).await;
            return;
        }
        Exit::Aged => "its age limit passed",
        Exit::Readable(Ok(0)) => "the server closed it",
        Exit::Readable(Ok(_)) => "the server sent a message to an idle connection",
        Exit::Readable(Err(_)) => "the connection failed",
    };
    let aged = matches!(exit, Exit::Aged);
    let Some(ctx) = ctx.upgrade() else {
        terminate(upstream).await;
        return;
    };
    let spares = ctx.spares();
    let counter = if aged { &spares.metrics.aged } else { &spares.metrics.dead };
    counter.inc();
    tracing::debug!(db_user = %startup.user(), database = %startup.database(), reason, "spare connection discarded");
    spares.forget(&startup, id);
    drop(ctx);
    terminate(upstream).await;
}

/// Closes a spare cleanly: Terminate, then TLS close_notify and FIN; bounded, best effort.
async fn terminate(mut upstream: Upstream) {
    let _ = tokio::time::timeout(CLOSE_LIMIT, async {
        upstream.stream.write_all(&TERMINATE).await?;
        upstream.stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::startup::{encode_startup, parse_first_packet, FirstPacket};

    fn startup(app: &str) -> StartupMessage {
        let packet = encode_startup(3, 0, &[("user", "u"), ("database", "d"), ("application_name", app)]);
        match parse_first_packet(packet) {
            Ok(FirstPacket::Startup(s)) => s,
            other => panic!("not a startup: {other:?}"),
        }
    }

    /// Spares with no context to open anything with: the bookkeeping alone.
    fn spares(per_key: usize) -> Spares {
        let settings = SpareSettings { per_key, max_age: DEFAULT_MAX_AGE };
        Spares::new(settings, None, SpareMetrics::default())
    }

    fn keys(s: &Spares) -> Vec<(String, usize)> {
        s.state()
            .keys
            .iter()
            .map(|k| (String::from_utf8_lossy(k.startup.param("application_name").unwrap_or_default()).into_owned(), k.sessions))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_capped_and_the_least_recent_idle_one_gives_way() {
        let s = spares(1);
        let a = s.lease(&startup("a"));
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(s.lease(&startup("b")));
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(s.lease(&startup("c")));
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(s.lease(&startup("d")));
        assert_eq!(keys(&s).len(), MAX_KEYS);
        // "a" is the oldest but has a session open: "b" gives way.
        let _e = s.lease(&startup("e"));
        assert_eq!(keys(&s), [("a".into(), 1), ("c".into(), 0), ("d".into(), 0), ("e".into(), 1)]);
        drop(a);
        assert_eq!(keys(&s)[0], ("a".into(), 0), "the lease ends with its session");
    }

    #[tokio::test]
    async fn off_or_closed_keeps_nothing_and_takes_nothing() {
        let off = spares(0);
        let _lease = off.lease(&startup("a"));
        assert!(keys(&off).is_empty());
        assert!(off.take(&startup("a")).await.is_none());
        assert_eq!(off.metrics.misses.get(), 0, "no misses counted while off");

        let on = spares(2);
        drop(on.lease(&startup("a")));
        assert!(on.take(&startup("a")).await.is_none());
        assert!(on.take(&startup("b")).await.is_none());
        assert_eq!(on.metrics.misses.get(), 2);
        on.close();
        let _lease = on.lease(&startup("a"));
        assert!(keys(&on).is_empty(), "nothing kept after close");
        on.closed().await;
    }
}
