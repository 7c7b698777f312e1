//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which replays
//! every committed corpus file through the same function on stable Rust, so a crash the fuzzer
//! found stays fixed. Not an API: each function takes arbitrary bytes, drives the parser the
//! proxy runs on untrusted input exactly as the proxy does, and panics only when an invariant
//! breaks (a panic is what the fuzzer reports).

use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;

use crate::pg::backend::{self, AuthRequest, MAX_PREAUTH_MESSAGE_LEN};
use crate::pg::startup::{self, FirstPacket};
use crate::tunnel::ssm::handshake::{self, HandshakeCompletePayload, HandshakeRequestPayload};
use crate::tunnel::ssm::message::{
    AcknowledgeContent, ChannelClosed, ClientMessage, FlagPayload, PayloadType,
};

/// What every fuzz target calls.
pub type Entry = fn(&[u8]);

/// The fuzz targets by name: `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Entry)] = &[
    ("startup", startup_packet),
    ("backend", backend_preauth),
    ("ssm_message", ssm_message),
    ("ssm_payload", ssm_payload),
    ("smux", smux_session),
    ("config_args", config_args),
    ("config_file", config_file),
];

/// Runs a future that never waits on anything but in-memory readers (`&[u8]` is always ready).
fn ready<F: Future>(future: F) -> F::Output {
    future
        .now_or_never()
        .expect("an in-memory reader never returns Pending")
}

/// A client's first packet, read from the socket as the session does (`read_first_packet`), and
/// everything the session then asks of it.
pub fn startup_packet(data: &[u8]) {
    let mut reader = data;
    let read = ready(startup::read_first_packet(&mut reader));
    // The reader and the parser of a complete packet must agree.
    if let Ok(packet) = &read {
        let raw = match packet {
            FirstPacket::Startup(m) => Bytes::copy_from_slice(m.as_bytes()),
            FirstPacket::Cancel(c) => Bytes::copy_from_slice(c.as_bytes()),
            FirstPacket::SslRequest | FirstPacket::GssEncRequest => {
                Bytes::copy_from_slice(&data[..8])
            }
        };
        let reparsed = startup::parse_first_packet(raw).expect("a packet read once parses again");
        assert_eq!(&reparsed, packet);
    }
    let _ = startup::parse_first_packet(Bytes::copy_from_slice(data));
    match read {
        Ok(FirstPacket::Startup(m)) => {
            let _ = (m.user(), m.database(), m.version(), format!("{m:?}"));
            // `--db-user`: the rewritten packet must parse back to the same packet but the user.
            let rewritten = m.with_user("iam_user");
            let again =
                match startup::parse_first_packet(Bytes::copy_from_slice(rewritten.as_bytes())) {
                    Ok(FirstPacket::Startup(again)) => again,
                    other => panic!("a rewritten startup does not parse back: {other:?}"),
                };
            assert_eq!(again.user(), "iam_user");
            assert_eq!(again.params().len(), m.params().len());
        }
        Ok(FirstPacket::Cancel(c)) => {
            let _ = (c.pid(), c.key_len(), format!("{c:?}"));
        }
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// What the upstream sends before ReadyForQuery: framed with the pre-auth length cap, and each
/// message parsed as `upstream::authenticate` parses it, SCRAM included.
pub fn backend_preauth(data: &[u8]) {
    let mut reader = data;
    let mut buf = BytesMut::new();
    let mut scram = None;
    loop {
        let msg = match ready(backend::read_message(
            &mut reader,
            &mut buf,
            MAX_PREAUTH_MESSAGE_LEN,
        )) {
            Ok(msg) => msg,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        };
        assert!(msg.as_bytes().len() <= MAX_PREAUTH_MESSAGE_LEN + 1);
        let _ = format!("{msg:?}");
        match msg.tag() {
            b'R' => match backend::parse_auth_request(msg.body()) {
                Ok(AuthRequest::Sasl(mechanisms)) => {
                    scram = crate::auth::scram::choose(&mechanisms, "password", None)
                        .map(|choice| choice.scram);
                }
                Ok(AuthRequest::SaslContinue(data)) => {
                    if let Some(s) = scram.as_mut() {
                        if cheap_iterations(&data) {
                            let _ = s.update(&data);
                        }
                    }
                }
                Ok(AuthRequest::SaslFinal(data)) => {
                    if let Some(s) = scram.as_mut() {
                        let _ = s.finish(&data);
                    }
                }
                Ok(AuthRequest::RedshiftDigest { salt, server_nonce, .. }) => {
                    let _ = backend::redshift_digest_message(b"password", &salt, &server_nonce, b"1733600000000");
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = e.to_string();
                }
            },
            b'E' | b'N' => {
                if let Ok(fields) = backend::parse_error_fields(msg.body()) {
                    let _ = backend::error_field(&fields, b'C');
                    let _ = backend::error_field(&fields, b'M');
                }
            }
            _ => {}
        }
    }
}

/// postgres-protocol refuses more than 100 000 SCRAM iterations (its guard against a server
/// that makes the client burn CPU); below that, a large count only makes the fuzzer slow, so the
/// harness skips server-first messages asking more than PostgreSQL's default of 4096.
fn cheap_iterations(server_first: &[u8]) -> bool {
    server_first
        .split(|&b| b == b',')
        .filter_map(|attr| attr.strip_prefix(b"i="))
        .all(|count| {
            std::str::from_utf8(count)
                .ok()
                .and_then(|c| c.parse::<u64>().ok())
                .is_none_or(|c| c <= 4096)
        })
}

/// One binary WebSocket frame from the data channel, decoded both ways the proxy decodes it, and
/// its payload read as whichever JSON or flag payload it claims to be.
pub fn ssm_message(data: &[u8]) {
    let copied = ClientMessage::decode(data);
    let shared = ClientMessage::decode_bytes(&Bytes::copy_from_slice(data));
    let message = match (copied, shared) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "decode and decode_bytes disagree");
            a
        }
        (Err(_), Err(e)) => {
            let _ = e.to_string();
            return;
        }
        (a, b) => panic!("decode and decode_bytes disagree: {a:?} / {b:?}"),
    };
    let _ = (message.is_stream_data(), format!("{message:?}"));
    // What we encode must decode to the same message.
    let again = ClientMessage::decode(&message.encode()).expect("an encoded message decodes");
    if message.message_type.len() <= crate::tunnel::ssm::message::MESSAGE_TYPE_LEN {
        assert_eq!(again, message, "a decoded message re-encodes differently");
    } else {
        assert_eq!(again.payload, message.payload);
    }
    let _ = ClientMessage::ack_for(&message);
    ssm_payload(&message.payload);
}

/// The payloads a data channel message carries: acknowledge, channel_closed, flag, and the
/// handshake request (answered as the proxy answers it) and complete.
pub fn ssm_payload(data: &[u8]) {
    let message = ClientMessage::new(
        "output_stream_data",
        0,
        0,
        PayloadType::Output,
        Bytes::copy_from_slice(data),
    );
    let _ = message.json_payload::<AcknowledgeContent>("acknowledge");
    if let Ok(closed) = ChannelClosed::from_payload(data) {
        let _ = closed.reason();
    }
    if let Ok(flag) = FlagPayload::decode(data) {
        assert_eq!(&flag.encode()[..], data);
    }
    if let Ok(request) = HandshakeRequestPayload::from_payload(data) {
        let (response, outcome) = handshake::respond(&request, "1.2.650.0");
        assert_eq!(
            response.processed_client_actions.len(),
            request.requested_client_actions.len()
        );
        let _ = (
            response.to_payload().expect("a response serialises"),
            format!("{outcome:?}"),
        );
        let _ = handshake::agent_supports_mux(&request.agent_version);
        let _ = handshake::agent_supports_terminate_flag(&request.agent_version);
        let _ = handshake::client_version_selects_mux(&request.agent_version);
        let _ = handshake::client_version_disables_agent_keepalive(&request.agent_version);
        if let handshake::Outcome::Accepted(properties) = outcome {
            let _ = (
                properties.host(),
                properties.port_number(),
                properties.is_local_port_forwarding(),
            );
        }
    }
    if let Ok(complete) = HandshakeCompletePayload::from_payload(data) {
        let _ = complete.time_to_complete();
    }
}

/// The agent's side of an smux session: `data` is every byte the agent sends, then its end of
/// the transport closes. Our session (the client, with one stream open, as the pool has) must
/// deliver what it can, end with an error or EOF, and never panic or hang.
pub fn smux_session(data: &[u8]) {
    use crate::tunnel::ssm::smux::{Config, Session};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    thread_local! {
        // One runtime for every input: building one per input cost more than the session.
        // Keepalive is off, but paused time also keeps any timer from costing wall-clock time.
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime builds");
    }
    RUNTIME.with(|runtime| runtime.block_on(async {
        // Budgets above any fuzz input, so flow control never waits for a reader we do not run.
        let config = Config {
            keepalive_interval: None,
            keepalive_timeout: None,
            max_frame_size: 32 * 1024,
            max_receive_buffer: 4 << 20,
            max_stream_buffer: 4 << 20,
        };
        let (ours, mut agent) = tokio::io::duplex(4 << 20);
        let session = Session::client(ours, config).expect("valid smux config");
        let first = session.open_stream().await;
        agent
            .write_all(data)
            .await
            .expect("the duplex has room for the input");
        agent
            .shutdown()
            .await
            .expect("shutdown of an in-memory pipe");
        let mut sink = Vec::new();
        if let Ok(mut stream) = first {
            let _ = stream.read_to_end(&mut sink).await;
        }
        while let Some(mut stream) = session.accept_stream().await {
            let _ = stream.read_to_end(&mut sink).await;
        }
        let reason = session.closed().await;
        let _ = reason.to_string();
        assert!(
            sink.len() <= data.len(),
            "more bytes delivered than received"
        );
        drop(agent);
    }));
}

/// Command-line arguments (NUL-separated) through clap and `Config::from_args`, as `main` runs
/// them.
pub fn config_args(data: &[u8]) {
    use clap::FromArgMatches;

    let mut args = vec!["rds-auth-proxy".to_owned()];
    args.extend(
        data.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned()),
    );
    // A path argument may name a device (`--password-file /dev/stdin`) that blocks a read; that
    // is the user's choice on a real command line, not something a parser can fail on.
    if args
        .iter()
        .any(|a| a.contains("/dev") || a.contains("/proc"))
    {
        return;
    }
    // The definition `main` parses with (`version::command`), built once: building it
    // costs far more than parsing, and the fuzzer's executions belong to the parser.
    static COMMAND: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
    let mut command = COMMAND
        .get_or_init(|| {
            let mut cmd = crate::version::command();
            cmd.build();
            cmd
        })
        .clone();
    let parsed = command
        .try_get_matches_from_mut(&args)
        .and_then(|matches| crate::cli::Cli::from_arg_matches(&matches));
    match parsed {
        Ok(cli) => {
            if cli.command.is_none() {
                match crate::config::Config::from_args(&cli.proxy) {
                    Ok(config) => {
                        let _ = format!("{config:?}");
                    }
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.render().to_string();
        }
    }
}

/// A config file (`--config`), parsed and planned as `main` plans it with no flags set. A mistake
/// in the file must come back as an error of one line (what the user sees), never a panic.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Same reason as in `config_args`: a path key may name a device whose read blocks.
    if text.contains("/dev") || text.contains("/proc") {
        return;
    }
    let path = std::path::Path::new("fuzz.toml");
    let cli = crate::config_file::CliLayer::default();
    match crate::config_file::plan_from_text(path, text, &cli) {
        Ok(plan) => {
            let _ = (crate::config_file::describe(&plan), format!("{plan:?}"));
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                !message.trim_end().contains('\n'),
                "a config file error spans lines: {message:?}"
            );
        }
    }
}
