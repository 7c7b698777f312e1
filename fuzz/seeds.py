#!/usr/bin/env python3
"""Writes the hand-made seed corpus, fuzz/corpus/<target>/seed-*: valid messages and a few edge
cases per target. Run from the repository root; the files are committed (after `cargo fuzz cmin`
the fuzzer's own finds may join them)."""
import hashlib, json, os, struct, uuid

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

# --- startup: the client's first packet -------------------------------------------------------
def startup(major, minor, params):
    body = struct.pack(">HH", major, minor)
    for k, v in params:
        body += k + b"\0" + v + b"\0"
    body += b"\0"
    return struct.pack(">I", len(body) + 4) + body

write("startup", "ssl", bytes([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]))
write("startup", "gssenc", bytes([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]))
write("startup", "cancel", struct.pack(">III", 16, 80877102, 12345) + b"\1\2\3\4")
write("startup", "cancel-3.2-key", struct.pack(">III", 44, 80877102, 7) + bytes(range(32)))
write("startup", "psql", startup(3, 0, [(b"user", b"db_user"), (b"database", b"postgres"),
                                       (b"application_name", b"psql"), (b"client_encoding", b"UTF8")]))
write("startup", "v3.2-pq-option", startup(3, 2, [(b"user", b"u"), (b"_pq_.test", b"x")]))
write("startup", "replication", startup(3, 0, [(b"user", b"u"), (b"replication", b"database")]))
write("startup", "duplicate-user", startup(3, 0, [(b"user", b"a"), (b"user", b"b")]))
write("startup", "non-utf8", startup(3, 0, [(b"user", b"\xff\xfe"), (b"options", b"-c x=\xc3")]))
write("startup", "direct-tls", bytes([0x16, 3, 1, 0, 0xa0]))

# --- backend: the upstream before ReadyForQuery ------------------------------------------------
def msg(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body

def auth(code, rest=b""):
    return msg(b"R", struct.pack(">i", code) + rest)

after_ok = (auth(0) + msg(b"S", b"server_version\x0016.4\x00") + msg(b"K", struct.pack(">I", 42) + b"\1\2\3\4")
            + msg(b"Z", b"I"))
write("backend", "cleartext-ok", auth(3) + after_ok)
write("backend", "md5", auth(5, b"\x01\x02\x03\x04") + after_ok)
write("backend", "scram", auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")
      + auth(11, b"r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,s=QSXCR+Q6sek8bf92,i=4096")
      + auth(12, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=") + after_ok)
write("backend", "error", msg(b"E", b"SFATAL\0VFATAL\0C28000\0MPAM authentication failed for user \"u\"\0\0"))
write("backend", "negotiate-notice", msg(b"v", struct.pack(">II", 0, 1) + b"_pq_.x\0")
      + msg(b"N", b"SWARNING\0C01000\0Mhello\0\0") + auth(3))
write("backend", "gss", auth(7))
write("backend", "bad-length", b"R\x00\x00\x00\x02")
# Redshift's code 13 (dev-notes/engines-research.md §1.2's vector), one with a length past the
# end, and code 14.
write("backend", "redshift-digest", auth(13, struct.pack(">ii", 0, 8) + bytes(range(1, 9)) + struct.pack(">i", 16)
      + b"0123456789abcdef") + after_ok)
write("backend", "redshift-digest-cut", auth(13, struct.pack(">iii", 0, 8, 0x7fffffff) + b"\1\2"))
write("backend", "redshift-idp", auth(14))

# --- ssm_message: one data channel frame -------------------------------------------------------
def frame(mtype, seq, flags, ptype, payload, hl=116, digest=None, declared=None):
    out = struct.pack(">I", hl) + mtype.ljust(32, b" ")
    out += struct.pack(">IQqQ", 1, 1764670000000, seq, flags)
    mid = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0").bytes
    out += mid[8:] + mid[:8]
    out += digest if digest is not None else hashlib.sha256(payload).digest()
    if hl >= 116:
        out += struct.pack(">I", ptype)
    out += struct.pack(">I", len(payload) if declared is None else declared) + payload
    return out

hs_request = json.dumps({"AgentVersion": "3.1.1732.0", "RequestedClientActions": [
    {"ActionType": "SessionType", "ActionParameters": {"SessionType": "Port", "Properties": {
        "host": "172.31.25.54", "localPortNumber": "7406", "portNumber": "3000",
        "type": "LocalPortForwarding"}}}]}, separators=(",", ":")).encode()
ack = json.dumps({"AcknowledgedMessageType": "output_stream_data",
                  "AcknowledgedMessageId": "12345678-9abc-def0-1234-56789abcdef0",
                  "AcknowledgedMessageSequenceNumber": 3, "IsSequentialMessage": True},
                 separators=(",", ":")).encode()
closed = json.dumps({"MessageId": "x", "CreatedDate": "2026-12-02T10:00:00Z", "DestinationId": "d",
                     "SessionId": "s", "MessageType": "channel_closed", "SchemaVersion": 1,
                     "Output": "Session timed out"}, separators=(",", ":")).encode()
write("ssm_message", "output", frame(b"output_stream_data", 4, 0, 1, b"hello"))
write("ssm_message", "syn", frame(b"output_stream_data", 0, 1, 5, hs_request))
write("ssm_message", "ack", frame(b"acknowledge", 0, 3, 0, ack))
write("ssm_message", "closed-hl112", frame(b"channel_closed\0\0", 0, 0, 0, closed, hl=112))
write("ssm_message", "flag", frame(b"output_stream_data", 9, 0, 10, struct.pack(">I", 3)))
write("ssm_message", "pause", frame(b"pause_publication", 0, 0, 0, b"", digest=b"\xff" * 32, declared=77))

# --- ssm_payload: the JSON and flag payloads ---------------------------------------------------
write("ssm_payload", "handshake-request", hs_request)
write("ssm_payload", "handshake-kms", json.dumps({"AgentVersion": "3.0.196.0", "RequestedClientActions": [
    {"ActionType": "KMSEncryption", "ActionParameters": {"KMSKeyId": "k"}},
    {"ActionType": "SessionType", "ActionParameters": {"SessionType": "Standard_Stream", "Properties": None}},
    {"ActionType": "Other", "ActionParameters": None}]}).encode())
write("ssm_payload", "handshake-null-actions", b'{"AgentVersion":"2.3.722.1","RequestedClientActions":null}')
write("ssm_payload", "handshake-complete", b'{"HandshakeTimeToComplete":1234567,"CustomerMessage":"hi"}')
write("ssm_payload", "ack", ack)
write("ssm_payload", "closed", closed)
write("ssm_payload", "flag", struct.pack(">I", 2))

# --- smux: what the agent sends on a session where we opened stream 3 --------------------------
def smux(cmd, sid, data=b""):
    return struct.pack("<BBHI", 1, cmd, len(data), sid) + data

write("smux", "data-fin", smux(2, 3, b"R\0\0\0\x08\0\0\0\x03") + smux(3, 0) + smux(1, 3))
write("smux", "peer-streams", smux(0, 2) + smux(2, 2, b"x" * 40) + smux(0, 4) + smux(1, 2)
      + smux(2, 99, b"late") + smux(2, 3, b"y"))
write("smux", "cut", smux(2, 3, b"abc")[:9])
write("smux", "bad-version", b"\x02\x02\x00\x00\x03\x00\x00\x00")
write("smux", "nop-payload", b"\x01\x03\x01\x00\x00\x00\x00\x00z")

# --- config_args: NUL-separated command lines --------------------------------------------------
def argv(*args):
    return b"\0".join(a.encode() for a in args)

write("config_args", "direct", argv("--target", "mydb.abc123.eu-central-1.rds.amazonaws.com"))
write("config_args", "ssm", argv("--target", "db.x.us-east-1.rds.amazonaws.com:5433", "--via", "ssm",
                                 "--ssm-target", "i-0123456789abcdef0", "--ssm-sessions", "2",
                                 "--ssm-max-payload", "1024", "--db-user", "iam"))
write("config_args", "remote", argv("-a", "0.0.0.0", "-p", "7000", "--target", "h:1", "--connect-addr",
                                    "[::1]:5432", "--max-connections", "5"))
write("config_args", "secret", argv("--target", "h", "--password-secret", "arn:aws:secretsmanager:x",
                                    "--password-secret-key", "pw", "--log-format", "json", "-q"))
write("config_args", "sim", argv("sim", "--ssm-drop-rate", "0.01", "--ssm-reorder-rate", "0.5"))
write("config_args", "token", argv("token", "--hostname", "h", "--username", "u", "--region", "eu-west-1"))

# --- config_file: TOML files as `--config` reads them ------------------------------------------
with open(os.path.join(os.path.dirname(ROOT), "..", "config", "rds-auth-proxy.toml"), "rb") as f:
    write("config_file", "shipped-example", f.read())
write("config_file", "one-target", b'target = "db.abc.eu-west-1.rds.amazonaws.com"\nregion = "eu-west-1"\n')
write("config_file", "two-targets", b'log_format = "json"\nhttp_port = 9090\n\n[[target]]\nname = "a"\n'
      b'target = "a.x.us-east-1.rds.amazonaws.com:5433"\nport = 6543\nvia = "ssm"\nssm_target = "i-0123456789abcdef0"\n'
      b'ssm_sessions = 2\n\n[[target]]\nname = "b"\ntarget = "b.x.us-east-1.rds.amazonaws.com"\nport = 6544\n'
      b'db_user = "app"\nmax_connections = 5\n')
write("config_file", "unknown-key", b'[[target]]\nname = "a"\ntarget = "h"\nbogus_key = 1\n')
write("config_file", "wrong-type", b'[[target]]\nname = "a"\ntarget = "h"\nport = "six"\n')
write("config_file", "bad-toml", b'[[target]\nname = "a\n')
write("config_file", "duplicate-name", b'[[target]]\nname = "a"\ntarget = "h"\n[[target]]\nname = "a"\ntarget = "i"\nport = 6544\n')
write("config_file", "lookup", b'[[target]]\nname = "c"\ndb_cluster = "my-cluster"\nreader = true\nssm_target = "auto"\nssm_tag = ["env=dev"]\n')
