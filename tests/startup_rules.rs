//! PostgreSQL's startup rules, checked against the real server: every case is sent as raw bytes
//! to the simulator's PostgreSQL 15 directly and through the proxy, and both must end the same
//! way (the same SQLSTATE, or a session as the same user with the same settings). The one
//! deliberate difference: a connection PostgreSQL would make a replication (walsender)
//! connection is refused by the proxy with 0A000, because AWS does not allow IAM authentication
//! for replication.
//!
//! The `pg15` column records what PostgreSQL 15 does, so a case that changed on both sides at
//! once still fails.

mod common;

use std::net::SocketAddr;

use bytes::BytesMut;
use rds_auth_proxy::pg::backend::{self, error_field, parse_error_fields};
use rds_auth_proxy_sim::SimOptions;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::*;

/// How a connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A normal session: `current_user` and `application_name` as the server reports them.
    Session { user: String, app: Vec<u8> },
    /// A replication connection: the server answered IDENTIFY_SYSTEM.
    Walsender,
    /// A FATAL ErrorResponse with this SQLSTATE.
    Refused(String),
    /// The connection closed without a word.
    Closed,
}

fn session(user: &str, app: &[u8]) -> Outcome {
    Outcome::Session {
        user: user.to_owned(),
        app: app.to_vec(),
    }
}

fn refused(code: &str) -> Outcome {
    Outcome::Refused(code.to_owned())
}

/// A protocol 3.0 StartupMessage around `pairs` (names, values and the terminator, as bytes).
fn packet(pairs: &[u8]) -> Vec<u8> {
    let mut p = ((pairs.len() + 8) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 3, 0, 0]);
    p.extend_from_slice(pairs);
    p
}

/// Runs one simple query; `Ok(rows)` with each column's bytes, or `Err(sqlstate)`.
async fn query(s: &mut TcpStream, buf: &mut BytesMut, sql: &str) -> Result<Vec<Vec<Vec<u8>>>, String> {
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    s.write_all(&q).await.expect("send query");
    let (mut rows, mut error) = (Vec::new(), None);
    loop {
        let msg = backend::read_message(s, buf, 1 << 20).await.expect("query answer");
        match msg.tag() {
            b'E' => {
                let fields = parse_error_fields(msg.body()).expect("error fields");
                error = error_field(&fields, b'C').map(str::to_owned);
            }
            b'D' => {
                let body = msg.body();
                let mut cols = Vec::new();
                let mut at = 2;
                for _ in 0..u16::from_be_bytes([body[0], body[1]]) {
                    let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                    at += 4;
                    let len = len.max(0) as usize;
                    cols.push(body[at..at + len].to_vec());
                    at += len;
                }
                rows.push(cols);
            }
            b'Z' => return error.map_or(Ok(rows), Err),
            _ => {}
        }
    }
}

/// Sends `startup` to `addr` and classifies how it ends.
async fn attempt(addr: SocketAddr, startup: &[u8]) -> Outcome {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(startup).await.expect("send startup");
    let mut buf = BytesMut::new();
    loop {
        match backend::read_message(&mut s, &mut buf, 1 << 20).await {
            Err(_) => return Outcome::Closed,
            Ok(msg) if msg.tag() == b'E' => {
                let fields = parse_error_fields(msg.body()).expect("error fields");
                return refused(error_field(&fields, b'C').expect("a SQLSTATE"));
            }
            Ok(msg) if msg.tag() == b'Z' => break,
            Ok(_) => {}
        }
    }
    // Only a walsender knows IDENTIFY_SYSTEM; a normal backend calls it a syntax error.
    if query(&mut s, &mut buf, "IDENTIFY_SYSTEM").await.is_ok() {
        return Outcome::Walsender;
    }
    let rows = query(
        &mut s,
        &mut buf,
        "SELECT current_user, current_setting('application_name')",
    )
    .await
    .expect("a normal session answers SELECT");
    let mut row = rows.into_iter().next().expect("one row");
    let app = row.pop().expect("two columns");
    let user = String::from_utf8(row.pop().expect("two columns")).expect("UTF-8 user");
    Outcome::Session { user, app }
}

/// A simulator whose PostgreSQL also takes replication connections from `db_user` (so the direct
/// side shows which packets PostgreSQL turns into walsenders), with a second IAM user.
async fn replication_capable_sim() -> rds_auth_proxy_sim::Simulator {
    let sim = start_sim_with(SimOptions {
        pg_extra_hba: vec!["host replication all 127.0.0.1/32 trust".into()],
        ..SimOptions::default()
    })
    .await;
    sim.postgres
        .psql(
            "postgres",
            "ALTER ROLE db_user REPLICATION; CREATE ROLE iam2 LOGIN; GRANT rds_iam TO iam2;",
        )
        .await
        .expect("roles");
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_cases_end_as_on_postgresql() {
    let sim = replication_capable_sim().await;
    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;

    let mut cases: Vec<(String, Vec<u8>, Outcome)> = vec![
        ("plain".into(), b"user\0db_user\0database\0postgres\0\0".to_vec(), session("db_user", b"")),
        ("repeated user: the last wins".into(), b"user\0iam2\0database\0postgres\0user\0db_user\0\0".to_vec(), session("db_user", b"")),
        ("repeated user, other order".into(), b"user\0db_user\0database\0postgres\0user\0iam2\0\0".to_vec(), session("iam2", b"")),
        ("repeated database: the last wins".into(), b"user\0db_user\0database\0nope\0database\0postgres\0\0".to_vec(), session("db_user", b"")),
        ("repeated database, other order".into(), b"user\0db_user\0database\0postgres\0database\0nope\0\0".to_vec(), refused("3D000")),
        ("repeated application_name".into(), b"user\0db_user\0database\0postgres\0application_name\0a\0application_name\0b\0\0".to_vec(), session("db_user", b"b")),
        ("non-UTF-8 application_name".into(), b"user\0db_user\0database\0postgres\0application_name\0a\xffb\0\0".to_vec(), session("db_user", b"a?b")),
        ("non-UTF-8 database".into(), b"user\0db_user\0database\0d\xff\0\0".to_vec(), refused("3D000")),
        ("non-UTF-8 user".into(), b"user\0db_user\xff\0database\0postgres\0\0".to_vec(), refused("28000")),
        ("no user".into(), b"database\0postgres\0\0".to_vec(), refused("28000")),
        ("empty user".into(), b"user\0\0database\0postgres\0\0".to_vec(), refused("28000")),
        ("a last empty user".into(), b"user\0db_user\0user\0\0database\0postgres\0\0".to_vec(), refused("28000")),
        ("empty database means the user's".into(), b"user\0db_user\0database\0\0\0".to_vec(), refused("3D000")),
        ("unknown setting".into(), b"user\0db_user\0database\0postgres\0no_such_setting\0x\0\0".to_vec(), refused("42704")),
        ("non-UTF-8 setting name".into(), b"user\0db_user\0database\0postgres\0x\xff\0x\0\0".to_vec(), refused("42704")),
        ("_pq_ option".into(), b"user\0db_user\0database\0postgres\0_pq_.x\0y\0\0".to_vec(), session("db_user", b"")),
        ("any last byte ends the packet".into(), b"user\0db_user\0database\0postgres\0x".to_vec(), session("db_user", b"")),
        ("a name without a value".into(), b"user\0db_user\0database\0postgres\0x\0".to_vec(), refused("08P01")),
        ("an empty name in the middle".into(), b"user\0db_user\0\0v\0\0".to_vec(), refused("08P01")),
        ("replication on then off".into(), b"user\0db_user\0database\0postgres\0replication\0on\0replication\0off\0\0".to_vec(), session("db_user", b"")),
        ("replication off then on".into(), b"user\0db_user\0database\0postgres\0replication\0off\0replication\0on\0\0".to_vec(), Outcome::Walsender),
        ("replication database then off".into(), b"user\0db_user\0database\0postgres\0replication\0database\0replication\0off\0\0".to_vec(), session("db_user", b"")),
        ("a bad replication value before a good one".into(), b"user\0db_user\0database\0postgres\0replication\0bogus\0replication\0off\0\0".to_vec(), refused("22023")),
        ("a bad replication value before a layout error".into(), b"replication\0bogus\0user\0db_user\0x\0".to_vec(), refused("22023")),
        ("replication on without a user".into(), b"replication\0on\0\0".to_vec(), refused("28000")),
    ];
    let values: [(&str, Outcome); 3] = [
        ("off OFF Off of OF f F fa false FALSE n N no NO 0", session("db_user", b"")),
        ("on ON t T tr true TRUE tRuE y Y ye yes YES 1 database", Outcome::Walsender),
        ("o O truex falsey yess non 01 10 2 DATABASE Database data maybe", refused("22023")),
    ];
    for (list, outcome) in values {
        for v in list.split(' ') {
            let pairs = format!("user\0db_user\0database\0postgres\0replication\0{v}\0\0");
            cases.push((format!("replication={v}"), pairs.into_bytes(), outcome.clone()));
        }
    }
    for v in ["", " on", "on ", "database "] {
        let pairs = format!("user\0db_user\0database\0postgres\0replication\0{v}\0\0");
        cases.push((format!("replication={v:?}"), pairs.into_bytes(), refused("22023")));
    }

    let pg = sim.postgres.addr();
    let mut wrong = Vec::new();
    for (name, pairs, pg15) in &cases {
        let startup = packet(pairs);
        let direct = attempt(pg, &startup).await;
        let via_proxy = attempt(proxy.addr, &startup).await;
        let expected_via_proxy = match pg15 {
            Outcome::Walsender => refused("0A000"),
            other => other.clone(),
        };
        if direct != *pg15 || via_proxy != expected_via_proxy {
            wrong.push(format!(
                "{name}: PostgreSQL {direct:?} (expected {pg15:?}), proxy {via_proxy:?} (expected {expected_via_proxy:?})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases differ:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
    proxy.stop().await;
    sim.stop().await;
}

/// `--db-user` replaces the user and nothing else: a non-UTF-8 value reaches PostgreSQL as the
/// same bytes (PostgreSQL turns each non-ASCII byte of application_name into one `?`; a value
/// rewritten through U+FFFD would come back as three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_user_keeps_every_other_value_byte_for_byte() {
    let sim = start_sim().await;
    let mut args = direct_args(&sim);
    args.extend(["--db-user".to_owned(), "db_user".to_owned()]);
    let proxy = start_proxy(&args, sim.aws_credentials()).await;
    let via_proxy = attempt(
        proxy.addr,
        &packet(b"user\0someone\xff\0database\0postgres\0application_name\0a\xff\xfeb\0\0"),
    )
    .await;
    let direct = attempt(
        sim.postgres.addr(),
        &packet(b"user\0db_user\0database\0postgres\0application_name\0a\xff\xfeb\0\0"),
    )
    .await;
    assert_eq!(direct, session("db_user", b"a??b"));
    assert_eq!(via_proxy, direct);
    proxy.stop().await;
    sim.stop().await;
}
