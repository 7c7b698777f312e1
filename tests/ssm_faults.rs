//! Failure branches of the SSM client seen from a Postgres client, through the in-process proxy
//! and the simulator: what a client hears when the tunnel has to give its connection up.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;
use rds_auth_proxy::app::Proxy;
use rds_auth_proxy::tunnel::ssm::SsmTunnel;
use rds_auth_proxy::tunnel::Tunnel;

/// Turns a hang into a failure; never used to wait for something.
const GUARD: Duration = Duration::from_secs(60);

/// Polls until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < GUARD, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A startup packet (protocol 3.0) for `user` on database `postgres`.
fn startup(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A simple Query message.
fn query(sql: &str) -> Vec<u8> {
    let mut packet = vec![b'Q'];
    packet.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    packet.extend_from_slice(sql.as_bytes());
    packet.push(0);
    packet
}

/// Reads one whole backend message (type, body); `None` at a clean EOF between messages.
async fn message(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    match tcp.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("read: {e}"),
    }
    tcp.read_exact(&mut header[1..]).await.expect("a whole message header");
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    tcp.read_exact(&mut body).await.expect("a whole message body");
    Some((header[0], body))
}

/// The fields of an ErrorResponse body by their one-byte codes.
fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_given_up_and_the_others_on_its_session_go_on() {
    let sim = start_sim().await;
    let mut args = ssm_args(&sim);
    args.extend(["--ssm-sessions", "1", "--ssm-stall-timeout", "1"].map(String::from));
    let proxy = bind_ssm_proxy(&args, &sim).await;
    let Tunnel::Ssm(tunnel) = proxy.ctx.tunnel.clone() else {
        panic!("--via ssm gives an SSM tunnel");
    };
    // Small buffers, so "past the session's budget" is a few MiB, not 64.
    let tunnel: SsmTunnel = tunnel.with_settings(|s| {
        s.stream_buffer = 256 * 1024;
        s.session_buffer = 1 << 20;
    });
    let mut ctx = (*proxy.ctx).clone();
    ctx.tunnel = Tunnel::Ssm(tunnel.clone());
    let proxy = RunningProxy::spawn(Proxy::from_parts(proxy.listeners, Arc::new(ctx)));

    // An interactive client, already on the one session.
    let other = connect(&proxy, "db_user").await.expect("connect");
    other.simple_query("select 1").await.expect("select 1");

    // This client asks for 32 MiB and stops reading: far past the session's 1 MiB budget, and
    // past what the sockets between it and the proxy hold.
    let mut stalled = TcpStream::connect(proxy.addr).await.expect("connect");
    stalled.write_all(&startup("db_user")).await.expect("startup");
    loop {
        let (kind, _) = message(&mut stalled).await.expect("login answers");
        assert_ne!(kind, b'E', "login failed");
        if kind == b'Z' {
            break;
        }
    }
    let sql = "COPY (SELECT repeat('x', 1023) FROM generate_series(1, 32768)) TO STDOUT";
    stalled.write_all(&query(sql)).await.expect("query");

    // Without the reset the session would stop for every stream once its budget is used up;
    // with it, the stalled stream is given up after --ssm-stall-timeout.
    eventually("the stalled stream to be reset", || {
        tunnel.load().iter().map(|l| l.stalls_reset).sum::<u64>() >= 1
    })
    .await;
    // The stalled client comes back: it reads what it was owed, whole messages only, then the
    // error, then the end. Meanwhile the other connection answers as usual.
    let reader = tokio::spawn(async move {
        let mut rows = 0u64;
        let mut last = None;
        while let Some((kind, body)) = message(&mut stalled).await {
            match kind {
                b'd' => {
                    assert_eq!(body.len(), 1024, "a whole row each time");
                    rows += 1;
                }
                b'H' => {}
                other => {
                    assert!(last.is_none(), "nothing after the error");
                    last = Some((other, body));
                }
            }
        }
        (rows, last)
    });
    for _ in 0..5 {
        let row = tokio::time::timeout(GUARD, other.query_one("select 1", &[]))
            .await
            .expect("the other connection keeps answering")
            .expect("select 1");
        assert_eq!(row.get::<_, i32>(0), 1);
    }
    let (rows, last) = tokio::time::timeout(GUARD, reader).await.expect("in time").expect("reader");
    assert!(rows < 32768, "the rest was discarded, not delivered ({rows} rows)");
    let (kind, body) = last.expect("an ErrorResponse after the rows");
    assert_eq!(kind, b'E');
    let fields = error_fields(&body);
    let field = |code: u8| fields.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_str());
    assert_eq!(field(b'C'), Some("08006"), "{fields:?}");
    assert!(field(b'M').is_some_and(|m| m.contains("stopped reading it for 1 s")), "{fields:?}");
    assert!(field(b'H').is_some_and(|h| h.contains("--ssm-stall-timeout")), "{fields:?}");

    // The session is the same one, and the stalled connection is gone from it.
    let load = tunnel.load();
    assert_eq!(load.len(), 1);
    other.simple_query("select 1").await.expect("still answering");
    proxy.stop().await;
    sim.stop().await;
}
