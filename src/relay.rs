//! The byte relay after authentication: client ⇄ upstream, unchanged, until both directions end.
//!
//! Unlike `tokio::io::copy_bidirectional`, an error in one direction does not abort the other:
//! when the upstream sends a final ErrorResponse and closes while the client is still writing,
//! the client's write fails but the final bytes still reach it. It also records who closed first,
//! for the log line.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// 64 KiB per direction: COPY moves large chunks and 8 KiB would cost syscalls.
const BUF_SIZE: usize = 64 * 1024;

/// Which side ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    Client,
    Upstream,
}

impl std::fmt::Display for ClosedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
        })
    }
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
}

/// One direction: read from one side, write to the other.
struct Half {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    read_done: bool,
    done: bool,
    need_flush: bool,
    bytes: u64,
}

enum HalfEnd {
    /// Reader hit EOF and the writer was shut down.
    Eof,
    ReadError(io::Error),
    WriteError(io::Error),
}

impl Half {
    fn new() -> Self {
        Half {
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_done: false,
            done: false,
            need_flush: false,
            bytes: 0,
        }
    }

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
        loop {
            if self.pos < self.cap {
                match ready!(writer.as_mut().poll_write(cx, &self.buf[self.pos..self.cap])) {
                    Ok(0) => return Poll::Ready(HalfEnd::WriteError(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.pos += n;
                        self.bytes += n as u64;
                        self.need_flush = true;
                    }
                    Err(e) => return Poll::Ready(HalfEnd::WriteError(e)),
                }
                continue;
            }
            if !self.read_done {
                let mut rb = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        self.pos = 0;
                        self.cap = n;
                        if n == 0 {
                            self.read_done = true;
                        }
                        continue;
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
            return match ready!(writer.as_mut().poll_shutdown(cx)) {
                Ok(()) => Poll::Ready(HalfEnd::Eof),
                Err(e) => Poll::Ready(HalfEnd::WriteError(e)),
            };
        }
    }
}

/// Relays until both directions are done.
pub async fn relay<C, U>(client: &mut C, upstream: &mut U) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut c2u = Half::new();
    let mut u2c = Half::new();
    let mut stats = RelayStats::default();
    poll_fn(|cx| {
        if !c2u.done {
            if let Poll::Ready(end) = c2u.poll_copy(cx, Pin::new(&mut *client), Pin::new(&mut *upstream)) {
                c2u.done = true;
                let by = match end {
                    HalfEnd::Eof => ClosedBy::Client,
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
        if !u2c.done {
            if let Poll::Ready(end) = u2c.poll_copy(cx, Pin::new(&mut *upstream), Pin::new(&mut *client)) {
                u2c.done = true;
                let by = match end {
                    HalfEnd::Eof => ClosedBy::Upstream,
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
        if c2u.done && u2c.done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    stats.client_to_upstream = c2u.bytes;
    stats.upstream_to_client = u2c.bytes;
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
}
