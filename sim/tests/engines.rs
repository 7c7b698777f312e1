//! The simulator's Aurora DSQL and Redshift fronts and their APIs, driven directly (no proxy) by
//! a small hand-written PostgreSQL client over real TLS and by SigV4-signed HTTP calls: what each
//! front accepts and refuses, the Redshift user mapping, the password methods (MD5, cleartext,
//! Redshift's code 13), AccessDenied switches, and DSQL's connection-age cut. One simulator (one
//! PostgreSQL) for the whole file.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::{Buf, BufMut, BytesMut};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use rds_auth_proxy_protocol::pg::backend;
use rds_auth_proxy_protocol::pg::startup::encode_startup;
use rds_auth_proxy_sim::redshift::{digest_answer_message, digest_response, RedshiftAuthMethod};
use rds_auth_proxy_sim::sigv4::TemporaryCredentials;
use rds_auth_proxy_sim::{
    SimOptions, Simulator, SIM_DSQL_CLUSTER, SIM_DSQL_ENDPOINT, SIM_REDSHIFT_CLUSTER, SIM_REDSHIFT_DB,
    SIM_REDSHIFT_ENDPOINT, SIM_REDSHIFT_SERVERLESS_ENDPOINT, SIM_REDSHIFT_WORKGROUP, SIM_REDSHIFT_WORKGROUP_ID,
};

const REGION: &str = "eu-central-1";
/// Upper bound for any one exchange, so a wedged front fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(20);
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Keys to sign with: the simulator's own, or temporary ones it issued.
#[derive(Clone)]
struct Keys {
    akid: String,
    secret: String,
    session_token: Option<String>,
}

impl Keys {
    fn of(sim: &Simulator) -> Keys {
        Keys {
            akid: sim.credentials.access_key_id.clone(),
            secret: sim.credentials.secret_access_key.clone(),
            session_token: None,
        }
    }

    fn temporary(issued: &TemporaryCredentials) -> Keys {
        Keys {
            akid: issued.access_key_id.clone(),
            secret: issued.secret_access_key.clone(),
            session_token: Some(issued.session_token.clone()),
        }
    }

    fn credentials(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(&self.akid, &self.secret, self.session_token.clone(), None, "test")
    }
}

/// A DSQL auth token as the SDKs make it: `GET https://HOST/?Action=…` presigned for `service`.
fn dsql_token(host: &str, action: &str, service: &str, keys: &Keys) -> String {
    let identity = keys.credentials().into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(Duration::from_secs(900));
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(service)
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .expect("params")
        .into();
    let mut query = format!("Action={action}");
    let url = format!("https://{host}/?{query}");
    let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[])).expect("signable");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    for (name, value) in instructions.into_parts().1 {
        query.push_str(&format!("&{name}={}", utf8_percent_encode(&value, QUERY_VALUE)));
    }
    format!("{host}/?{query}")
}

/// One SigV4-signed HTTP call: status and body.
async fn aws_call(
    endpoint_url: &str,
    method: &str,
    path: &str,
    service: &str,
    extra_headers: &[(&str, &str)],
    body: &str,
    keys: &Keys,
) -> (u16, String) {
    let addr = endpoint_url.strip_prefix("http://").expect("http endpoint").to_owned();
    let mut headers: Vec<(String, String)> = vec![("host".into(), addr.clone())];
    headers.extend(extra_headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let identity = keys.credentials().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let url = format!("http://{addr}{path}");
    let signable = SignableRequest::new(
        method,
        &url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body.as_bytes()),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    for (name, value) in instructions.headers() {
        headers.push((name.to_owned(), value.to_owned()));
    }
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()));
    let mut tcp = TcpStream::connect(&addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    timeout(GUARD, tcp.read_to_end(&mut response)).await.expect("in time").expect("read");
    let response = String::from_utf8(response).expect("utf8");
    let status = response[9..12].parse().expect("status");
    let (_, body) = response.split_once("\r\n\r\n").expect("head/body");
    (status, body.to_owned())
}

/// A Redshift Query API call (form POST).
async fn redshift(sim: &Simulator, keys: &Keys, form: &str) -> (u16, String) {
    let body = format!("{form}&Version=2012-12-01");
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    aws_call(&sim.redshift_api.endpoint_url(), "POST", "/", "redshift", &headers, &body, keys).await
}

/// A Redshift Serverless JSON 1.1 call.
async fn serverless(sim: &Simulator, keys: &Keys, operation: &str, body: Value) -> (u16, Value) {
    let target = format!("RedshiftServerless.{operation}");
    let headers = [("content-type", "application/x-amz-json-1.1"), ("x-amz-target", target.as_str())];
    let url = sim.redshift_serverless_api.endpoint_url();
    let (status, body) = aws_call(&url, "POST", "/", "redshift-serverless", &headers, &body.to_string(), keys).await;
    (status, serde_json::from_str(&body).expect("json"))
}

/// The text of `<Name>…</Name>` in an XML answer.
fn xml_field<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no {name} in {xml}")) + open.len();
    let end = xml[start..].find("</").expect("closing tag") + start;
    &xml[start..end]
}

/// How the test client opens TLS.
#[derive(Clone, Copy, PartialEq)]
enum Negotiation {
    SslRequest,
    Direct,
}

/// A refused login: the ErrorResponse's SQLSTATE and message.
#[derive(Debug, PartialEq)]
struct Refused {
    code: String,
    message: String,
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

fn client_tls(sim: &Simulator, sni: bool, alpn: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(sim.proxy_ca.pem().as_bytes()).expect("pem"))
        .expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_sni = sni;
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    Arc::new(config)
}

/// TCP, then TLS for `name` (verify-full against the ATS-like root).
async fn open_tls(addr: std::net::SocketAddr, name: &str, config: Arc<rustls::ClientConfig>, how: Negotiation) -> std::io::Result<Tls> {
    let mut tcp = TcpStream::connect(addr).await?;
    if how == Negotiation::SslRequest {
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        assert_eq!(&answer, b"S");
    }
    let name = ServerName::try_from(name.to_owned()).expect("name");
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// Startup and login; on success the stream (at ReadyForQuery) and the server_version reported.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    user: &str,
    database: &str,
    password: &str,
) -> Result<(S, String), Refused> {
    let params = [("user", user), ("database", database)];
    stream.write_all(&encode_startup(3, 0, &params)).await.expect("startup");
    let mut buf = BytesMut::new();
    let mut version = String::new();
    loop {
        let msg = timeout(GUARD, backend::read_message(&mut stream, &mut buf, 1 << 20))
            .await
            .expect("in time")
            .map_err(|e| Refused { code: "EOF".into(), message: e.to_string() })?;
        match msg.tag() {
            b'R' => {
                let mut body = msg.body();
                match body.get_u32() {
                    0 => {}
                    3 => stream.write_all(&password_message(password.as_bytes())).await.expect("write"),
                    5 => {
                        let salt = [body[0], body[1], body[2], body[3]];
                        let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
                        stream.write_all(&password_message(hash.as_bytes())).await.expect("write");
                    }
                    13 => {
                        assert_eq!(body.get_u32(), 0, "algorithm 0: SHA-256");
                        let salt_len = body.get_u32() as usize;
                        let salt = body[..salt_len].to_vec();
                        body.advance(salt_len);
                        let nonce_len = body.get_u32() as usize;
                        let nonce = body[..nonce_len].to_vec();
                        let client_nonce = b"1733600000000";
                        let digest = digest_response(password.as_bytes(), &salt, &nonce, client_nonce);
                        stream.write_all(&digest_answer_message(&digest, client_nonce)).await.expect("write");
                    }
                    other => panic!("unexpected authentication request {other}"),
                }
            }
            b'E' => {
                let fields = backend::parse_error_fields(msg.body()).expect("error fields");
                return Err(Refused {
                    code: backend::error_field(&fields, b'C').unwrap_or("").to_owned(),
                    message: backend::error_field(&fields, b'M').unwrap_or("").to_owned(),
                });
            }
            b'S' if msg.body().starts_with(b"server_version\0") => {
                version = String::from_utf8_lossy(&msg.body()[15..msg.body().len() - 1]).into_owned();
            }
            b'Z' => return Ok((stream, version)),
            _ => {}
        }
    }
}

fn password_message(password: &[u8]) -> BytesMut {
    let mut m = BytesMut::new();
    m.put_u8(b'p');
    m.put_u32((4 + password.len() + 1) as u32);
    m.put_slice(password);
    m.put_u8(0);
    m
}

/// The first column of the first row of `sql`.
async fn query_one<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, sql: &str) -> String {
    let mut m = BytesMut::new();
    m.put_u8(b'Q');
    m.put_u32((sql.len() + 5) as u32);
    m.put_slice(sql.as_bytes());
    m.put_u8(0);
    stream.write_all(&m).await.expect("query");
    let mut buf = BytesMut::new();
    let mut value = None;
    loop {
        let msg = timeout(GUARD, backend::read_message(stream, &mut buf, 1 << 20)).await.expect("in time").expect("message");
        match msg.tag() {
            b'D' if value.is_none() => {
                let mut body = msg.body();
                body.advance(2);
                let len = body.get_i32() as usize;
                value = Some(String::from_utf8_lossy(&body[..len]).into_owned());
            }
            b'E' => panic!("query failed: {:?}", backend::parse_error_fields(msg.body())),
            b'Z' => return value.expect("a row"),
            _ => {}
        }
    }
}

async fn dsql_login(sim: &Simulator, user: &str, token: &str, how: Negotiation) -> Result<(Tls, String), Refused> {
    let config = client_tls(sim, true, how == Negotiation::Direct);
    let tls = open_tls(sim.dsql_addr, SIM_DSQL_ENDPOINT, config, how).await.expect("tls");
    login(tls, user, "postgres", token).await
}

async fn redshift_login(sim: &Simulator, name: &str, user: &str, password: &str) -> Result<(Tls, String), Refused> {
    let tls = open_tls(sim.redshift_addr, name, client_tls(sim, true, false), Negotiation::SslRequest).await.expect("tls");
    login(tls, user, SIM_REDSHIFT_DB, password).await
}

fn iam_refusal(user: &str) -> Refused {
    Refused {
        code: "28000".into(),
        message: format!("IAM authentication failed for user \"{user}\""),
    }
}

fn password_refusal(user: &str) -> Refused {
    Refused {
        code: "28000".into(),
        message: format!("password authentication failed for user \"{user}\""),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsql_and_redshift_fronts_and_apis() {
    let sim = Simulator::start(SimOptions::default()).await.expect("simulator starts");
    dsql_front(&sim).await;
    dsql_api(&sim).await;
    redshift_logins(&sim).await;
    redshift_api_errors(&sim).await;
    exports(&sim);
    sim.stop().await;
}

async fn dsql_front(sim: &Simulator) {
    let keys = Keys::of(sim);
    let state = &sim.dsql_state;
    // admin with DbConnectAdmin over SSLRequest; another role with DbConnect over direct TLS.
    let admin = dsql_token(SIM_DSQL_ENDPOINT, "DbConnectAdmin", "dsql", &keys);
    let (mut session, _) = dsql_login(sim, "admin", &admin, Negotiation::SslRequest).await.expect("admin logs in");
    assert_eq!(query_one(&mut session, "SELECT current_user").await, "admin");
    let reader = dsql_token(SIM_DSQL_ENDPOINT, "DbConnect", "dsql", &keys);
    let (mut session, _) = dsql_login(sim, "dsql_reader", &reader, Negotiation::Direct).await.expect("reader logs in");
    assert_eq!(query_one(&mut session, "SELECT current_user").await, "dsql_reader");
    assert_eq!(state.direct_tls.load(Ordering::Relaxed), 1);
    // Temporary credentials the simulator issued sign good tokens too.
    let temporary = Keys::temporary(&sim.credentials.issue_temporary(Duration::from_secs(900)));
    let token = dsql_token(SIM_DSQL_ENDPOINT, "DbConnect", "dsql", &temporary);
    dsql_login(sim, "dsql_reader", &token, Negotiation::SslRequest).await.expect("temporary credentials");
    assert_eq!(state.accepted.load(Ordering::Relaxed), 3);

    // The other action, the wrong service, a flipped signature, another host: refused.
    assert_eq!(dsql_login(sim, "admin", &reader, Negotiation::SslRequest).await.err(), Some(iam_refusal("admin")));
    assert_eq!(
        dsql_login(sim, "dsql_reader", &admin, Negotiation::SslRequest).await.err(),
        Some(iam_refusal("dsql_reader"))
    );
    let rds_db = dsql_token(SIM_DSQL_ENDPOINT, "DbConnect", "rds-db", &keys);
    assert_eq!(
        dsql_login(sim, "dsql_reader", &rds_db, Negotiation::SslRequest).await.err(),
        Some(iam_refusal("dsql_reader"))
    );
    let mut flipped = reader.clone();
    let last = flipped.pop().expect("signature");
    flipped.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        dsql_login(sim, "dsql_reader", &flipped, Negotiation::SslRequest).await.err(),
        Some(iam_refusal("dsql_reader"))
    );
    let elsewhere = dsql_token("other000000000000000000000.dsql.eu-central-1.on.aws", "DbConnect", "dsql", &keys);
    assert_eq!(
        dsql_login(sim, "dsql_reader", &elsewhere, Negotiation::SslRequest).await.err(),
        Some(iam_refusal("dsql_reader"))
    );
    assert_eq!(state.rejected.load(Ordering::Relaxed), 5);

    // Only database postgres.
    let tls = open_tls(sim.dsql_addr, SIM_DSQL_ENDPOINT, client_tls(sim, true, false), Negotiation::SslRequest).await.expect("tls");
    let refused = login(tls, "admin", "dev", &admin).await.expect_err("refused");
    assert_eq!(refused, Refused { code: "3D000".into(), message: "database \"dev\" does not exist".into() });

    // No SNI: DSQL cannot tell the cluster.
    let tls = open_tls(sim.dsql_addr, SIM_DSQL_ENDPOINT, client_tls(sim, false, false), Negotiation::SslRequest).await.expect("tls");
    let refused = login(tls, "admin", "postgres", &admin).await.expect_err("refused");
    assert_eq!(refused.code, "08P01");
    assert!(refused.message.contains("sni was not received"), "{refused:?}");
    assert_eq!(state.no_sni.load(Ordering::Relaxed), 1);

    // No TLS at all.
    let tcp = TcpStream::connect(sim.dsql_addr).await.expect("tcp");
    let refused = login(tcp, "admin", "postgres", &admin).await.expect_err("refused");
    assert_eq!(refused.code, "28000");

    // The connection-age cut: closed without a message.
    state.set_connection_age_limit(Duration::from_millis(300));
    let (mut session, _) = dsql_login(sim, "admin", &admin, Negotiation::SslRequest).await.expect("admin logs in");
    let mut byte = [0u8; 1];
    let read = timeout(GUARD, session.read(&mut byte)).await.expect("cut in time");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without a message: {read:?}");
    assert_eq!(state.age_cuts.load(Ordering::Relaxed), 1);
    state.set_connection_age_limit(Duration::from_secs(3600));
}

async fn dsql_api(sim: &Simulator) {
    let keys = Keys::of(sim);
    let url = sim.dsql_api.endpoint_url();
    let path = format!("/cluster/{SIM_DSQL_CLUSTER}");
    let (status, body) = aws_call(&url, "GET", &path, "dsql", &[], "", &keys).await;
    assert_eq!(status, 200, "{body}");
    let cluster: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(cluster["arn"], format!("arn:aws:dsql:eu-central-1:123456789012:cluster/{SIM_DSQL_CLUSTER}"));
    assert_eq!(cluster["status"], "ACTIVE");
    assert_eq!(cluster["endpoint"], SIM_DSQL_ENDPOINT);
    let (status, body) = aws_call(&url, "GET", "/cluster/nope", "dsql", &[], "", &keys).await;
    assert_eq!(status, 404);
    assert!(body.contains("ResourceNotFoundException"), "{body}");
    let (status, body) = aws_call(&url, "GET", &path, "rds", &[], "", &keys).await;
    assert_eq!(status, 403, "signed for another service: {body}");
    sim.dsql_api.control().deny("GetCluster", true);
    let (status, body) = aws_call(&url, "GET", &path, "dsql", &[], "", &keys).await;
    assert_eq!(status, 403);
    let denied: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(denied["__type"], "AccessDeniedException");
    let message = denied["message"].as_str().expect("message");
    assert!(message.contains("dsql:GetCluster on resource: arn:aws:dsql:eu-central-1:123456789012:cluster/"), "{message}");
    sim.dsql_api.control().deny("GetCluster", false);
    assert_eq!(sim.dsql_api.control().calls("GetCluster"), 3);
}

async fn redshift_logins(sim: &Simulator) {
    let keys = Keys::of(sim);
    let state = &sim.redshift_state;

    // GetClusterCredentials for an existing user; MD5 (the default) over the prefixed name.
    let form = format!("Action=GetClusterCredentials&DbUser=alice&ClusterIdentifier={SIM_REDSHIFT_CLUSTER}&DbName=dev");
    let (status, xml) = redshift(sim, &keys, &form).await;
    assert_eq!(status, 200, "{xml}");
    assert_eq!(xml_field(&xml, "DbUser"), "IAM:alice");
    assert!(xml_field(&xml, "Expiration").ends_with('Z'));
    let alice = xml_field(&xml, "DbPassword").to_owned();
    let (mut session, version) = redshift_login(sim, SIM_REDSHIFT_ENDPOINT, "IAM:alice", &alice).await.expect("alice");
    assert_eq!(version, "8.0.2");
    assert_eq!(query_one(&mut session, "SELECT current_user").await, "alice");
    assert_eq!(
        redshift_login(sim, SIM_REDSHIFT_ENDPOINT, "IAM:alice", &alice[1..]).await.err(),
        Some(password_refusal("IAM:alice"))
    );
    assert_eq!(
        redshift_login(sim, SIM_REDSHIFT_ENDPOINT, "alice", &alice).await.err(),
        Some(password_refusal("alice")),
        "the login name is the API's, prefix included"
    );
    // Good at the cluster only, not at the workgroup (the name asked for by SNI).
    assert_eq!(
        redshift_login(sim, SIM_REDSHIFT_SERVERLESS_ENDPOINT, "IAM:alice", &alice).await.err(),
        Some(password_refusal("IAM:alice"))
    );

    // AutoCreate, cleartext.
    state.set_auth_method(RedshiftAuthMethod::Cleartext);
    let form = format!("Action=GetClusterCredentials&DbUser=bob&AutoCreate=true&ClusterIdentifier={SIM_REDSHIFT_CLUSTER}&DurationSeconds=3600");
    let (status, xml) = redshift(sim, &keys, &form).await;
    assert_eq!(status, 200, "{xml}");
    assert_eq!(xml_field(&xml, "DbUser"), "IAMA:bob");
    let bob = xml_field(&xml, "DbPassword").to_owned();
    let (mut session, _) = redshift_login(sim, SIM_REDSHIFT_ENDPOINT, "IAMA:bob", &bob).await.expect("bob");
    assert_eq!(query_one(&mut session, "SELECT current_user").await, "bob");

    // WithIAM as the IAM user, Redshift's code 13.
    state.set_auth_method(RedshiftAuthMethod::Sha256Digest);
    let form = format!("Action=GetClusterCredentialsWithIAM&ClusterIdentifier={SIM_REDSHIFT_CLUSTER}&DbName=dev");
    let (status, xml) = redshift(sim, &keys, &form).await;
    assert_eq!(status, 200, "{xml}");
    assert_eq!(xml_field(&xml, "DbUser"), "IAM:sim-user");
    let own = xml_field(&xml, "DbPassword").to_owned();
    let (mut session, _) = redshift_login(sim, SIM_REDSHIFT_ENDPOINT, "IAM:sim-user", &own).await.expect("sim-user");
    assert_eq!(query_one(&mut session, "SELECT current_user").await, "IAM:sim-user");
    assert_eq!(
        redshift_login(sim, SIM_REDSHIFT_ENDPOINT, "IAM:sim-user", "wrong").await.err(),
        Some(password_refusal("IAM:sim-user"))
    );

    // Serverless, with an assumed role's temporary credentials; MD5 again.
    state.set_auth_method(RedshiftAuthMethod::Md5);
    let role = sim.credentials.issue_temporary_as(
        Duration::from_secs(3600),
        Some(("arn:aws:sts::123456789012:assumed-role/analyst/s1".into(), "AROASIMROLE0EXAMPLE01:s1".into())),
    );
    let role = Keys::temporary(&role);
    let (status, creds) = serverless(sim, &role, "GetCredentials", json!({"workgroupName": SIM_REDSHIFT_WORKGROUP, "dbName": "dev"})).await;
    assert_eq!(status, 200, "{creds}");
    assert_eq!(creds["dbUser"], "IAMR:analyst");
    assert!(creds["expiration"].is_u64(), "epoch seconds: {creds}");
    let password = creds["dbPassword"].as_str().expect("password").to_owned();
    let (mut session, _) =
        redshift_login(sim, SIM_REDSHIFT_SERVERLESS_ENDPOINT, "IAMR:analyst", &password).await.expect("analyst");
    assert_eq!(query_one(&mut session, "SELECT current_user").await, "IAMR:analyst");
    assert_eq!(
        redshift_login(sim, SIM_REDSHIFT_ENDPOINT, "IAMR:analyst", &password).await.err(),
        Some(password_refusal("IAMR:analyst")),
        "a workgroup's password is no good at the cluster"
    );
    assert_eq!(state.accepted_by_name.lock().unwrap().get(SIM_REDSHIFT_SERVERLESS_ENDPOINT), Some(&1));

    // Everything issued so far stops working at once.
    sim.expire_issued();
    assert_eq!(
        redshift_login(sim, SIM_REDSHIFT_ENDPOINT, "IAM:alice", &alice).await.err(),
        Some(password_refusal("IAM:alice"))
    );
    assert_eq!(state.accepted.load(Ordering::Relaxed), 4);

    // No direct TLS (the connection is closed), no plain startup.
    let mut tcp = TcpStream::connect(sim.redshift_addr).await.expect("tcp");
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0]).await.expect("write");
    let mut sink = Vec::new();
    let read = timeout(GUARD, tcp.read_to_end(&mut sink)).await.expect("closed in time");
    assert!(read.is_err() || sink.is_empty(), "closed without an answer");
    assert_eq!(state.direct_tls_attempts.load(Ordering::Relaxed), 1);
    let tcp = TcpStream::connect(sim.redshift_addr).await.expect("tcp");
    let refused = login(tcp, "IAM:alice", "dev", "x").await.expect_err("refused");
    assert_eq!(refused.code, "28000");
    assert!(refused.message.contains("SSL off"), "{refused:?}");
}

async fn redshift_api_errors(sim: &Simulator) {
    let keys = Keys::of(sim);
    let control = sim.redshift_api.control();
    for (form, status, code) in [
        ("Action=GetClusterCredentials&DbUser=1alice&ClusterIdentifier=simrs", 400, "InvalidParameterValue"),
        ("Action=GetClusterCredentials&DbUser=a%3Ab&ClusterIdentifier=simrs", 400, "InvalidParameterValue"),
        ("Action=GetClusterCredentials&DbUser=PUBLIC&ClusterIdentifier=simrs", 400, "InvalidParameterValue"),
        ("Action=GetClusterCredentials&DbUser=alice&ClusterIdentifier=simrs&DurationSeconds=899", 400, "InvalidParameterValue"),
        ("Action=GetClusterCredentials&DbUser=alice&ClusterIdentifier=nope", 404, "ClusterNotFound"),
        ("Action=GetClusterCredentialsWithIAM&ClusterIdentifier=SIMRS", 404, "ClusterNotFound"),
        ("Action=DescribeClusters&ClusterIdentifier=nope", 404, "ClusterNotFound"),
    ] {
        let (got, xml) = redshift(sim, &keys, form).await;
        assert_eq!((got, xml_field(&xml, "Code")), (status, code), "{form}");
    }
    let (status, xml) = redshift(sim, &keys, "Action=DescribeClusters&ClusterIdentifier=simrs").await;
    assert_eq!(status, 200, "{xml}");
    assert_eq!(xml_field(&xml, "Address"), SIM_REDSHIFT_ENDPOINT);
    assert_eq!(xml_field(&xml, "Port"), "5439");
    assert_eq!(xml_field(&xml, "ClusterStatus"), "available");

    control.deny("GetClusterCredentials", true);
    control.deny("GetClusterCredentialsWithIAM", true);
    let (status, xml) = redshift(sim, &keys, "Action=GetClusterCredentials&DbUser=alice&ClusterIdentifier=simrs").await;
    assert_eq!((status, xml_field(&xml, "Code")), (403, "AccessDenied"));
    assert!(xml_field(&xml, "Message").starts_with(
        "User: arn:aws:iam::123456789012:user/sim-user is not authorized to perform: redshift:GetClusterCredentials on resource: arn:aws:redshift:eu-central-1:123456789012:dbuser:simrs/alice"
    ), "{xml}");
    let (status, xml) = redshift(sim, &keys, "Action=GetClusterCredentialsWithIAM&ClusterIdentifier=simrs&DbName=dev").await;
    assert_eq!((status, xml_field(&xml, "Code")), (403, "AccessDenied"));
    assert!(xml.contains("on resource: arn:aws:redshift:eu-central-1:123456789012:dbname:simrs/dev"), "{xml}");
    control.deny("GetClusterCredentials", false);
    control.deny("GetClusterCredentialsWithIAM", false);
    assert_eq!(control.calls("GetClusterCredentials"), 8);

    // Signed for another service or with unknown keys: AWS's signature errors.
    let body = "Action=DescribeClusters&Version=2012-12-01";
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let (status, xml) = aws_call(&sim.redshift_api.endpoint_url(), "POST", "/", "rds", &headers, body, &keys).await;
    assert_eq!((status, xml_field(&xml, "Code")), (403, "SignatureDoesNotMatch"));
    let stranger = Keys::of(sim);
    let stranger = Keys { akid: "AKIASTRANGER00000000".into(), ..stranger };
    let (status, xml) = redshift(sim, &stranger, "Action=DescribeClusters").await;
    assert_eq!((status, xml_field(&xml, "Code")), (403, "InvalidClientTokenId"));

    // Serverless.
    let (status, body) = serverless(sim, &keys, "GetCredentials", json!({"workgroupName": "nope"})).await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("ResourceNotFoundException")));
    assert_eq!(body["message"], "Serverless workgroup nope not found.");
    let (status, body) =
        serverless(sim, &keys, "GetCredentials", json!({"workgroupName": SIM_REDSHIFT_WORKGROUP, "durationSeconds": 4000})).await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("ValidationException")));
    let (status, body) = serverless(sim, &keys, "GetWorkgroup", json!({"workgroupName": SIM_REDSHIFT_WORKGROUP})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["workgroup"]["endpoint"]["address"], SIM_REDSHIFT_SERVERLESS_ENDPOINT);
    assert_eq!(body["workgroup"]["workgroupId"], SIM_REDSHIFT_WORKGROUP_ID);
    sim.redshift_serverless_api.control().deny("GetCredentials", true);
    let (status, body) = serverless(sim, &keys, "GetCredentials", json!({"workgroupName": SIM_REDSHIFT_WORKGROUP})).await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("AccessDeniedException")));
    let message = body["message"].as_str().expect("message");
    assert!(message.contains(&format!(
        "redshift-serverless:GetCredentials on resource: arn:aws:redshift-serverless:eu-central-1:123456789012:workgroup/{SIM_REDSHIFT_WORKGROUP_ID}"
    )), "{message}");
    sim.redshift_serverless_api.control().deny("GetCredentials", false);
    assert_eq!(sim.redshift_serverless_api.control().calls("GetCredentials"), 4);
}

fn exports(sim: &Simulator) {
    let exports: std::collections::HashMap<_, _> = sim.exports().into_iter().collect();
    assert_eq!(exports["SIM_DSQL_ENDPOINT"], SIM_DSQL_ENDPOINT);
    assert_eq!(exports["SIM_DSQL_ADDR"], sim.dsql_addr.to_string());
    assert_eq!(exports["SIM_REDSHIFT_ADDR"], exports["SIM_REDSHIFT_SERVERLESS_ADDR"]);
    assert_eq!(exports["SIM_REDSHIFT_DB"], "dev");
    for api in ["AWS_ENDPOINT_URL_REDSHIFT", "AWS_ENDPOINT_URL_REDSHIFT_SERVERLESS", "AWS_ENDPOINT_URL_DSQL"] {
        assert!(exports[api].starts_with("http://127.0.0.1:"), "{api}");
    }
}
