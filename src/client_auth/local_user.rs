//! Which OS user owns the other end of a loopback TCP connection, so a loopback client can be held
//! to the rule the Unix socket already follows: only the proxy's own user gets in.
//!
//! On Linux the kernel says so in one round trip: a NETLINK_SOCK_DIAG `inet_diag` request for
//! exactly the client's socket (its address and port, ours as its peer) answers with the uid
//! that created it. Where netlink is not available (a kernel without `inet_diag`, a seccomp
//! profile) `/proc/net/tcp` and `tcp6` are read instead. Elsewhere the owner is not looked up at
//! all, and the listener says so when it starts.

use std::net::SocketAddr;

/// Why the owner of a client's socket is not known.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Neither the kernel's socket diagnostics nor `/proc/net/tcp*` list the socket: the client
    /// closed it already, or it is not on this host.
    #[error("no socket {peer} → {local} is listed by the kernel (has the client closed it?)")]
    NotFound { peer: SocketAddr, local: SocketAddr },
    /// The socket is in TIME_WAIT: it no longer says who opened it.
    #[error("the socket {peer} → {local} is closed on the client's side")]
    Closed { peer: SocketAddr, local: SocketAddr },
    #[error("cannot read {path}")]
    Proc {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("looking up the owner of client sockets is not available on this OS")]
    Unsupported,
}

/// Whether [`owner`] can work on this OS (Linux only for now).
pub const SUPPORTED: bool = cfg!(target_os = "linux");

/// The uid that owns the client's end of the TCP connection the proxy sees from `peer` on its
/// own address `local`. Both hosts' ends are on this machine (loopback), so the kernel knows.
pub fn owner(peer: SocketAddr, local: SocketAddr) -> Result<u32, LookupError> {
    #[cfg(target_os = "linux")]
    {
        match linux::netlink_owner(peer, local) {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "inet_diag netlink lookup failed; reading /proc/net/tcp");
                linux::proc_owner(peer, local)
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (peer, local);
        Err(LookupError::Unsupported)
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::{IpAddr, SocketAddr};

    use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

    use super::LookupError;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    const IPPROTO_TCP: u8 = 6;
    const TCP_TIME_WAIT: u8 = 6;
    const TCP_LISTEN: u8 = 10;
    /// `struct nlmsghdr` + `struct inet_diag_req_v2`.
    const REQUEST_LEN: usize = 16 + 56;
    /// Where `idiag_uid` sits in a reply: after the nlmsghdr (16), family, state, timer,
    /// retrans (4), the sockid (48), expires, rqueue and wqueue (12).
    const UID_AT: usize = 16 + 4 + 48 + 12;

    /// The socket whose local end is `peer` and remote end `local`, asked for by its exact
    /// address (no dump): `Ok(Err(_))` is the kernel's answer (not found, closed), `Err(_)`
    /// means netlink itself is unusable and `/proc` should be asked.
    pub fn netlink_owner(peer: SocketAddr, local: SocketAddr) -> nix::Result<Result<u32, LookupError>> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        use std::os::fd::AsRawFd;
        let request = request(peer, local);
        socket::sendto(fd.as_raw_fd(), &request, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        let mut reply = [0u8; 512];
        let n = socket::recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty())?;
        Ok(parse_reply(&reply[..n], peer, local))
    }

    /// The request: `NLM_F_REQUEST` without `NLM_F_DUMP`, so the kernel looks the one socket up
    /// by its four-tuple (`inet_diag_find_one_icsk`) instead of walking every socket.
    pub(super) fn request(peer: SocketAddr, local: SocketAddr) -> [u8; REQUEST_LEN] {
        // The family of the proxy's side: an IPv6 listener sees an IPv4 client as ::ffff:a.b.c.d,
        // and the kernel's lookup understands the mapped form.
        let family: u8 = if local.is_ipv4() { 2 } else { 10 };
        let mut m = [0u8; REQUEST_LEN];
        m[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        m[8..12].copy_from_slice(&1u32.to_ne_bytes());
        let r = &mut m[16..];
        r[0] = family;
        r[1] = IPPROTO_TCP;
        r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
        // inet_diag_sockid: the client's socket, so its source is our peer.
        let id = &mut r[8..];
        id[0..2].copy_from_slice(&peer.port().to_be_bytes());
        id[2..4].copy_from_slice(&local.port().to_be_bytes());
        put_addr(&mut id[4..20], peer.ip());
        put_addr(&mut id[20..36], local.ip());
        id[40..48].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
        m
    }

    fn put_addr(out: &mut [u8], ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
        }
    }

    pub(super) fn parse_reply(reply: &[u8], peer: SocketAddr, local: SocketAddr) -> Result<u32, LookupError> {
        let not_found = || LookupError::NotFound { peer, local };
        let u16_at = |i: usize| reply.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let u32_at = |i: usize| reply.get(i..i + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        match u16_at(4) {
            Some(SOCK_DIAG_BY_FAMILY) => {}
            // NLMSG_ERROR: ENOENT when no such socket; any error means we cannot tell.
            Some(NLMSG_ERROR) | None | Some(_) => return Err(not_found()),
        }
        let Some(uid) = u32_at(UID_AT) else {
            return Err(not_found());
        };
        // The kernel falls back to a listener on that address when no connection matches; a
        // listener is not the client. A TIME_WAIT socket reports uid 0, which is nobody's.
        // A socket its process already closed (a cancel request sent, then dropped) keeps the
        // uid that created it, and counts.
        let state = reply[17];
        let sport = reply.get(20..22).map(|b| u16::from_be_bytes([b[0], b[1]]));
        if state == TCP_LISTEN || sport != Some(peer.port()) {
            return Err(not_found());
        }
        if state == TCP_TIME_WAIT {
            return Err(LookupError::Closed { peer, local });
        }
        Ok(uid)
    }

    /// The same answer from `/proc/net/tcp` (IPv4 clients, IPv4-mapped ones included) or
    /// `/proc/net/tcp6`: the line whose local address is `peer` and remote address `local`.
    pub fn proc_owner(peer: SocketAddr, local: SocketAddr) -> Result<u32, LookupError> {
        let (path, peer_hex, local_hex) = match (peer.ip().to_canonical(), local.ip().to_canonical()) {
            (IpAddr::V4(p), IpAddr::V4(l)) => ("/proc/net/tcp", v4_hex(p.octets()), v4_hex(l.octets())),
            _ => ("/proc/net/tcp6", v6_hex(peer.ip()), v6_hex(local.ip())),
        };
        let table = std::fs::read_to_string(path).map_err(|source| LookupError::Proc { path, source })?;
        find_in_table(
            &table,
            &format!("{peer_hex}:{:04X}", peer.port()),
            &format!("{local_hex}:{:04X}", local.port()),
        )
        .ok_or(LookupError::NotFound { peer, local })?
        .ok_or(LookupError::Closed { peer, local })
    }

    /// `Some(Some(uid))` for a socket that says who opened it, `Some(None)` for one in
    /// TIME_WAIT, `None` when no line matches.
    pub(super) fn find_in_table(table: &str, local_field: &str, remote_field: &str) -> Option<Option<u32>> {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[1] != local_field || f[2] != remote_field {
                return None;
            }
            let state = u8::from_str_radix(f[3], 16).ok()?;
            if state == TCP_LISTEN {
                return None;
            }
            Some(f[7].parse::<u32>().ok().filter(|_| state != TCP_TIME_WAIT))
        })
    }

    /// The kernel prints an IPv4 address as one host-order word, `%08X`.
    fn v4_hex(octets: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(octets))
    }

    /// And an IPv6 address as four such words.
    fn v6_hex(ip: IpAddr) -> String {
        let octets = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        octets
            .chunks_exact(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// Our own connection on loopback: both ways of looking find our uid, for IPv4 and IPv6
    /// listeners, and an IPv4 client of an IPv6 listener (`::ffff:127.0.0.1`).
    #[test]
    fn finds_our_own_uid_by_netlink_and_by_proc() {
        let me = nix::unistd::geteuid().as_raw();
        for (listen, connect) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1"), ("[::]:0", "127.0.0.1")] {
            let Ok(listener) = TcpListener::bind(listen) else {
                continue; // no IPv6 on this host
            };
            let port = listener.local_addr().unwrap().port();
            let _client = TcpStream::connect((connect, port)).unwrap();
            let (accepted, peer) = listener.accept().unwrap();
            let local = accepted.local_addr().unwrap();
            assert_eq!(owner(peer, local).unwrap(), me, "{listen} ← {connect}");
            assert_eq!(linux::netlink_owner(peer, local).unwrap().unwrap(), me, "netlink, {listen}");
            assert_eq!(linux::proc_owner(peer, local).unwrap(), me, "/proc, {listen}");
            // A port nobody uses: not found, by either way.
            let gone = SocketAddr::new(peer.ip(), 1);
            assert!(matches!(owner(gone, local), Err(LookupError::NotFound { .. })), "{listen}");
            assert!(matches!(linux::proc_owner(gone, local), Err(LookupError::NotFound { .. })), "{listen}");
        }
    }

    #[test]
    fn request_bytes_and_proc_table() {
        let m = linux::request("127.0.0.1:40000".parse().unwrap(), "127.0.0.1:6543".parse().unwrap());
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 72);
        assert_eq!(&m[16..18], &[2, 6], "AF_INET, TCP");
        assert_eq!(&m[24..28], &[0x9c, 0x40, 0x19, 0x8f], "ports, big-endian");
        assert_eq!(&m[28..32], &[127, 0, 0, 1]);
        assert_eq!(&m[44..48], &[127, 0, 0, 1]);
        assert_eq!(&m[64..72], &[0xff; 8]);

        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1993 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0000000000000000 100 0 0 10 0\n\
           1: 0100007F:9C40 0100007F:1993 01 00000000:00000000 00:00000000 00000000  1000        0 200 1 0000000000000000 20 4 30 10 -1\n\
           2: 0100007F:9C41 0100007F:1993 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000\n";
        assert_eq!(linux::find_in_table(table, "0100007F:9C40", "0100007F:1993"), Some(Some(1000)));
        assert_eq!(linux::find_in_table(table, "0100007F:9C41", "0100007F:1993"), Some(None), "TIME_WAIT");
        assert_eq!(linux::find_in_table(table, "0100007F:1993", "00000000:0000"), None, "a listener is no client");
        assert_eq!(linux::find_in_table(table, "0100007F:9C42", "0100007F:1993"), None);
    }
}
