//! `rds-auth-proxy connect-info`: every libpq-based format is used as printed — the psql line
//! run by bash, the URI given to psql, the pg_service.conf entry through PGSERVICEFILE, the PG*
//! variables eval'd — against a proxy in front of the simulator, plain and with --local-tls
//! (verify-full with the generated CA). JDBC and DBeaver are checked as exact text.

mod common;

use std::process::{Command, Stdio};

use common::binary::BIN;
use common::*;

/// `connect-info` with the proxy's flags (its fixed port instead of 0); stdout.
fn connect_info(proxy_flags: &[String], port: u16, extra: &[&str]) -> String {
    let mut args: Vec<String> = vec!["connect-info".into()];
    let mut flags = proxy_flags.iter();
    while let Some(f) = flags.next() {
        if f == "--port" {
            flags.next();
            continue;
        }
        args.push(f.clone());
    }
    args.extend(["--port".into(), port.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(BIN)
        .args(&args)
        .env_clear()
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("binary runs");
    assert!(out.status.success(), "connect-info {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "stdout only: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `script` in bash with a clean libpq environment (no PG* variables from the test host);
/// returns psql's trimmed stdout, panicking with stderr on failure.
async fn bash(script: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.args(["-c", script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .env("PGCONNECT_TIMEOUT", "20")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("bash runs");
    assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every libpq format of `connect-info` logs in through the proxy as db_user.
async fn libpq_formats_connect(flags: &[String], port: u16) {
    let sql = "SELECT current_user || ':' || current_database()";
    let psql_line = connect_info(flags, port, &[]);
    assert!(psql_line.starts_with("psql '") && psql_line.ends_with("'\n"), "{psql_line}");
    assert_eq!(psql_line, connect_info(flags, port, &["--format", "psql"]), "psql is the default");
    assert_eq!(bash(&format!("{} -XtA -c \"{sql}\"", psql_line.trim_end()), &[]).await, "db_user:postgres");

    let dsn = connect_info(flags, port, &["--format", "dsn"]);
    assert!(dsn.starts_with("postgresql://db_user@127.0.0.1:"), "{dsn}");
    let out = bash(&format!("psql \"$DSN\" -XtA -c \"{sql}\""), &[("DSN", dsn.trim_end())]).await;
    assert_eq!(out, "db_user:postgres");

    let dir = tempfile::tempdir().unwrap();
    let service = connect_info(flags, port, &["--format", "pg-service"]);
    assert!(service.contains("\n[simdb]\n"), "{service}");
    let file = dir.path().join("pg_service.conf");
    std::fs::write(&file, &service).unwrap();
    let out = bash(&format!("psql service=simdb -XtA -c \"{sql}\""), &[("PGSERVICEFILE", file.to_str().unwrap())]).await;
    assert_eq!(out, "db_user:postgres");

    let env = connect_info(flags, port, &["--format", "env"]);
    let out = bash(&format!("eval \"$SETTINGS\"; psql -XtA -c \"{sql}\""), &[("SETTINGS", &env)]).await;
    assert_eq!(out, "db_user:postgres");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_connects_or_reads_exactly() {
    let sim = start_sim().await;
    let mut flags = direct_args(&sim);
    flags.extend(["--db-user".into(), "db_user".into()]);
    let proxy = start_proxy(&flags, sim.aws_credentials()).await;
    let port = proxy.addr.port();
    libpq_formats_connect(&flags, port).await;
    assert_eq!(
        connect_info(&flags, port, &["--format", "jdbc"]),
        format!("jdbc:postgresql://127.0.0.1:{port}/postgres?user=db_user&sslmode=disable\n")
    );
    assert_eq!(
        connect_info(&flags, port, &["--format", "dbeaver", "--dbname", "app"]),
        format!(
            "DBeaver: Database > New Database Connection > PostgreSQL\n  Connect by: Host\n  Host: 127.0.0.1\n  \
             Port: {port}\n  Database: app\n  Authentication: Database Native\n  Username: db_user\n  \
             Password: (leave empty; rds-auth-proxy answers the password request)\n  SSL tab: Use SSL: off\n"
        )
    );
    proxy.stop().await;

    // With --local-tls the settings ask for verify-full with the generated CA, and work.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("local-ca.pem");
    flags.extend(["--local-tls".into(), "--local-tls-ca-out".into(), ca.display().to_string()]);
    let proxy = start_proxy(&flags, sim.aws_credentials()).await;
    let port = proxy.addr.port();
    let ca_s = ca.display().to_string();
    assert_eq!(
        connect_info(&flags, port, &["--format", "psql"]),
        format!("psql 'host=127.0.0.1 port={port} dbname=postgres user=db_user sslmode=verify-full sslrootcert={ca_s}'\n")
    );
    libpq_formats_connect(&flags, port).await;
    let encoded: String = ca_s.chars().map(|c| if c == '/' { "%2F".to_owned() } else { c.to_string() }).collect();
    assert_eq!(
        connect_info(&flags, port, &["--format", "jdbc"]),
        format!("jdbc:postgresql://127.0.0.1:{port}/postgres?user=db_user&sslmode=verify-full&sslrootcert={encoded}\n")
    );
    proxy.stop().await;
    sim.stop().await;
}

#[test]
fn bad_flags_are_one_line_and_exit_code_2() {
    for (args, expect) in [
        (vec!["connect-info"], "--target is required"),
        (vec!["connect-info", "--target", "db.x", "-p", "0"], "--port 0 picks a random one"),
        (vec!["connect-info", "--target", "db.x", "--format", "xml"], "invalid value 'xml'"),
    ] {
        let out = Command::new(BIN).args(&args).env_clear().output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}
