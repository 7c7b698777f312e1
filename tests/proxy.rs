//! End-to-end through the in-process proxy with tokio-postgres: simulator RDS front (TLS +
//! IAM check) in front of a real PostgreSQL.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};
use sha2::{Digest, Sha256};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_and_iam_identity() {
    let sim = start_sim().await;
    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    let client = connect(&proxy, "db_user").await.expect("login through the proxy");
    let row = client.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "db_user");
    let stmt = client.prepare("SELECT $1::int4 * 2, $2::text || '!'").await.unwrap();
    for i in 0..20 {
        let row = client.query_one(&stmt, &[&i, &format!("x{i}")]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
        assert_eq!(row.get::<_, String>(1), format!("x{i}!"));
    }
    // The client leg is plain; the upstream leg is TLS. The simulated RDS front terminates that
    // TLS and relays in clear to PostgreSQL, so PostgreSQL's own view of this backend says no
    // SSL; the front logs nobody in without TLS (a plain startup gets 28000 "no encryption"), so
    // its one accepted IAM login is this TLS connection.
    let ssl: bool = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .expect("pg_stat_ssl has a row for every backend")
        .get(0);
    assert!(!ssl, "the front relays to PostgreSQL in clear");
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 1);
    drop(client);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_16_mib_in_and_out_with_matching_checksums() {
    let sim = start_sim().await;
    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    let client = connect(&proxy, "db_user").await.unwrap();
    client.batch_execute("CREATE TEMP TABLE blob_lines (line text)").await.unwrap();
    let data = copy_lines(42, 16 * 1024 * 1024);
    let sent_sum = hex::encode(Sha256::digest(&data));

    let sink = client.copy_in("COPY blob_lines FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(256 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let rows = sink.finish().await.unwrap();
    assert_eq!(rows as usize, data.len() / 100);

    let stream = client.copy_out("COPY blob_lines TO STDOUT").await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let mut hasher = Sha256::new();
    let mut total = 0;
    for c in &chunks {
        hasher.update(c);
        total += c.len();
    }
    assert_eq!(total, data.len());
    assert_eq!(hex::encode(hasher.finalize()), sent_sum);
    drop(client);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancels_pg_sleep_within_two_seconds() {
    let sim = start_sim().await;
    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    let client = connect(&proxy, "db_user").await.unwrap();
    let token = client.cancel_token();
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    // Wait until the query is really running on the server, then cancel it.
    let observer = connect(&proxy, "db_user").await.unwrap();
    wait_until_active(&observer, "SELECT pg_sleep(30)").await;
    let cancel_at = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.expect("cancel sent");
    let result = tokio::time::timeout(Duration::from_secs(5), query).await.expect("query ended").unwrap();
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    assert!(cancel_at.elapsed() < Duration::from_secs(2), "cancel took {:?}", cancel_at.elapsed());
    assert_eq!(sim.front_state.cancels.load(Ordering::SeqCst), 1);
    // Close the observer first: stop then only waits for sessions that are already ending.
    drop(observer);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_connections() {
    let sim = start_sim().await;
    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let conn = proxy.conn_string("db_user");
        tasks.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let row = client.query_one("SELECT $1::int4 + 1, pg_backend_pid()", &[&i]).await?;
            // Hold the connection until all 50 are open at once.
            client.query_one("SELECT pg_sleep(0.2)", &[]).await?;
            Ok::<_, tokio_postgres::Error>((row.get::<_, i32>(0), row.get::<_, i32>(1)))
        }));
    }
    let mut pids = std::collections::HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (v, pid) = t.await.unwrap().expect("connection works");
        assert_eq!(v, i as i32 + 1);
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 50, "each client had its own backend");
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failure_is_retried_once_with_fresh_credentials() {
    let sim = start_sim().await;
    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    sim.front_state.reject_next.store(1, Ordering::SeqCst);
    let client = connect(&proxy, "db_user").await.expect("second attempt logs in");
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(sim.front_state.rejected.load(Ordering::SeqCst), 1);
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 1);
    // Two rejections in a row: the second one reaches the client as the server sent it.
    sim.front_state.reject_next.store(2, Ordering::SeqCst);
    let err = connect(&proxy, "db_user").await.expect_err("refused");
    let (code, message, _) = db_error(&err);
    assert_eq!(code, "28000");
    assert_eq!(message, "PAM authentication failed for user \"db_user\"");
    drop(client);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reused_across_connections() {
    let sim = start_sim().await;
    let proxy = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    for _ in 0..3 {
        connect(&proxy, "db_user").await.unwrap().simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 3);
    let distinct = sim.front_state.distinct_tokens.lock().unwrap().len();
    assert_eq!(distinct, 1, "one token served all three logins");
    proxy.stop().await;
    sim.stop().await;
}
