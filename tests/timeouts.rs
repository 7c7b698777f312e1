//! No phase before relay can hang: each has a timeout, and the client is told which one fired.
//! Time is paused, so these run instantly.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use clap::Parser;
use rds_auth_proxy::app::{build_context, Credentials};
use rds_auth_proxy::cli::Cli;
use rds_auth_proxy::config::Config;

async fn context(connect_addr: &str) -> std::sync::Arc<rds_auth_proxy::target::TargetContext> {
    rds_auth_proxy::tls::install_default_provider();
    let cli = Cli::try_parse_from([
        "rds-auth-proxy",
        "--target",
        "db.abc.eu-central-1.rds.amazonaws.com",
        "--connect-addr",
        connect_addr,
    ])
    .unwrap();
    let config = Config::from_args(&cli.proxy).unwrap();
    let creds = aws_credential_types::Credentials::from_keys("AKIAEXAMPLEEXAMPLE", "secret", None);
    build_context(&config, Credentials::Fixed(creds)).await.unwrap()
}

async fn error_fields(client: &mut tokio::io::DuplexStream) -> String {
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    assert_eq!(out.first(), Some(&b'E'), "an ErrorResponse");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_gets_a_startup_timeout() {
    let ctx = context("127.0.0.1:9").await;
    let (mut client, proxy_side) = tokio::io::duplex(4096);
    let session = tokio::spawn(async move {
        rds_auth_proxy::session::serve(&ctx, proxy_side, "test", &rds_auth_proxy::drain::DrainSignal::never()).await;
    });
    let text = error_fields(&mut client).await;
    assert!(text.contains("C08P01"), "{text}");
    assert!(text.contains("timed out after 30 s waiting for the client's startup packet"), "{text}");
    session.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_upstream_gets_a_tls_timeout() {
    // Accepts TCP, never answers the SSLRequest.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let ctx = context(&addr).await;
    let (mut client, proxy_side) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        rds_auth_proxy::session::serve(&ctx, proxy_side, "test", &rds_auth_proxy::drain::DrainSignal::never()).await;
    });
    let startup = rds_auth_proxy::pg::startup::encode_startup(3, 0, &[("user", "u")]);
    client.write_all(&startup).await.unwrap();
    let text = error_fields(&mut client).await;
    assert!(text.contains("C08001"), "{text}");
    assert!(text.contains("timed out after 15 s while negotiating TLS"), "{text}");
    assert!(text.contains("H"), "has a hint");
}
