//! The byte relay after authentication: client ⇄ upstream, unchanged, until both directions end.
//!
//! Unlike `tokio::io::copy_bidirectional`, an error in one direction does not abort the other:
//! when the upstream sends a final ErrorResponse and closes while the client is still writing,
//! the client's write fails but the final bytes still reach it. It also records who closed first,
//! for the log line.
//!
//! A drain ([`relay_until`]) stops it between two server messages: the server → client direction
//! follows PostgreSQL's framing (type byte, length) so that the proxy's own ErrorResponse
//! (57P01) can follow without cutting a message in half.
//!
//! An age limit ([`relay_with`], `--max-connection-age`) uses the same framing: the proxy's
//! NoticeResponse goes between two server messages, and the end comes at the first idle moment
//! — the server has answered every request with ReadyForQuery and the client has started
//! nothing since, which the client → server direction is framed for — or at the limit itself.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection_age::AgeLimit;

/// 64 KiB per direction: COPY moves large chunks and 8 KiB would cost syscalls.
const BUF_SIZE: usize = 64 * 1024;

/// Which side ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    Client,
    Upstream,
    /// The proxy, at the end of a drain (shutdown).
    Drain,
    /// The proxy, at `--max-connection-age` (or the upstream, at a message boundary, once the
    /// end was due).
    MaxAge,
}

impl std::fmt::Display for ClosedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
            ClosedBy::Drain => "drain",
            ClosedBy::MaxAge => "max_age",
        })
    }
}

/// Counters that move as bytes are written, not when the connection ends: a client such as
/// DBeaver keeps one connection for hours, and a scrape must see its traffic meanwhile.
#[derive(Debug, Clone, Default)]
pub struct Meters {
    pub to_upstream: Option<Counter>,
    pub to_client: Option<Counter>,
}

/// What happened during relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    /// Who ended first (EOF or error on reading that side).
    pub closed_by: Option<ClosedBy>,
    /// The first error on the client side, if any.
    pub client_error: Option<io::Error>,
    /// The first error on the upstream side, if any.
    pub upstream_error: Option<io::Error>,
    /// With an age limit: the client → upstream direction stopped between two messages with
    /// nothing held, so a Terminate may follow.
    pub upstream_at_boundary: bool,
}

/// Where a byte stream of PostgreSQL messages (type byte, then a length that counts itself) is
/// between message boundaries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Framer {
    /// Header bytes of the current message seen so far (0 = at a boundary, or in a body).
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come.
    body_left: u64,
    /// Whose messages these are: what `syncs` counts.
    client: bool,
    /// The type of the last message that answers something: on the server's side NOTICE,
    /// NOTIFY and ParameterStatus, which may come at any time, do not count.
    answer: u8,
    /// Messages seen that close a request/response cycle: from the server ReadyForQuery; from
    /// the client Query, Sync and FunctionCall, which the server answers with one ReadyForQuery
    /// each.
    syncs: u64,
}

impl Framer {
    /// Follows `bytes` as they pass.
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = bytes.len().min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                self.body_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = bytes.len().min(5 - self.header_len);
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 5 {
                let len = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                // A length below 4 is invalid; the server would not send it. Treat it as an
                // empty body so a bad stream cannot wedge the framer.
                self.body_left = u64::from(len.saturating_sub(4));
                self.header_len = 0;
                let closes = if self.client { matches!(self.header[0], b'Q' | b'S' | b'F') } else { self.header[0] == b'Z' };
                self.syncs += u64::from(closes);
                if self.client || !matches!(self.header[0], b'N' | b'A' | b'S') {
                    self.answer = self.header[0];
                }
            }
        }
    }

    /// The client's side of the stream.
    fn client() -> Self {
        Framer {
            client: true,
            ..Framer::default()
        }
    }

    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0
    }

    /// The type of the last message, at a boundary after one.
    fn last_type(&self) -> Option<u8> {
        (self.at_boundary() && self.header[0] != 0).then_some(self.header[0])
    }

    /// The type of the last message that answers something (see `answer`), at a boundary.
    fn last_answer(&self) -> Option<u8> {
        (self.at_boundary() && self.answer != 0).then_some(self.answer)
    }

    /// Most bytes to read without passing the end of the current message (`None` at a boundary).
    fn until_boundary(&self) -> Option<usize> {
        if self.body_left > 0 {
            Some(usize::try_from(self.body_left).unwrap_or(usize::MAX))
        } else if self.header_len > 0 {
            Some(5 - self.header_len)
        } else {
            None
        }
    }
}

/// One direction: read from one side, write to the other.
///
/// An idle connection holds no buffer: each read lands in a 64 KiB scratch array on the
/// polling thread's stack and is written on at once, which is all a request/response exchange
/// ever needs. Only when the writer pushes back does the rest move to a heap buffer of its own
/// ([`Half::held`]), read into directly while the transfer stays busy (COPY) and released as
/// soon as the reader has nothing more (PostgreSQL clients idle for hours; two 64 KiB buffers
/// per connection were most of the proxy's memory per idle connection).
struct Half {
    /// Bytes read but not written yet (`held[pos..cap]`); `None` while the direction is idle.
    held: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read_done: bool,
    done: bool,
    need_flush: bool,
    bytes: u64,
    /// Also counts `bytes`, live.
    meter: Option<Counter>,
    /// Message boundaries of what was read (server → client only).
    framer: Option<Framer>,
    /// Stop at the next message boundary, without shutting the writer down.
    draining: bool,
    /// `framer` as it was before the chunk now in `buf` was read, so a cut can find the
    /// message boundaries inside it.
    chunk_start: Option<Framer>,
    /// A message of the proxy's own to write at the next message boundary of what is read
    /// (then it is held like read bytes, in a buffer of its own size).
    inject: Option<Box<[u8]>>,
    /// An end of the reader at a message boundary (EOF, or an error: a TLS peer gone without
    /// close_notify) leaves the writer open ([`HalfEnd::EofAtBoundary`]), for the caller's last
    /// words.
    keep_writer_at_eof: bool,
}

enum HalfEnd {
    /// Reader hit EOF and the writer was shut down.
    Eof,
    ReadError(io::Error),
    WriteError(io::Error),
    /// Drained: everything read was written and flushed, and it ended on a message boundary.
    Drained,
    /// The reader ended (EOF, or the read error here) at a message boundary; everything was
    /// written (and after an EOF flushed; after an error the caller's last words flush it), and
    /// the writer is still open (`keep_writer_at_eof`).
    EofAtBoundary(Option<io::Error>),
}

impl Half {
    fn new() -> Self {
        Half {
            held: None,
            pos: 0,
            cap: 0,
            read_done: false,
            done: false,
            need_flush: false,
            bytes: 0,
            meter: None,
            framer: None,
            draining: false,
            chunk_start: None,
            inject: None,
            keep_writer_at_eof: false,
        }
    }

    fn framed() -> Self {
        Half {
            framer: Some(Framer::default()),
            ..Half::new()
        }
    }

    /// Counts `n` bytes written.
    fn wrote(&mut self, n: usize) {
        self.bytes += n as u64;
        if let Some(meter) = &self.meter {
            meter.inc_by(n as u64);
        }
        self.need_flush = true;
    }

    /// Most bytes the next read may take (draining, or a message to inject: never past the end
    /// of the current message).
    fn room(&self) -> usize {
        match &self.framer {
            Some(f) if self.draining => f.until_boundary().unwrap_or(0).min(BUF_SIZE),
            Some(f) if self.inject.is_some() => f.until_boundary().unwrap_or(BUF_SIZE).min(BUF_SIZE),
            _ => BUF_SIZE,
        }
    }

    // Not inlined: the scratch array then takes 64 KiB of stack once, not once per direction.
    #[inline(never)]
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<HalfEnd>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let mut scratch = [MaybeUninit::<u8>::uninit(); BUF_SIZE];
        loop {
            if self.pos < self.cap {
                let held = self.held.as_deref().expect("bytes held in a buffer");
                match ready!(writer.as_mut().poll_write(cx, &held[self.pos..self.cap])) {
                    Ok(0) => return Poll::Ready(HalfEnd::WriteError(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.pos += n;
                        self.wrote(n);
                    }
                    Err(e) => return Poll::Ready(HalfEnd::WriteError(e)),
                }
                continue;
            }
            if self.inject.is_some() && self.framer.as_ref().is_some_and(|f| f.until_boundary().is_none()) {
                // Between two messages: the proxy's own goes out first, as if it had been read.
                if let Some(message) = self.inject.take() {
                    self.chunk_start = self.framer.clone();
                    self.pos = 0;
                    self.cap = message.len();
                    self.held = Some(message);
                    continue;
                }
            }
            if self.draining && !self.read_done {
                let limit = match &self.framer {
                    Some(f) => f.until_boundary(),
                    None => None,
                };
                if limit.is_none() {
                    if self.need_flush {
                        if let Err(e) = ready!(writer.as_mut().poll_flush(cx)) {
                            return Poll::Ready(HalfEnd::WriteError(e));
                        }
                        self.need_flush = false;
                    }
                    return Poll::Ready(HalfEnd::Drained);
                }
            }
            if !self.read_done {
                let room = self.room();
                // (A buffer of another size held an injected message: reads use a full one.)
                let read = match self.held.take().filter(|held| held.len() == BUF_SIZE) {
                    // Busy (the writer pushed back before): read straight into the held buffer.
                    Some(mut held) => {
                        let mut rb = ReadBuf::new(&mut held[..room]);
                        let read = reader.as_mut().poll_read(cx, &mut rb);
                        let n = rb.filled().len();
                        if let Some(f) = &mut self.framer {
                            self.chunk_start = Some(f.clone());
                            f.advance(&held[..n]);
                        }
                        if matches!(read, Poll::Ready(Ok(()))) && n > 0 {
                            self.pos = 0;
                            self.cap = n;
                            self.held = Some(held);
                            continue;
                        }
                        // Nothing more to read for now (or the end): the buffer goes.
                        read
                    }
                    None => {
                        let mut rb = ReadBuf::uninit(&mut scratch[..room]);
                        let read = reader.as_mut().poll_read(cx, &mut rb);
                        let data = rb.filled();
                        // The framer before this read, for `chunk_start` if some of it is held.
                        let before = self.framer.clone();
                        if let Some(f) = &mut self.framer {
                            f.advance(data);
                        }
                        if matches!(read, Poll::Ready(Ok(()))) && !data.is_empty() {
                            let mut written = 0;
                            while written < data.len() {
                                match writer.as_mut().poll_write(cx, &data[written..]) {
                                    Poll::Ready(Ok(0)) => {
                                        return Poll::Ready(HalfEnd::WriteError(io::ErrorKind::WriteZero.into()))
                                    }
                                    Poll::Ready(Ok(k)) => {
                                        written += k;
                                        self.wrote(k);
                                    }
                                    Poll::Ready(Err(e)) => return Poll::Ready(HalfEnd::WriteError(e)),
                                    Poll::Pending => {
                                        // The writer pushed back: keep the rest until it takes it.
                                        let rest = &data[written..];
                                        let mut held = vec![0; BUF_SIZE].into_boxed_slice();
                                        held[..rest.len()].copy_from_slice(rest);
                                        self.pos = 0;
                                        self.cap = rest.len();
                                        self.held = Some(held);
                                        self.chunk_start = before.map(|mut f| {
                                            f.advance(&data[..written]);
                                            f
                                        });
                                        return Poll::Pending;
                                    }
                                }
                            }
                            continue;
                        }
                        read
                    }
                };
                match read {
                    Poll::Ready(Ok(())) => {
                        // Zero bytes with room to read: the end.
                        self.read_done = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) if self.keeps_writer_at_eof() => {
                        return Poll::Ready(HalfEnd::EofAtBoundary(Some(e)));
                    }
                    Poll::Ready(Err(e)) => {
                        // Still tell the other side we are done writing to it.
                        let _ = writer.as_mut().poll_shutdown(cx);
                        return Poll::Ready(HalfEnd::ReadError(e));
                    }
                    Poll::Pending => {
                        // Nothing more to read for now: push out what was written (TLS buffers).
                        if self.need_flush {
                            if let Err(e) = ready!(writer.as_mut().poll_flush(cx)) {
                                return Poll::Ready(HalfEnd::WriteError(e));
                            }
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.keeps_writer_at_eof() {
                if self.need_flush {
                    if let Err(e) = ready!(writer.as_mut().poll_flush(cx)) {
                        return Poll::Ready(HalfEnd::WriteError(e));
                    }
                    self.need_flush = false;
                }
                return Poll::Ready(HalfEnd::EofAtBoundary(None));
            }
            return match ready!(writer.as_mut().poll_shutdown(cx)) {
                Ok(()) => Poll::Ready(HalfEnd::Eof),
                Err(e) => Poll::Ready(HalfEnd::WriteError(e)),
            };
        }
    }
}

impl Half {
    /// Whether an end of the reader now leaves the writer open: asked for, at a message
    /// boundary, and the last message not an ErrorResponse (the server said why itself).
    fn keeps_writer_at_eof(&self) -> bool {
        self.keep_writer_at_eof && self.framer.as_ref().is_some_and(|f| f.at_boundary() && f.last_type() != Some(b'E'))
    }

    /// Stops reading: what is left to write is shortened to end on the first message boundary
    /// at or after what the client already got, so the caller's ErrorResponse can follow.
    /// False when the current message does not end inside what was read (it cannot be
    /// completed without reading more).
    fn cut_at_boundary(&mut self) -> bool {
        let Some(framer) = &self.framer else {
            return false;
        };
        if self.pos >= self.cap {
            let at_boundary = framer.until_boundary().is_none();
            self.draining |= at_boundary;
            return at_boundary;
        }
        let (Some(mut f), Some(buf)) = (self.chunk_start.clone(), self.held.as_deref()) else {
            return false;
        };
        f.advance(&buf[..self.pos]);
        let mut at = self.pos;
        while let Some(k) = f.until_boundary() {
            let end = at.saturating_add(k);
            if end > self.cap {
                return false;
            }
            f.advance(&buf[at..end]);
            at = end;
        }
        self.cap = at;
        self.framer = Some(f);
        self.draining = true;
        true
    }
}

/// Relays until both directions are done.
pub async fn relay<C, U>(client: &mut C, upstream: &mut U) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    relay_until(client, upstream, &[], std::future::pending(), Meters::default()).await
}

/// Relays until both directions are done, or until `drain` resolves: then the client's input is
/// no longer forwarded, the server's output up to the end of its current message is, and the
/// relay returns with [`ClosedBy::Drain`] and the client's side still open (for a last
/// ErrorResponse).
///
/// `already_sent`: what the client got from the server before the relay (it starts on a message
/// boundary and may end inside a message). `meters` count each direction as bytes are written.
pub async fn relay_until<C, U>(
    client: &mut C,
    upstream: &mut U,
    already_sent: &[u8],
    drain: impl std::future::Future<Output = ()>,
    meters: Meters,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    relay_until_or_cut(client, upstream, already_sent, drain, std::future::pending(), meters).await
}

/// [`relay_until`], and when `cut` resolves the upstream is given up (the tunnel reset it): the
/// client's input is no longer forwarded, and the client gets what the proxy holds for it only
/// up to the end of the message it is in the middle of (read from the upstream only if that
/// message goes on past what was read). Then the relay returns with [`ClosedBy::Drain`] and the
/// client's side still open for a last ErrorResponse — or, when the upstream no longer has the
/// rest of that message, with an upstream read error (nothing can follow half a message).
pub async fn relay_until_or_cut<C, U>(
    client: &mut C,
    upstream: &mut U,
    already_sent: &[u8],
    drain: impl std::future::Future<Output = ()>,
    cut: impl std::future::Future<Output = ()>,
    meters: Meters,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let stops = Stops {
        drain,
        cut,
        age: None,
        noticed: || {},
    };
    relay_with(client, upstream, already_sent, stops, meters).await
}

/// What may end a relay besides its two sides.
pub struct Stops<D, X, N> {
    /// Resolves when the drain window is over (see [`relay_until`]).
    pub drain: D,
    /// Resolves when the tunnel gave the upstream up (see [`relay_until_or_cut`]).
    pub cut: X,
    /// `--max-connection-age`: at [`AgeLimit::notice_at`] the client gets [`AgeLimit::notice`]
    /// between two server messages (and `noticed` is called); from [`AgeLimit::cut_at`] the
    /// relay stops at the first idle moment — every request answered by a ReadyForQuery the
    /// client has, nothing started since — and at [`AgeLimit::end_at`] at the next server
    /// message boundary, like a drain; an upstream EOF at a boundary once the stop is due ends
    /// it too. Then it returns with [`ClosedBy::MaxAge`] and the client's side still open.
    pub age: Option<AgeLimit>,
    pub noticed: N,
}

/// Where a connection is in its age limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum AgePhase {
    Young,
    /// The notice is sent (or waits for a boundary).
    Noticed,
    /// Stops at the first idle moment.
    Cutting,
    /// Stopping at the next boundary.
    Ending,
}

/// Whether nothing is under way: the server answered every request with a ReadyForQuery the
/// client has (a NOTIFY or NOTICE since changes nothing), and the client has started nothing since (no Parse, Bind, Describe, Execute,
/// Close or Flush waiting for a Sync, no half message).
fn idle(c2u: &Half, u2c: &Half) -> bool {
    let (Some(to_upstream), Some(to_client)) = (&c2u.framer, &u2c.framer) else {
        return false;
    };
    c2u.pos >= c2u.cap
        && u2c.pos >= u2c.cap
        && u2c.inject.is_none()
        && to_client.last_answer() == Some(b'Z')
        && to_upstream.at_boundary()
        && !matches!(to_upstream.last_type(), Some(b'P' | b'B' | b'D' | b'E' | b'C' | b'H'))
        && to_upstream.syncs == to_client.syncs
}

/// The relay with every way it can stop ([`Stops`]).
pub async fn relay_with<C, U, D, X, N>(
    client: &mut C,
    upstream: &mut U,
    already_sent: &[u8],
    stops: Stops<D, X, N>,
    meters: Meters,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    D: std::future::Future<Output = ()>,
    X: std::future::Future<Output = ()>,
    N: FnMut(),
{
    let Stops {
        drain,
        cut,
        age,
        mut noticed,
    } = stops;
    let mut c2u = Half {
        meter: meters.to_upstream,
        // Framed only to tell when the connection is idle.
        framer: age.map(|_| Framer::client()),
        ..Half::new()
    };
    let mut u2c = Half {
        meter: meters.to_client,
        ..Half::framed()
    };
    if let Some(f) = &mut u2c.framer {
        f.advance(already_sent);
        // The login's ReadyForQuery answered no request of the relay's.
        f.syncs = 0;
    }
    let mut stats = RelayStats::default();
    let mut drain = std::pin::pin!(drain);
    let mut draining = false;
    let mut cut = std::pin::pin!(cut);
    let mut cutting = false;
    let mut phase = AgePhase::Young;
    // Boxed: a connection without a limit carries no timer.
    let mut timer = age.map(|a| Box::pin(tokio::time::sleep_until(a.notice_at())));
    // Why the proxy stopped the relay, if it did.
    let mut stop: Option<ClosedBy> = None;
    poll_fn(|cx| {
        if let (Some(limit), Some(t)) = (&age, timer.as_mut()) {
            while phase < AgePhase::Ending && std::future::Future::poll(t.as_mut(), cx).is_ready() {
                match phase {
                    AgePhase::Young => {
                        phase = AgePhase::Noticed;
                        t.as_mut().reset(limit.cut_at());
                        if stop.is_none() && !u2c.done {
                            u2c.inject = Some(limit.notice().to_vec().into_boxed_slice());
                            noticed();
                        }
                    }
                    AgePhase::Noticed => {
                        phase = AgePhase::Cutting;
                        t.as_mut().reset(limit.end_at());
                        u2c.keep_writer_at_eof = stop.is_none();
                    }
                    AgePhase::Cutting | AgePhase::Ending => {
                        phase = AgePhase::Ending;
                        if stop.is_none() {
                            stop = Some(ClosedBy::MaxAge);
                            draining = true;
                            c2u.done = true;
                            u2c.draining = true;
                            if !u2c.done {
                                stats.closed_by.get_or_insert(ClosedBy::MaxAge);
                            }
                        }
                    }
                }
            }
        }
        if !cutting && cut.as_mut().poll(cx).is_ready() {
            cutting = true;
            draining = true;
            stop.get_or_insert(ClosedBy::Drain);
            c2u.done = true;
            if !u2c.done && !u2c.cut_at_boundary() {
                // The message goes on past what was read: read up to its end, if the upstream
                // still has it; if not, the half ends with a read error (no ErrorResponse can
                // follow half a message).
                u2c.draining = true;
            }
        }
        if !draining && drain.as_mut().poll(cx).is_ready() {
            draining = true;
            stop.get_or_insert(ClosedBy::Drain);
            c2u.done = true;
            u2c.draining = true;
            if !u2c.done {
                stats.closed_by.get_or_insert(ClosedBy::Drain);
            }
        }
        if !c2u.done {
            if let Poll::Ready(end) = c2u.poll_copy(cx, Pin::new(&mut *client), Pin::new(&mut *upstream)) {
                c2u.done = true;
                let by = match end {
                    HalfEnd::Eof => ClosedBy::Client,
                    HalfEnd::Drained | HalfEnd::EofAtBoundary(_) => ClosedBy::Drain,
                    HalfEnd::ReadError(e) => {
                        stats.client_error.get_or_insert(e);
                        ClosedBy::Client
                    }
                    HalfEnd::WriteError(e) => {
                        stats.upstream_error.get_or_insert(e);
                        ClosedBy::Upstream
                    }
                };
                stats.closed_by.get_or_insert(by);
            }
        }
        // Twice at most: once more when the connection turns out idle after a stop was due.
        loop {
            if !u2c.done {
                if let Poll::Ready(end) = u2c.poll_copy(cx, Pin::new(&mut *upstream), Pin::new(&mut *client)) {
                    u2c.done = true;
                    let by = match end {
                        HalfEnd::Eof => ClosedBy::Upstream,
                        HalfEnd::Drained => stop.unwrap_or(ClosedBy::Drain),
                        HalfEnd::EofAtBoundary(error) => {
                            // The upstream ended it (Aurora DSQL does, without a word) once the
                            // proxy would have: the client is told as if the proxy had.
                            if let Some(e) = error {
                                stats.upstream_error.get_or_insert(e);
                            }
                            c2u.done = true;
                            *stop.get_or_insert(ClosedBy::MaxAge)
                        }
                        HalfEnd::ReadError(e) => {
                            stats.upstream_error.get_or_insert(e);
                            ClosedBy::Upstream
                        }
                        HalfEnd::WriteError(e) => {
                            stats.client_error.get_or_insert(e);
                            ClosedBy::Client
                        }
                    };
                    stats.closed_by.get_or_insert(by);
                }
            }
            if phase >= AgePhase::Cutting && stop.is_none() && !c2u.done && !u2c.done && idle(&c2u, &u2c) {
                stop = Some(ClosedBy::MaxAge);
                draining = true;
                c2u.done = true;
                u2c.draining = true;
                continue;
            }
            break;
        }
        if c2u.done && u2c.done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    stats.client_to_upstream = c2u.bytes;
    stats.upstream_to_client = u2c.bytes;
    stats.upstream_at_boundary = c2u.pos >= c2u.cap && c2u.framer.as_ref().is_some_and(Framer::at_boundary);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_reports_the_client_closing() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_upstream, mut upstream) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { relay(&mut proxy_client, &mut proxy_upstream).await });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        upstream.write_all(b"bye").await.unwrap();
        upstream.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let stats = relay.await.unwrap();
        assert_eq!(stats.client_to_upstream, 200_000);
        assert_eq!(stats.upstream_to_client, 3);
        assert_eq!(stats.closed_by, Some(ClosedBy::Client));
        assert!(stats.client_error.is_none() && stats.upstream_error.is_none());
    }

    #[tokio::test]
    async fn meters_move_while_the_connection_is_still_open() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1 << 16);
        let (mut proxy_upstream, mut upstream) = tokio::io::duplex(1 << 16);
        let meters = Meters {
            to_upstream: Some(Counter::default()),
            to_client: Some(Counter::default()),
        };
        let (to_upstream, to_client) = (meters.to_upstream.clone().unwrap(), meters.to_client.clone().unwrap());
        let relay = tokio::spawn(async move {
            relay_until(&mut proxy_client, &mut proxy_upstream, &[], std::future::pending(), meters).await
        });
        client.write_all(&[7; 5000]).await.unwrap();
        let mut got = vec![0; 5000];
        upstream.read_exact(&mut got).await.unwrap();
        // Both ends still open: the bytes are counted already.
        assert_eq!(to_upstream.get(), 5000);
        upstream.write_all(b"Z\0\0\0\x05I").await.unwrap();
        let mut back = [0; 6];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(to_client.get(), 6);
        assert!(!relay.is_finished());
        client.shutdown().await.unwrap();
        drop(upstream);
        let stats = relay.await.unwrap();
        // The live count and the final count agree: nothing counted twice.
        assert_eq!((stats.client_to_upstream, stats.upstream_to_client), (to_upstream.get(), to_client.get()));
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer_and_a_pushed_back_one_keeps_every_byte() {
        // The half is polled by hand from this task, which also awaits the far ends: without
        // tokio's cooperative budget, a budget spent on those polls cannot stall the test.
        tokio::task::unconstrained(async {
            let (mut client, mut proxy_client) = tokio::io::duplex(1 << 20);
            // A 1 KiB pipe upstream: a 200 000-byte write pushes back at once.
            let (mut proxy_upstream, mut upstream) = tokio::io::duplex(1024);
            let mut half = Half::new();
            let mut poll = |half: &mut Half| {
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                half.poll_copy(&mut cx, Pin::new(&mut proxy_client), Pin::new(&mut proxy_upstream))
            };
            // Idle: nothing to read, nothing held.
            assert!(poll(&mut half).is_pending());
            assert!(half.held.is_none());
            // A small message goes through without a buffer of its own.
            client.write_all(b"Q\0\0\0\x0dselect 1\0").await.unwrap();
            assert!(poll(&mut half).is_pending());
            assert!(half.held.is_none());
            let mut got = vec![0; 14];
            upstream.read_exact(&mut got).await.unwrap();
            assert_eq!(got, b"Q\0\0\0\x0dselect 1\0");
            // A bulk write the upstream cannot take at once: the rest is held until it can.
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            client.write_all(&data).await.unwrap();
            assert!(poll(&mut half).is_pending());
            assert!(half.held.is_some(), "the writer pushed back: the unwritten bytes are kept");
            let mut received = Vec::new();
            let mut chunk = vec![0; 4096];
            while received.len() < data.len() {
                let n = upstream.read(&mut chunk).await.unwrap();
                received.extend_from_slice(&chunk[..n]);
                let _ = poll(&mut half);
            }
            assert_eq!(received, data);
            assert!(poll(&mut half).is_pending());
            assert!(half.held.is_none(), "idle again: the buffer is released");
            assert_eq!(half.bytes, 14 + 200_000);
        })
        .await;
    }

    #[test]
    fn framer_follows_message_boundaries_byte_by_byte() {
        // DataRow 'D' len 11 (7 body bytes), then ReadyForQuery 'Z' len 5 (1 body byte).
        let stream: &[u8] = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x01xZ\x00\x00\x00\x05I";
        let mut whole = Framer::default();
        whole.advance(stream);
        assert!(whole.at_boundary());
        let mut f = Framer::default();
        let mut boundaries = vec![];
        for (i, b) in stream.iter().enumerate() {
            f.advance(std::slice::from_ref(b));
            if f.at_boundary() {
                boundaries.push(i + 1);
            }
        }
        assert_eq!(boundaries, [12, 18]);
        let mut f = Framer::default();
        f.advance(&stream[..3]);
        assert_eq!(f.until_boundary(), Some(2), "the rest of the header first");
        f.advance(&stream[3..5]);
        assert_eq!(f.until_boundary(), Some(7), "then the body");
        f.advance(&stream[5..12]);
        assert_eq!(f.until_boundary(), None);
    }

    #[tokio::test]
    async fn a_drain_stops_at_the_end_of_the_current_server_message() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1 << 16);
        let (mut proxy_upstream, mut upstream) = tokio::io::duplex(1 << 16);
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(async move {
            let drain = async {
                let _ = drain_rx.await;
            };
            let stats = relay_until(&mut proxy_client, &mut proxy_upstream, b"Z\x00\x00\x00\x05I", drain, Meters::default()).await;
            // The client side is still usable after a drain: the caller's last words.
            proxy_client.write_all(b"LAST").await.unwrap();
            stats
        });
        // Half a DataRow is in flight when the drain starts; the rest follows, plus more.
        upstream.write_all(b"D\x00\x00\x00\x0b\x00\x01").await.unwrap();
        let mut got = vec![0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        drain_tx.send(()).unwrap();
        upstream.write_all(b"\x00\x00\x00\x01xZ\x00\x00\x00\x05I").await.unwrap();
        let stats = relay.await.unwrap();
        assert_eq!(stats.closed_by, Some(ClosedBy::Drain));
        assert_eq!(stats.upstream_to_client, 12, "the DataRow completed, the next message not begun");
        let mut rest = vec![0u8; 9];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x00\x00\x00\x01xLAST");
    }

    #[tokio::test]
    async fn final_upstream_bytes_arrive_even_when_the_client_write_fails() {
        let (mut client, mut proxy_client) = tokio::io::duplex(64);
        let (mut proxy_upstream, upstream) = tokio::io::duplex(64);
        let relay = tokio::spawn(async move { relay(&mut proxy_client, &mut proxy_upstream).await });
        // The upstream sends its last words and vanishes (read and write side).
        let (up_read, mut up_write) = tokio::io::split(upstream);
        up_write.write_all(b"E-final").await.unwrap();
        up_write.shutdown().await.unwrap();
        drop(up_write);
        drop(up_read);
        // The client keeps writing into a dead upstream, then reads what came before the end.
        let _ = client.write_all(&[b'x'; 4096]).await;
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        assert_eq!(got, b"E-final");
        let stats = relay.await.unwrap();
        assert_eq!(stats.closed_by, Some(ClosedBy::Upstream));
    }

    /// A Half that read `chunk` in one go (after `before`) and wrote `written` bytes of it.
    fn half_with(before: &[u8], chunk: &[u8], written: usize) -> Half {
        let mut half = Half::framed();
        if let Some(f) = &mut half.framer {
            f.advance(before);
            half.chunk_start = Some(f.clone());
            f.advance(chunk);
        }
        let mut held = vec![0; BUF_SIZE].into_boxed_slice();
        held[..chunk.len()].copy_from_slice(chunk);
        half.held = Some(held);
        half.cap = chunk.len();
        half.pos = written;
        half
    }

    #[test]
    fn a_cut_ends_on_the_first_boundary_after_what_the_client_got() {
        // Three DataRows of 12 bytes each, then half of a fourth.
        let row: &[u8] = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x01x";
        let chunk = [row, row, row, &row[..5]].concat();
        // The client got 8 bytes: the rest of the first row is still owed, then the cut.
        let mut half = half_with(&[], &chunk, 8);
        assert!(half.cut_at_boundary());
        assert_eq!((half.pos, half.cap, half.draining), (8, 12, true));
        assert_eq!(half.framer.as_ref().and_then(Framer::until_boundary), None);
        // Exactly at a boundary: nothing more is owed.
        let mut half = half_with(&[], &chunk, 24);
        assert!(half.cut_at_boundary());
        assert_eq!((half.pos, half.cap), (24, 24));
        // Inside the half row at the end: it cannot be completed.
        let mut half = half_with(&[], &chunk, 38);
        assert!(!half.cut_at_boundary());
        // A chunk that began inside a message (its first 7 bytes read before): the boundary
        // is counted from where that message began.
        let mut half = half_with(&row[..7], &chunk[7..], 2);
        assert!(half.cut_at_boundary());
        assert_eq!(half.cap, 5);
        // Everything written and the last message complete: at a boundary already.
        let mut half = half_with(&[], &chunk[..24], 24);
        assert!(half.cut_at_boundary());
        let mut half = half_with(&[], &chunk, chunk.len());
        assert!(!half.cut_at_boundary(), "the client has half a message");
    }

    // ---- --max-connection-age, on a paused clock ----

    const READY: &[u8] = b"Z\x00\x00\x00\x05I";
    const ROW: &[u8] = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x01x";
    const QUERY: &[u8] = b"Q\x00\x00\x00\x0dselect 1\x00";
    const HOUR: Duration = Duration::from_secs(3600);

    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::DuplexStream;
    use tokio::time::{sleep_until, Instant};

    /// A relay logged in at `t0` (the login's ReadyForQuery already sent) with an age limit of
    /// an hour (or none), in a task that writes `LAST` to the client after an age stop — the
    /// session's 57P01 — and then closes it.
    struct Aged {
        client: DuplexStream,
        upstream: DuplexStream,
        relay: tokio::task::JoinHandle<RelayStats>,
        noticed: Arc<AtomicUsize>,
        t0: Instant,
        notice: Vec<u8>,
    }

    fn aged(limit: bool) -> Aged {
        let (client, mut proxy_client) = tokio::io::duplex(1 << 16);
        let (mut proxy_upstream, upstream) = tokio::io::duplex(1 << 16);
        let t0 = Instant::now();
        let age = limit.then_some(AgeLimit { since: t0, age: HOUR });
        let noticed = Arc::new(AtomicUsize::new(0));
        let count = noticed.clone();
        let relay = tokio::spawn(async move {
            let stops = Stops {
                drain: std::future::pending(),
                cut: std::future::pending(),
                age,
                noticed: move || {
                    count.fetch_add(1, SeqCst);
                },
            };
            let stats = relay_with(&mut proxy_client, &mut proxy_upstream, READY, stops, Meters::default()).await;
            if stats.closed_by == Some(ClosedBy::MaxAge) {
                proxy_client.write_all(b"LAST").await.unwrap();
            }
            stats
        });
        let notice = AgeLimit { since: t0, age: HOUR }.notice().to_vec();
        Aged { client, upstream, relay, noticed, t0, notice }
    }

    impl Aged {
        fn at(&self, minutes: u64, seconds: u64) -> Instant {
            self.t0 + Duration::from_secs(minutes * 60 + seconds)
        }

        async fn read(&mut self, n: usize) -> Vec<u8> {
            let mut got = vec![0; n];
            self.client.read_exact(&mut got).await.unwrap();
            got
        }

        /// Nothing reaches the client for a second (of paused time, with no timer of the relay's
        /// due in it).
        async fn quiet(&mut self) {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(1), self.client.read(&mut byte)).await;
            assert!(read.is_err(), "the client got {read:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_notice_comes_at_55_minutes_between_two_server_messages() {
        let mut a = aged(true);
        // Idle at 55 minutes: the notice comes at once, at exactly 55 minutes.
        let notice = a.notice.clone();
        assert_eq!(a.read(notice.len()).await, notice);
        assert_eq!(Instant::now() - a.t0, Duration::from_secs(55 * 60));
        assert_eq!(a.noticed.load(SeqCst), 1);

        // Mid-message when it is due: it waits for the end of that message, written in pieces.
        let mut a = aged(true);
        sleep_until(a.at(54, 0)).await;
        a.client.write_all(QUERY).await.unwrap();
        let mut q = vec![0; QUERY.len()];
        a.upstream.read_exact(&mut q).await.unwrap();
        a.upstream.write_all(&ROW[..7]).await.unwrap();
        assert_eq!(a.read(7).await, &ROW[..7]);
        sleep_until(a.at(56, 0)).await;
        assert_eq!(a.noticed.load(SeqCst), 1, "due, and waiting for the end of the DataRow");
        a.quiet().await;
        a.upstream.write_all(&ROW[7..9]).await.unwrap();
        assert_eq!(a.read(2).await, &ROW[7..9]);
        a.quiet().await;
        a.upstream.write_all(&[&ROW[9..], ROW, READY].concat()).await.unwrap();
        let expected = [&ROW[9..], &a.notice[..], ROW, READY].concat();
        assert_eq!(a.read(expected.len()).await, expected, "the rest of the row, the notice, then the next messages");
        assert!(!a.relay.is_finished());
        a.client.shutdown().await.unwrap();
        drop(a.upstream);
        let stats = a.relay.await.unwrap();
        assert_eq!(stats.closed_by, Some(ClosedBy::Client), "a client that leaves before the end is an ordinary close");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_at_59_minutes_and_the_client_gets_the_last_word() {
        let mut a = aged(true);
        let notice = a.notice.clone();
        assert_eq!(a.read(notice.len()).await, notice);
        // A NOTIFY and a ParameterStatus while idle: still idle.
        sleep_until(a.at(58, 0)).await;
        let notify = b"A\x00\x00\x00\x0e\x00\x00\x00\x01ch\x00pl\x00";
        let status = b"S\x00\x00\x00\x08a\x00b\x00";
        a.upstream.write_all(&[&notify[..], &status[..]].concat()).await.unwrap();
        assert_eq!(a.read(notify.len() + status.len()).await, [&notify[..], &status[..]].concat());
        assert_eq!(a.read(4).await, b"LAST");
        assert_eq!(Instant::now() - a.t0, Duration::from_secs(59 * 60));
        let stats = a.relay.await.unwrap();
        assert_eq!(stats.closed_by, Some(ClosedBy::MaxAge));
        assert!(stats.upstream_at_boundary, "nothing was sent upstream: a Terminate may follow");
        // The client's bytes after the end are not forwarded (the relay is gone).
        let _ = a.client.write_all(QUERY).await;
        let mut rest = Vec::new();
        a.upstream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_running_at_59_minutes_finishes_and_then_the_connection_ends() {
        let mut a = aged(true);
        // Two pipelined queries at 58 minutes: the first ReadyForQuery is not yet idle.
        sleep_until(a.at(58, 0)).await;
        a.client.write_all(&[QUERY, QUERY].concat()).await.unwrap();
        let mut q = vec![0; 2 * QUERY.len()];
        a.upstream.read_exact(&mut q).await.unwrap();
        let notice = a.notice.clone();
        assert_eq!(a.read(notice.len()).await, notice, "sent at 55 minutes");
        sleep_until(a.at(59, 10)).await;
        a.upstream.write_all(&[ROW, READY].concat()).await.unwrap();
        assert_eq!(a.read(ROW.len() + READY.len()).await, [ROW, READY].concat());
        a.quiet().await;
        sleep_until(a.at(59, 20)).await;
        a.upstream.write_all(&[ROW, READY].concat()).await.unwrap();
        assert_eq!(a.read(ROW.len() + READY.len() + 4).await, [ROW, READY, b"LAST"].concat());
        assert_eq!(Instant::now() - a.t0, Duration::from_secs(59 * 60 + 20), "right after the second answer");
        let stats = a.relay.await.unwrap();
        assert_eq!(stats.closed_by, Some(ClosedBy::MaxAge));
        assert!(stats.upstream_at_boundary);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_still_busy_at_60_minutes_ends_at_the_next_server_message_boundary() {
        let mut a = aged(true);
        let notice = a.notice.clone();
        assert_eq!(a.read(notice.len()).await, notice);
        // At 58:30 the client sends a Parse and a Flush, no Sync: not idle once answered.
        sleep_until(a.at(58, 30)).await;
        let parse = b"P\x00\x00\x00\x08\x00\x00\x00\x00";
        let flush = b"H\x00\x00\x00\x04";
        a.client.write_all(&[&parse[..], flush].concat()).await.unwrap();
        let mut got = vec![0; parse.len() + flush.len()];
        a.upstream.read_exact(&mut got).await.unwrap();
        a.upstream.write_all(b"1\x00\x00\x00\x04").await.unwrap();
        assert_eq!(a.read(5).await, b"1\x00\x00\x00\x04");
        sleep_until(a.at(59, 30)).await;
        // Then a query, and half a message more from the client just before the limit.
        a.client.write_all(QUERY).await.unwrap();
        let mut q = vec![0; QUERY.len()];
        a.upstream.read_exact(&mut q).await.unwrap();
        sleep_until(a.at(59, 59)).await;
        a.client.write_all(&QUERY[..6]).await.unwrap();
        let mut half = [0u8; 6];
        a.upstream.read_exact(&mut half).await.unwrap();
        a.upstream.write_all(&ROW[..3]).await.unwrap();
        assert_eq!(a.read(3).await, &ROW[..3]);
        // Past the limit: the rest of that row goes to the client, nothing after it.
        sleep_until(a.at(60, 10)).await;
        a.client.write_all(&QUERY[6..]).await.unwrap();
        a.upstream.write_all(&[&ROW[3..], ROW, READY].concat()).await.unwrap();
        let mut rest = Vec::new();
        a.client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, [&ROW[3..], b"LAST"].concat());
        let stats = a.relay.await.unwrap();
        assert_eq!(stats.closed_by, Some(ClosedBy::MaxAge));
        assert!(!stats.upstream_at_boundary, "the client's message was cut in half: no Terminate");
        let mut after = Vec::new();
        a.upstream.read_to_end(&mut after).await.unwrap();
        assert!(after.is_empty(), "the client's bytes after the end were forwarded: {after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_closes_once_the_end_is_due_still_gives_the_client_the_last_word() {
        // Busy past 59 minutes, then the server closes without a word (as Aurora DSQL does).
        let mut a = aged(true);
        sleep_until(a.at(58, 0)).await;
        a.client.write_all(QUERY).await.unwrap();
        let mut q = vec![0; QUERY.len()];
        a.upstream.read_exact(&mut q).await.unwrap();
        sleep_until(a.at(59, 30)).await;
        drop(a.upstream);
        let mut got = Vec::new();
        a.client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [&a.notice[..], b"LAST"].concat());
        assert_eq!(a.relay.await.unwrap().closed_by, Some(ClosedBy::MaxAge));

        // Before 59 minutes an upstream close is the upstream's: the client gets the EOF.
        let mut a = aged(true);
        sleep_until(a.at(58, 0)).await;
        a.client.write_all(QUERY).await.unwrap();
        let mut q = vec![0; QUERY.len()];
        a.upstream.read_exact(&mut q).await.unwrap();
        drop(a.upstream);
        let mut got = Vec::new();
        a.client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, a.notice);
        drop(a.client);
        assert_eq!(a.relay.await.unwrap().closed_by, Some(ClosedBy::Upstream));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_a_connection_lives_on() {
        let mut a = aged(false);
        sleep_until(a.at(120, 0)).await;
        a.quiet().await;
        a.client.write_all(QUERY).await.unwrap();
        let mut q = vec![0; QUERY.len()];
        a.upstream.read_exact(&mut q).await.unwrap();
        a.upstream.write_all(&[ROW, READY].concat()).await.unwrap();
        assert_eq!(a.read(ROW.len() + READY.len()).await, [ROW, READY].concat());
        assert_eq!(a.noticed.load(SeqCst), 0);
        a.client.shutdown().await.unwrap();
        drop(a.upstream);
        assert_eq!(a.relay.await.unwrap().closed_by, Some(ClosedBy::Client));
    }

    /// A stream whose EOF reads as an error, as a TLS peer gone without close_notify does.
    struct NoCloseNotify(DuplexStream);

    impl AsyncRead for NoCloseNotify {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
            if buf.filled().len() == before && buf.remaining() > 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for NoCloseNotify {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_gone_without_close_notify_once_the_end_is_due_is_an_end_at_the_age_limit_too() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1 << 16);
        let (proxy_upstream, mut upstream) = tokio::io::duplex(1 << 16);
        let mut proxy_upstream = NoCloseNotify(proxy_upstream);
        let t0 = Instant::now();
        let limit = AgeLimit { since: t0, age: HOUR };
        let relay = tokio::spawn(async move {
            let stops = Stops {
                drain: std::future::pending(),
                cut: std::future::pending(),
                age: Some(limit),
                noticed: || {},
            };
            let stats = relay_with(&mut proxy_client, &mut proxy_upstream, READY, stops, Meters::default()).await;
            proxy_client.write_all(b"LAST").await.unwrap();
            stats
        });
        sleep_until(t0 + Duration::from_secs(58 * 60)).await;
        client.write_all(QUERY).await.unwrap();
        let mut q = vec![0; QUERY.len()];
        upstream.read_exact(&mut q).await.unwrap();
        sleep_until(t0 + Duration::from_secs(59 * 60 + 30)).await;
        upstream.write_all(ROW).await.unwrap();
        drop(upstream);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [&limit.notice()[..], ROW, b"LAST"].concat());
        let stats = relay.await.unwrap();
        assert_eq!(stats.closed_by, Some(ClosedBy::MaxAge));
        assert_eq!(stats.upstream_error.map(|e| e.kind()), Some(io::ErrorKind::UnexpectedEof), "kept for the log line");
    }
}
