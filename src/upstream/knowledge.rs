//! What this process has learnt about one target's server: its major version (direct TLS or
//! not) and which logins it asks a cleartext password.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use crate::tls::DirectTls;

/// What this process has learnt about one target's server, in memory: its PostgreSQL major
/// version (from the `server_version` of the last successful login) and whether it refused
/// direct TLS. Decides, per `--direct-tls`, whether a new connection opens TLS at once.
#[derive(Debug, Default)]
pub struct ServerKnowledge {
    mode: DirectTls,
    /// 0 until a login has shown it.
    major: AtomicU32,
    /// A direct TLS attempt failed before TLS completed (`--direct-tls auto`): SSLRequest only.
    refuses_direct: AtomicBool,
    /// (user, database) logins that the server last asked for a cleartext password and that were
    /// answered with an IAM token: the next one sends its token right behind the startup message
    /// (one round trip less). Forgotten as soon as the server asks otherwise.
    cleartext: Mutex<HashSet<(String, String)>>,
}

/// A clone starts from what this one knows now; from then on each learns on its own.
impl Clone for ServerKnowledge {
    fn clone(&self) -> Self {
        ServerKnowledge {
            mode: self.mode,
            major: AtomicU32::new(self.major.load(Ordering::Relaxed)),
            refuses_direct: AtomicBool::new(self.refuses_direct.load(Ordering::Relaxed)),
            cleartext: Mutex::new(self.cleartext_logins().clone()),
        }
    }
}

/// The first PostgreSQL major version with direct TLS.
pub const DIRECT_TLS_MIN_VERSION: u32 = 17;

/// Most (user, database) logins remembered as asked for a cleartext password; past it a new
/// one is simply not remembered (its logins take the usual round trip).
const MAX_CLEARTEXT_LOGINS: usize = 4096;

impl ServerKnowledge {
    pub fn new(mode: DirectTls) -> Self {
        ServerKnowledge {
            mode,
            ..ServerKnowledge::default()
        }
    }

    pub fn mode(&self) -> DirectTls {
        self.mode
    }

    /// Whether the next connection opens TLS without an SSLRequest.
    pub fn use_direct_tls(&self) -> bool {
        match self.mode {
            DirectTls::Always => true,
            DirectTls::Never => false,
            DirectTls::Auto => {
                self.major.load(Ordering::Relaxed) >= DIRECT_TLS_MIN_VERSION
                    && !self.refuses_direct.load(Ordering::Relaxed)
            }
        }
    }

    /// The major version the last successful login reported, if any did.
    pub fn major_version(&self) -> Option<u32> {
        Some(self.major.load(Ordering::Relaxed)).filter(|&v| v > 0)
    }

    /// Whether a direct TLS attempt to this server has failed (it then gets SSLRequest only).
    pub fn refused_direct_tls(&self) -> bool {
        self.refuses_direct.load(Ordering::Relaxed)
    }

    /// A successful login's `server_version` ("17.4", "16.6 (Debian …)", "18beta1").
    pub fn saw_server_version(&self, version: &str) {
        let digits = version.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(major) = version[..digits].parse::<u32>() else {
            return;
        };
        let before = self.major.swap(major, Ordering::Relaxed);
        if before != major
            && self.mode == DirectTls::Auto
            && major >= DIRECT_TLS_MIN_VERSION
            && !self.refused_direct_tls()
        {
            tracing::info!(server_version = version, "the server is PostgreSQL {major}: new connections open TLS directly (one round trip less)");
        }
    }

    pub(super) fn direct_tls_refused(&self) {
        self.refuses_direct.store(true, Ordering::Relaxed);
    }

    fn cleartext_logins(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.cleartext.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the last login of `user` to `database` was asked for a cleartext password and
    /// answered with an IAM token: the next one sends the token with the startup message.
    pub fn asks_cleartext(&self, user: &str, database: &str) -> bool {
        let key = (user.to_owned(), database.to_owned());
        self.cleartext_logins().contains(&key)
    }

    pub(super) fn saw_cleartext_request(&self, user: &str, database: &str) {
        let mut logins = self.cleartext_logins();
        if logins.len() < MAX_CLEARTEXT_LOGINS {
            logins.insert((user.to_owned(), database.to_owned()));
        }
    }

    pub(super) fn forget_cleartext_request(&self, user: &str, database: &str) {
        self.cleartext_logins()
            .remove(&(user.to_owned(), database.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_tls_follows_the_mode_and_what_the_server_showed() {
        let auto = ServerKnowledge::new(DirectTls::Auto);
        assert!(!auto.use_direct_tls(), "nothing known: SSLRequest");
        auto.saw_server_version("16.6 (Debian 16.6-1)");
        assert_eq!(auto.major_version(), Some(16));
        assert!(!auto.use_direct_tls());
        auto.saw_server_version("17.4");
        assert!(auto.use_direct_tls());
        auto.direct_tls_refused();
        assert!(!auto.use_direct_tls(), "refused once: never again");
        auto.saw_server_version("18beta1");
        assert_eq!(auto.major_version(), Some(18));
        assert!(!auto.use_direct_tls());

        let always = ServerKnowledge::new(DirectTls::Always);
        assert!(always.use_direct_tls());
        let never = ServerKnowledge::new(DirectTls::Never);
        never.saw_server_version("17.0");
        assert!(!never.use_direct_tls());
    }

    #[test]
    fn odd_server_versions_teach_nothing() {
        let k = ServerKnowledge::new(DirectTls::Auto);
        for v in ["", "beta", "x17", "99999999999999999999"] {
            k.saw_server_version(v);
            assert_eq!(k.major_version(), None, "{v:?}");
        }
    }
}
