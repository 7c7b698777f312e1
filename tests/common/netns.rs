//! A remote client without a second host: a network namespace joined to this one by a veth pair.
//! A process run in it (`ip netns exec`) reaches the proxy from another address, through a real
//! link, so the proxy sees a non-loopback peer — whatever addresses the host itself has. Needs
//! root (CI runs as root); under `CI=true` a missing prerequisite fails the test.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// `true` when the test can go on as root. Otherwise it fails under `CI=true`, and elsewhere
/// says it is skipped and returns `false`.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root (network namespaces, other OS users); CI=true, so this fails instead of skipping");
    }
    eprintln!("SKIPPED {test}: needs root (network namespaces, other OS users); CI runs it as root");
    false
}

/// A network namespace joined to the host by a veth pair, removed on drop (also when the test
/// fails). Names and addresses are unique per process and per namespace, so tests run in
/// parallel.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    /// The host's end of the pair: where a proxy listens for the namespace's clients.
    pub host_ip: String,
    /// The namespace's end: the peer address the proxy sees.
    pub ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip is installed (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn create() -> Netns {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 64, "more namespaces than /30 subnets in one /24");
        // Interface names are at most 15 bytes: "rv" + 5 digits + 2 + "h".
        let tag = format!("{}{n:02}", pid % 100_000);
        // One /24 per process (by pid), one /30 in it per namespace.
        let net = format!("10.{}.{}", 200 + (pid >> 8) % 50, pid % 256);
        let ns = Netns {
            name: format!("rap-{pid}-{n}"),
            host_if: format!("rv{tag}h"),
            ns_if: format!("rv{tag}n"),
            host_ip: format!("{net}.{}", n * 4 + 1),
            ns_ip: format!("{net}.{}", n * 4 + 2),
        };
        // The guard exists before the first command, so a half-made pair is removed too.
        ip(&["netns", "add", &ns.name]);
        ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.ns_if]);
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&["netns", "exec", &ns.name, "ip", "addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns.ns_if]);
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", &ns.ns_if, "up"]);
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// The namespace's side stops answering, like a laptop that went to sleep: no FIN, no RST.
    pub fn vanish(&self) {
        ip(&["netns", "exec", &self.name, "ip", "link", "set", &self.ns_if, "down"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the host's.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).stderr(Stdio::null()).status();
    }
}
