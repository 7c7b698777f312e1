//! Every failure before relay reaches the client as an ErrorResponse with the right SQLSTATE, a
//! message naming the cause and a HINT. One simulator, one proxy per broken setup.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;
use rds_auth_proxy_sim::SimOptions;

fn replace_arg(args: &mut Vec<String>, flag: &str, value: Option<&str>) {
    let i = args.iter().position(|a| a == flag).expect("flag present");
    match value {
        Some(v) => args[i + 1] = v.to_owned(),
        None => {
            args.remove(i);
            args.remove(i);
        }
    }
}

/// Reads one backend message: (tag, body).
async fn read_message(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.expect("a message");
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

fn field(body: &[u8], code: u8) -> Option<String> {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_reach_the_client_with_sqlstate_and_hint() {
    let sim = start_sim_with(SimOptions {
        password_users: vec!["scram_user".into()],
        ..SimOptions::default()
    })
    .await;

    // Wrong CA: without --ca-bundle only the real RDS roots are trusted.
    let mut args = direct_args(&sim);
    replace_arg(&mut args, "--ca-bundle", None);
    let proxy = start_proxy(&args, sim.aws_credentials()).await;
    let (code, message, hint) = db_error(&connect(&proxy, "db_user").await.unwrap_err());
    assert_eq!(code, "08001");
    assert!(message.contains("TLS handshake with simdb"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(hint.unwrap().contains("--ca-bundle"));
    proxy.stop().await;

    // Endpoint name mismatch: the certificate is for SIM_ENDPOINT, not for this name.
    let mut args = direct_args(&sim);
    replace_arg(&mut args, "--target", Some("other.c0sim0000000.eu-central-1.rds.amazonaws.com:5432"));
    let proxy = start_proxy(&args, sim.aws_credentials()).await;
    let (code, message, hint) = db_error(&connect(&proxy, "db_user").await.unwrap_err());
    assert_eq!(code, "08001");
    assert!(message.contains("certificate not valid for name"), "{message}");
    assert!(hint.unwrap().contains("endpoint name"));
    proxy.stop().await;

    // Bad credentials: the simulator rejects the token; its 28000 is passed through verbatim.
    let bad = aws_credential_types::Credentials::from_keys(
        sim.credentials.access_key_id.clone(),
        "not-the-secret",
        None,
    );
    let proxy = start_proxy(&direct_args(&sim), bad).await;
    let (code, message, _) = db_error(&connect(&proxy, "db_user").await.unwrap_err());
    assert_eq!(code, "28000");
    assert_eq!(message, "PAM authentication failed for user \"db_user\"");
    proxy.stop().await;

    // PostgreSQL asks SCRAM of a password user and no password is configured: SCRAM is
    // attempted with the IAM token, refused, and the client learns which flags fix it.
    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    let (code, message, hint) = db_error(&connect(&proxy, "scram_user").await.unwrap_err());
    assert_eq!(code, "28P01");
    assert!(message.contains("ran SCRAM-SHA-256 for user \"scram_user\" and refused the IAM token"), "{message}");
    assert!(message.contains("not an IAM database user"), "{message}");
    let hint = hint.unwrap();
    for needle in ["--password-secret", "--password-file", "GRANT rds_iam TO \"scram_user\""] {
        assert!(hint.contains(needle), "hint lacks {needle}: {hint}");
    }

    // Malformed startup (the empty value takes the terminator's place), startup without a user
    // (PostgreSQL's 28000) and oversize startup, on raw sockets.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"\x00\x00\x00\x12\x00\x03\x00\x00database\x00\x00").await.unwrap();
    let (tag, body) = read_message(&mut s).await;
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C').as_deref(), Some("08P01"));
    assert!(field(&body, b'M').unwrap().contains("expected terminator as last byte"));
    assert!(field(&body, b'H').is_some());
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"\x00\x00\x00\x14\x00\x03\x00\x00database\x00x\x00\x00").await.unwrap();
    let (tag, body) = read_message(&mut s).await;
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C').as_deref(), Some("28000"));
    assert!(field(&body, b'M').unwrap().contains("no PostgreSQL user name specified"));
    assert!(field(&body, b'H').unwrap().contains("--db-user") || field(&body, b'H').unwrap().contains("-U"));
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut huge = vec![0u8; 20_000];
    huge[..8].copy_from_slice(&[0, 0, 0x4e, 0x20, 0, 3, 0, 0]);
    let _ = s.write_all(&huge[..8]).await;
    let (tag, body) = read_message(&mut s).await;
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C').as_deref(), Some("08P01"));
    assert!(field(&body, b'M').unwrap().contains("exceeds the limit of 10000"));
    // A client that sends nothing gets no answer but the proxy stays healthy.
    drop(TcpStream::connect(proxy.addr).await.unwrap());
    connect(&proxy, "db_user").await.expect("still serving").simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;

    // Upstream unreachable.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);
    let mut args = direct_args(&sim);
    replace_arg(&mut args, "--connect-addr", Some(&dead));
    let proxy = start_proxy(&args, sim.aws_credentials()).await;
    let (code, message, hint) = db_error(&connect(&proxy, "db_user").await.unwrap_err());
    assert_eq!(code, "08001");
    assert!(message.contains(&format!("cannot connect to {dead}")), "{message}");
    assert!(hint.unwrap().contains("--via ssm"));
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_3_2_to_a_3_0_server_negotiates_and_works() {
    let sim = start_sim().await;
    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // SSLRequest first, as libpq does: answered N.
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    let startup = rds_auth_proxy::pg::startup::encode_startup(
        3,
        2,
        &[
            ("user", "db_user"),
            ("database", "postgres"),
            ("_pq_.test_protocol_negotiation", "on"),
        ],
    );
    s.write_all(&startup).await.unwrap();
    // PostgreSQL 15 speaks 3.0: it answers NegotiateProtocolVersion (newest minor 0, the
    // unknown _pq_ option listed), and the proxy passes it through untouched.
    let (tag, body) = read_message(&mut s).await;
    assert_eq!(tag, b'v', "NegotiateProtocolVersion passes through");
    assert_eq!(&body[..8], &[0, 3, 0, 0, 0, 0, 0, 1], "3.0 is the newest, one option unknown");
    assert_eq!(&body[8..], b"_pq_.test_protocol_negotiation\0");
    let (tag, body) = read_message(&mut s).await;
    assert_eq!((tag, body.as_slice()), (b'R', &[0u8, 0, 0, 0][..]), "AuthenticationOk");
    let mut saw_key = false;
    loop {
        let (tag, body) = read_message(&mut s).await;
        match tag {
            b'K' => {
                saw_key = true;
                assert_eq!(body.len(), 8, "3.0 key: pid + 4 bytes");
            }
            b'Z' => break,
            b'S' | b'N' => {}
            other => panic!("unexpected {}", other as char),
        }
    }
    assert!(saw_key);
    s.write_all(b"Q\x00\x00\x00\x0eSELECT 42\x00").await.unwrap();
    let mut got_row = false;
    loop {
        let (tag, body) = read_message(&mut s).await;
        if tag == b'D' {
            assert!(body.ends_with(b"42"));
            got_row = true;
        }
        if tag == b'Z' {
            break;
        }
    }
    assert!(got_row);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_user_flag_overrides_the_startup_user_and_gss_is_declined() {
    let sim = start_sim().await;
    let mut args = direct_args(&sim);
    args.extend(["--db-user".to_owned(), "db_user".to_owned()]);
    let proxy = start_proxy(&args, sim.aws_credentials()).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N', "GSSENCRequest declined");
    drop(s);
    let client = connect(&proxy, "someone_else").await.expect("logs in as --db-user");
    let row = client.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "db_user");
    drop(client);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_53300() {
    let sim = start_sim().await;
    let mut args = direct_args(&sim);
    args.extend(["--max-connections".to_owned(), "1".to_owned()]);
    let proxy = start_proxy(&args, sim.aws_credentials()).await;
    let (first, connection) = tokio_postgres::connect(&proxy.conn_string("db_user"), tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let (code, _, hint) = db_error(&connect(&proxy, "db_user").await.unwrap_err());
    assert_eq!(code, "53300");
    assert!(hint.unwrap().contains("--max-connections"));
    // The slot frees when the first connection ends: wait for the proxy to close it (the
    // client's connection task ends on its EOF). The session returns its slot on its way out,
    // just after its last write, so a connect may still meet the slot taken — but only for that
    // instant; each retry waits for the proxy's answer, never for a timer.
    drop(first);
    connection.await.unwrap().expect("a clean close");
    let started = Instant::now();
    loop {
        match connect(&proxy, "db_user").await {
            Ok(_) => break,
            Err(e) => assert_eq!(db_error(&e).0, "53300", "{e:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the slot was never returned");
    }
    proxy.stop().await;
    sim.stop().await;
}

/// A CancelRequest takes no --max-connections slot: with every slot held by a query, a further
/// session is refused, yet cancelling those very queries works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_are_forwarded_when_max_connections_are_busy() {
    let sim = start_sim().await;
    let mut args = direct_args(&sim);
    args.extend(["--max-connections".to_owned(), "2".to_owned()]);
    let proxy = start_proxy(&args, sim.aws_credentials()).await;
    // Watch the server directly: the proxy has no slot to spare for an observer.
    let (observer, observer_conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=postgres dbname=postgres", sim.postgres.port()),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(observer_conn);
    let mut running = Vec::new();
    for i in 0..2 {
        let client = connect(&proxy, "db_user").await.unwrap();
        let token = client.cancel_token();
        let sql = format!("SELECT pg_sleep(30), {i}");
        let query = tokio::spawn({
            let sql = sql.clone();
            async move { client.simple_query(&sql).await }
        });
        wait_until_active(&observer, &sql).await;
        running.push((token, query));
    }
    let (code, _, _) = db_error(&connect(&proxy, "db_user").await.unwrap_err());
    assert_eq!(code, "53300", "the proxy is full");
    for (token, query) in running {
        token.cancel_query(tokio_postgres::NoTls).await.expect("cancel sent");
        let result = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("the query ended")
            .unwrap();
        let err = result.expect_err("the query was cancelled");
        assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    }
    assert_eq!(sim.front_state.cancels.load(std::sync::atomic::Ordering::SeqCst), 2);
    proxy.stop().await;
    sim.stop().await;
}

/// As on RDS, the `rds_iam` grant in the database decides who logs in with a token: the superuser
/// and unknown roles are asked for a password (which fails, with the proxy's clear error), a role that gets
/// the grant — directly or through a group — logs in, and a refusal after a valid token (no such
/// database) is passed through without a pointless retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_login_is_decided_by_the_rds_iam_grant() {
    use rds_auth_proxy_sim::rds::is_iam_user;
    use std::sync::atomic::Ordering;

    let sim = start_sim().await;
    let pg = sim.postgres.addr();
    let su = sim.postgres.superuser().to_owned();
    sim.postgres
        .psql(&su, "CREATE ROLE iam_group NOLOGIN; GRANT rds_iam TO iam_group; CREATE ROLE via_group LOGIN IN ROLE iam_group; CREATE ROLE plain LOGIN")
        .await
        .unwrap();
    assert!(is_iam_user(pg, "db_user").await.unwrap());
    assert!(is_iam_user(pg, "via_group").await.unwrap(), "membership through a group counts");
    assert!(!is_iam_user(pg, &su).await.unwrap(), "superuser status is not the grant");
    assert!(!is_iam_user(pg, "plain").await.unwrap());
    assert!(!is_iam_user(pg, "no'such\"user").await.unwrap());

    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    for user in [su.as_str(), "plain", "nosuchuser"] {
        // With no password configured the proxy tries its IAM token in SCRAM (RDS Proxy takes
        // one that way); the front refuses it as a wrong password, and the client learns why.
        let (code, message, hint) = db_error(&connect(&proxy, user).await.unwrap_err());
        assert_eq!(code, "28P01", "{user}");
        assert_eq!(
            message,
            format!(
                "rds-auth-proxy: the server ran SCRAM-SHA-256 for user \"{user}\" and refused the IAM token \
                 (28P01 password authentication failed for user \"{user}\"): it is a password user, not an IAM database user"
            )
        );
        let hint = hint.unwrap();
        for needle in ["--password-secret", "--password-file", &format!("GRANT rds_iam TO \"{user}\"")] {
            assert!(hint.contains(needle), "hint lacks {needle}: {hint}");
        }
    }
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 0, "no token was accepted");
    assert_eq!(sim.front_state.rejected.load(Ordering::SeqCst), 0, "nor checked as an IAM login");

    // The grant is read at each login, as RDS does.
    sim.postgres.psql(&su, "GRANT rds_iam TO plain").await.unwrap();
    let client = connect(&proxy, "plain").await.expect("granted rds_iam: IAM login");
    let row = client.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "plain");
    let client2 = connect(&proxy, "via_group").await.expect("member through a group");
    drop((client, client2));
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 2);

    // Token accepted, session refused by PostgreSQL: the client gets PostgreSQL's error, once.
    let conn = format!("host={} port={} user=db_user dbname=nosuchdb", proxy.addr.ip(), proxy.addr.port());
    let err = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.err().expect("refused");
    let (code, message, _) = db_error(&err);
    assert_eq!(code, "3D000");
    assert_eq!(message, "database \"nosuchdb\" does not exist");
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 3, "no retry with a fresh token");
    assert_eq!(sim.front_state.rejected.load(Ordering::SeqCst), 0);
    proxy.stop().await;
    sim.stop().await;
}
