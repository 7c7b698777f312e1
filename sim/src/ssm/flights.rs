//! Round trips per target connection, counted at the agent: how many times the client had to
//! wait for the far side before it could go on. On a real network each such wait is one WAN
//! round trip, so this is what a design that "opens a connection in fewer round trips" lowers.
//!
//! A **client flight** of one target connection (mux: one smux stream; basic: one connection
//! of the session) starts when client data for it reaches the agent after the client has
//! acknowledged agent data of that same connection since the previous client data. The very
//! first client data (the smux SYN included) is flight 1. The count is logical, not timed:
//! - only in-order delivered data counts, once (resends and duplicates never reach it);
//! - "the client has seen agent data" is proven by the client's acknowledgement of an agent
//!   message that carried data of this connection. Merely having *sent* data is not enough:
//!   a server may talk unprompted (TLS 1.3 session tickets right after the client's Finished)
//!   while the client's next bytes, already on their way, do not depend on it. Every client
//!   acks before it hands data on (§4.2), so an answer to agent data always arrives behind
//!   the ack that proves it was seen.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::SsmSimStats;
use rds_auth_proxy_protocol::ssm::smux::{Cmd, HEADER_LEN, VERSION};

/// Records kept for [`super::SsmSimStats::stream_flights`]; the oldest go first beyond this, so
/// a long soak run does not grow without bound.
const MAX_RECORDS: usize = 65_536;

/// The round-trip account of one target connection, as [`super::SsmSimStats::stream_flights`]
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFlights {
    /// The session the connection belongs to.
    pub session_id: String,
    /// Mux: the smux stream id. Basic: the session's connections numbered from 1 (a new one
    /// starts with the first Output after a DisconnectToPort flag).
    pub stream_id: u32,
    /// Client flights so far (see the module doc). A plain login through the proxy takes 4
    /// (SYN + SSLRequest, ClientHello, Finished + startup, password) unless the client saves
    /// some; a simple query adds 1.
    pub client_flights: u64,
    /// Client payload bytes for the connection that reached the agent (smux frame headers
    /// excluded).
    pub bytes_in: u64,
    /// Agent payload bytes for the connection sent towards the client.
    pub bytes_out: u64,
    /// Whether the connection has ended (FIN either way, DisconnectToPort, or the session's end).
    pub ended: bool,
}

/// One connection's live counters, shared between its session task and the registry.
#[derive(Debug)]
struct Record {
    session_id: String,
    stream_id: u32,
    client_flights: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    ended: AtomicBool,
}

impl Record {
    fn snapshot(&self) -> StreamFlights {
        StreamFlights {
            session_id: self.session_id.clone(),
            stream_id: self.stream_id,
            client_flights: self.client_flights.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            ended: self.ended.load(Ordering::Relaxed),
        }
    }
}

/// Every connection's record, in the order they opened.
#[derive(Debug, Default)]
pub(super) struct Registry {
    records: Mutex<VecDeque<Arc<Record>>>,
}

impl Registry {
    fn open(&self, session_id: &str, stream_id: u32) -> Arc<Record> {
        let record = Arc::new(Record {
            session_id: session_id.to_owned(),
            stream_id,
            client_flights: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        });
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if records.len() >= MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(record.clone());
        record
    }

    pub(super) fn snapshot(&self) -> Vec<StreamFlights> {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        records.iter().map(|r| r.snapshot()).collect()
    }
}

/// What one stretch of an smux byte stream holds, as far as the accounting cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Syn(u32),
    Fin(u32),
    /// `n` payload bytes of a PSH frame.
    Data(u32, usize),
}

/// Follows an smux v1 byte stream across message boundaries (a frame may span several
/// messages and a message hold several frames). Stops at the first thing smux v1 would not
/// send: the smux session itself fails then, and the accounting no longer matters.
#[derive(Debug, Default)]
struct FrameScanner {
    header: [u8; HEADER_LEN],
    have: usize,
    /// Payload bytes of the current PSH frame still to come, and its stream.
    payload_left: usize,
    stream_id: u32,
    broken: bool,
}

impl FrameScanner {
    fn scan(&mut self, mut bytes: &[u8], mut piece: impl FnMut(Piece)) {
        while !bytes.is_empty() && !self.broken {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                piece(Piece::Data(self.stream_id, n));
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER_LEN {
                return;
            }
            self.have = 0;
            let h = self.header;
            let stream_id = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let len = usize::from(u16::from_le_bytes([h[2], h[3]]));
            match (h[0] == VERSION).then(|| Cmd::from_byte(h[1])).flatten() {
                Some(Cmd::Syn) => piece(Piece::Syn(stream_id)),
                Some(Cmd::Fin) => piece(Piece::Fin(stream_id)),
                Some(Cmd::Psh) => {
                    self.stream_id = stream_id;
                    self.payload_left = len;
                }
                Some(Cmd::Nop) => {}
                None => self.broken = true,
            }
        }
    }
}

/// A connection as the session task tracks it.
struct Tracked {
    record: Arc<Record>,
    /// Whether the client acknowledged agent data of this connection since its last data.
    client_saw_agent_data: bool,
}

/// One session's accounting, owned by its agent task.
pub(super) struct SessionFlights {
    registry: Arc<SsmSimStats>,
    session_id: String,
    mux: bool,
    streams: HashMap<u32, Tracked>,
    inbound: FrameScanner,
    outbound: FrameScanner,
    /// Agent messages (by sequence number) that carried connection data, until acked.
    unacked: HashMap<i64, Vec<u32>>,
    /// Basic mode: the connection in use, and the last id handed out.
    basic_current: Option<u32>,
    basic_last_id: u32,
}

impl SessionFlights {
    pub(super) fn new(stats: Arc<SsmSimStats>, session_id: &str, mux: bool) -> Self {
        Self {
            registry: stats,
            session_id: session_id.to_owned(),
            mux,
            streams: HashMap::new(),
            inbound: FrameScanner::default(),
            outbound: FrameScanner::default(),
            unacked: HashMap::new(),
            basic_current: None,
            basic_last_id: 0,
        }
    }

    fn open(&mut self, stream_id: u32) {
        let record = self.registry.flights.open(&self.session_id, stream_id);
        self.streams.insert(
            stream_id,
            Tracked {
                record,
                client_saw_agent_data: false,
            },
        );
    }

    /// Client data for `stream_id` reached the agent: a new flight if it is the first, or if
    /// the client has seen agent data of this connection since its previous data.
    fn client_data(&mut self, stream_id: u32, bytes: usize) {
        let Some(tracked) = self.streams.get_mut(&stream_id) else {
            return;
        };
        let record = &tracked.record;
        if record.client_flights.load(Ordering::Relaxed) == 0 || tracked.client_saw_agent_data {
            record.client_flights.fetch_add(1, Ordering::Relaxed);
            tracked.client_saw_agent_data = false;
        }
        record
            .bytes_in
            .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn end(&mut self, stream_id: u32) {
        if let Some(tracked) = self.streams.remove(&stream_id) {
            tracked.record.ended.store(true, Ordering::Relaxed);
            let s = tracked.record.snapshot();
            tracing::debug!(
                session = %s.session_id,
                stream = s.stream_id,
                client_flights = s.client_flights,
                bytes_in = s.bytes_in,
                bytes_out = s.bytes_out,
                "simulated agent: target connection ended"
            );
        }
    }

    /// One in-order client Output payload, delivered to the port plugin.
    pub(super) fn on_client_output(&mut self, payload: &[u8]) {
        if !self.mux {
            let id = match self.basic_current {
                Some(id) => id,
                None => {
                    self.basic_last_id += 1;
                    let id = self.basic_last_id;
                    self.basic_current = Some(id);
                    self.open(id);
                    id
                }
            };
            self.client_data(id, payload.len());
            return;
        }
        let mut pieces = Vec::new();
        self.inbound.scan(payload, |p| pieces.push(p));
        for piece in pieces {
            match piece {
                Piece::Syn(id) => {
                    self.open(id);
                    self.client_data(id, 0);
                }
                Piece::Data(id, n) => self.client_data(id, n),
                Piece::Fin(id) => self.end(id),
            }
        }
    }

    /// Basic mode's DisconnectToPort: the client's connection is over.
    pub(super) fn on_disconnect(&mut self) {
        if let Some(id) = self.basic_current.take() {
            self.end(id);
        }
    }

    /// One agent Output payload sent as message `seq`.
    pub(super) fn on_agent_output(&mut self, seq: i64, payload: &[u8]) {
        let mut carried: Vec<u32> = Vec::new();
        let mut note = |streams: &HashMap<u32, Tracked>, id: u32, n: usize| {
            if let Some(tracked) = streams.get(&id) {
                tracked
                    .record
                    .bytes_out
                    .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
                if !carried.contains(&id) {
                    carried.push(id);
                }
            }
        };
        if self.mux {
            let mut pieces = Vec::new();
            self.outbound.scan(payload, |p| pieces.push(p));
            let mut ended = Vec::new();
            for piece in pieces {
                match piece {
                    Piece::Data(id, n) if n > 0 => note(&self.streams, id, n),
                    Piece::Fin(id) => ended.push(id),
                    Piece::Data(..) | Piece::Syn(_) => {}
                }
            }
            for id in ended {
                self.end(id);
            }
        } else if let Some(id) = self.basic_current {
            if !payload.is_empty() {
                note(&self.streams, id, payload.len());
            }
        }
        if !carried.is_empty() {
            self.unacked.insert(seq, carried);
        }
    }

    /// The client acknowledged agent message `seq`.
    pub(super) fn on_ack(&mut self, seq: i64) {
        for id in self.unacked.remove(&seq).unwrap_or_default() {
            if let Some(tracked) = self.streams.get_mut(&id) {
                tracked.client_saw_agent_data = true;
            }
        }
    }

    /// The session is over: every connection with it.
    pub(super) fn finish(&mut self) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.end(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cmd: u8, id: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![VERSION, cmd];
        f.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_le_bytes());
        f.extend_from_slice(&id.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn scanner_follows_frames_across_message_boundaries() {
        let mut bytes = frame(0, 3, b"");
        bytes.extend(frame(2, 3, b"hello world"));
        bytes.extend(frame(3, 0, b""));
        bytes.extend(frame(1, 3, b""));
        let mut scanner = FrameScanner::default();
        let mut pieces = Vec::new();
        for chunk in bytes.chunks(5) {
            scanner.scan(chunk, |p| pieces.push(p));
        }
        let data: usize = pieces
            .iter()
            .map(|p| match p {
                Piece::Data(3, n) => *n,
                _ => 0,
            })
            .sum();
        assert_eq!(data, 11);
        assert_eq!(pieces.first(), Some(&Piece::Syn(3)));
        assert_eq!(pieces.last(), Some(&Piece::Fin(3)));
    }

    #[test]
    fn a_flight_needs_acked_agent_data_in_between() {
        let stats = Arc::new(SsmSimStats::default());
        let mut f = SessionFlights::new(stats.clone(), "s", true);
        let mut first = frame(0, 1, b"");
        first.extend(frame(2, 1, b"ping"));
        f.on_client_output(&first);
        f.on_client_output(&frame(2, 1, b"more, same flight"));
        f.on_agent_output(0, &frame(2, 1, b"unprompted"));
        f.on_client_output(&frame(2, 1, b"sent before the client saw it"));
        assert_eq!(stats.stream_flights()[0].client_flights, 1);
        f.on_ack(0);
        f.on_client_output(&frame(2, 1, b"an answer"));
        f.on_ack(0); // a repeated ack proves nothing new
        f.on_client_output(&frame(2, 1, b"still the same flight"));
        let got = &stats.stream_flights()[0];
        assert_eq!(got.client_flights, 2);
        assert_eq!(got.bytes_out, 10);
        assert!(!got.ended);
        f.on_client_output(&frame(1, 1, b""));
        assert!(stats.stream_flights()[0].ended);
    }
}
