//! TEMPORARY diagnostics.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use crate::sim::sigv4::SimCredentials;
use crate::sim::ssm::{SsmSim, SsmSimOptions, SsmSimStats};
use crate::tunnel::ssm::api::SsmApi;
use crate::tunnel::ssm::websocket::WsConnector;
use crate::tunnel::ssm::{SsmSettings, SsmTunnel};

#[tokio::test]
async fn dbg_kill() {
    let _ = tracing_subscriber::fmt().with_env_filter("rds_auth_proxy=debug").with_test_writer().try_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move { let (mut rx, mut tx) = tcp.split(); let _ = tokio::io::copy(&mut rx, &mut tx).await; });
        }
    });
    let host = "db.example";
    let sim = SsmSim::start(SsmSimOptions { kill_ws_after_messages: Some(150), ..Default::default() },
        SimCredentials::new("AKIASIMTEST000000000", "s"), "eu-central-1", HashMap::from([(host.to_owned(), echo)])).await.unwrap();
    let api = SsmApi::with_credentials(aws_credential_types::Credentials::from_keys("AKIASIMTEST000000000", "s", None), "eu-central-1", Some(&sim.endpoint_url()));
    let settings = SsmSettings::new(sim.target_id().to_owned(), host.to_owned(), 5432);
    let tunnel = SsmTunnel::new(settings, Arc::new(api), Arc::new(WsConnector::new(None).unwrap()));
    let stream = tunnel.open().await.unwrap();
    let (mut rx, mut tx) = tokio::io::split(stream);
    let data: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
    let stats = sim.stats();
    let mon = tokio::spawn(async move { loop { tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!("STATS killed={} resumed={} resends={} dup={}", SsmSimStats::get(&stats.ws_killed), SsmSimStats::get(&stats.sessions_resumed), SsmSimStats::get(&stats.resends), SsmSimStats::get(&stats.duplicates_reacked)); } });
    let w = async { tx.write_all(&data).await.unwrap(); };
    let r = async { let mut got = vec![0u8; data.len()]; let mut n = 0; while n < got.len() { let k = rx.read(&mut got[n..]).await.unwrap(); if k == 0 { panic!("eof at {n}") } n += k; } got };
    let res = tokio::time::timeout(Duration::from_secs(15), async { tokio::join!(w, r) }).await;
    mon.abort();
    assert!(res.is_ok());
}
