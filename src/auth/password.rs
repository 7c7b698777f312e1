//! Database passwords for password (SCRAM/MD5) users: where they come from (`--password-file`,
//! `--password-secret` in AWS Secrets Manager, `[[target.password]]`), the one database user each
//! belongs to ([`Passwords`]), a memory-only cache, and the [`Password`] newtype that never prints
//! its contents.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::reload::ReloadGate;
use super::secrets::{SecretsApi, SecretsError};

/// Where a password user's password comes from (configured: [`crate::config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordConfig {
    /// `--password-file`.
    File(PathBuf),
    /// `--password-secret` and `--password-secret-key`.
    Secret { secret_id: String, key: String },
}

/// One database user's password source: only that user's logins get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordUser {
    /// The database user; `None`: the secret's `username` says (learned at start).
    pub user: Option<String>,
    pub source: PasswordConfig,
}

/// A database password. `Debug`/`Display` print `<redacted>`; only [`Password::expose`] gives
/// the bytes, for the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(value: impl Into<String>) -> Self {
        Password(value.into())
    }

    /// The secret itself, only for the authentication exchange.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why no password could be had. Never carries the password or the secret's contents.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot read the password file {}", path.display())]
    FileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the password file {} may be read by others (mode {mode:04o}); it must be readable by its owner only (chmod 600)", path.display())]
    FilePermissions { path: PathBuf, mode: u32 },
    #[error("the password file {} holds no password on its first line", path.display())]
    FileEmpty { path: PathBuf },
    #[error("the password file {} holds more than one line; put the password alone on one line", path.display())]
    FileLines { path: PathBuf },
    #[error("cannot read the password from AWS Secrets Manager secret {secret_id}")]
    Secret {
        secret_id: String,
        #[source]
        source: SecretsError,
    },
    #[error("the secret {secret_id} has no \"username\" field, so it does not say which database user its password is for: add --password-user NAME")]
    NoUser { secret_id: String },
    #[error("the secret {secret_id} is the password of database user \"{secret_user}\", not of \"{user}\" (--password-user, --db-user or `user`)")]
    WrongUser {
        secret_id: String,
        secret_user: String,
        user: String,
    },
    /// The last read failed less than an interval ago: its error again, without a new read.
    #[error("{message} (not read again for up to {} s)", super::reload::RELOAD_INTERVAL.as_secs())]
    Recent { message: String, hint: String },
}

impl PasswordError {
    /// What the user should do about it.
    pub fn hint(&self) -> String {
        match self {
            PasswordError::FileRead { .. }
            | PasswordError::FileEmpty { .. }
            | PasswordError::FileLines { .. } => {
                "Put the password alone on the first line of the --password-file, readable only by \
                 its owner (chmod 600)."
                    .into()
            }
            PasswordError::FilePermissions { path, .. } => {
                format!("Run: chmod 600 {}", path.display())
            }
            PasswordError::Secret { source, .. } => source.hint(),
            PasswordError::Recent { hint, .. } => hint.clone(),
            PasswordError::NoUser { .. } | PasswordError::WrongUser { .. } => {
                "Name the database user the password is for: --password-user NAME (config: \
                 password_user, or `user` in [[target.password]]), matching the secret's \
                 \"username\" when it has one."
                    .into()
            }
        }
    }
}

/// Where the password of a target's database user comes from.
#[derive(Debug)]
pub enum PasswordSource {
    /// `--password-file`: the password alone on one line, the file private to its owner.
    File(PathBuf),
    /// `--password-secret` (+ `--password-secret-key`): GetSecretValue, JSON field or plain string.
    Secret {
        api: SecretsApi,
        secret_id: String,
        key: String,
    },
}

/// A password source with its in-memory cache: read once, re-read only when a login with it
/// failed (the password may have been rotated), and then at most once per interval.
#[derive(Debug)]
pub struct PasswordProvider {
    source: PasswordSource,
    /// The database user the password is for, as configured (`--password-user`, else
    /// `--db-user`, or a `[[target.password]]` table's `user`); `None`: the secret's `username`.
    user: Option<String>,
    /// The password and the secret's `username`, once read.
    cached: Mutex<Option<(Password, Option<String>)>>,
    /// Re-reads after refused logins.
    reloads: ReloadGate,
    /// Reads after a failed one (the error as the client got it, and its hint).
    failed_reads: ReloadGate,
    last_failure: Mutex<Option<(String, String)>>,
    /// Successful reads, for `/metrics`.
    reads: prometheus_client::metrics::counter::Counter,
}

impl PasswordProvider {
    pub fn new(source: PasswordSource, user: Option<String>) -> Self {
        PasswordProvider {
            source,
            user,
            cached: Mutex::new(None),
            reloads: ReloadGate::default(),
            failed_reads: ReloadGate::default(),
            last_failure: Mutex::new(None),
            reads: Default::default(),
        }
    }

    /// Counts successful reads into `counter` (`/metrics`).
    pub fn counting_reads(mut self, counter: prometheus_client::metrics::counter::Counter) -> Self {
        self.reads = counter;
        self
    }

    /// Which flag the password comes from, for log lines and messages.
    pub fn describe(&self) -> &'static str {
        match &self.source {
            PasswordSource::File(_) => "--password-file",
            PasswordSource::Secret { .. } => "--password-secret",
        }
    }

    /// The database user whose logins get this password: as configured, else the secret's
    /// `username` once read; `None` before that.
    pub fn user(&self) -> Option<String> {
        if let Some(user) = &self.user {
            return Some(user.clone());
        }
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|(_, user)| user.clone())
    }

    /// The cached password, read from the source the first time.
    pub async fn get(&self) -> Result<Password, PasswordError> {
        if let Some((p, _)) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(p);
        }
        // A broken secret (deleted, access denied) is not asked again on every login.
        let last_failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((message, hint)) = last_failure {
            if !self.failed_reads.may_reload() {
                return Err(PasswordError::Recent { message, hint });
            }
        }
        self.fresh().await
    }

    /// Whether a refused login may re-read the source now: once per interval, so a client
    /// looping on a wrong password costs one Secrets Manager call per interval.
    pub fn may_reload(&self) -> bool {
        self.reloads.may_reload()
    }

    /// Reads the source again and replaces the cached password (after a refused login).
    pub async fn fresh(&self) -> Result<Password, PasswordError> {
        let read = self.read().await;
        let mut last_failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        match &read {
            Ok(_) => {
                self.reads.inc();
                *last_failure = None;
            }
            Err(e) => {
                if last_failure.is_none() {
                    // The interval of failed reads starts with this one.
                    self.failed_reads.may_reload();
                }
                *last_failure = Some((crate::errors::display_chain(e), e.hint()));
            }
        }
        read
    }

    async fn read(&self) -> Result<Password, PasswordError> {
        let (password, secret_user) = match &self.source {
            PasswordSource::File(path) => (read_password_file(path)?, None),
            PasswordSource::Secret {
                api,
                secret_id,
                key,
            } => {
                let text = api.get_secret_string(secret_id).await.map_err(|source| {
                    PasswordError::Secret {
                        secret_id: secret_id.clone(),
                        source,
                    }
                })?;
                let password = password_from_secret(&text, key).map_err(|source| PasswordError::Secret {
                    secret_id: secret_id.clone(),
                    source,
                })?;
                let secret_user = username_from_secret(&text);
                match (&self.user, &secret_user) {
                    (None, None) => {
                        return Err(PasswordError::NoUser {
                            secret_id: secret_id.clone(),
                        })
                    }
                    (Some(user), Some(secret_user)) if user != secret_user => {
                        return Err(PasswordError::WrongUser {
                            secret_id: secret_id.clone(),
                            secret_user: secret_user.clone(),
                            user: user.clone(),
                        })
                    }
                    _ => {}
                }
                (password, secret_user)
            }
        };
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((password.clone(), secret_user));
        Ok(password)
    }
}

/// A target's password sources, each for one database user; every other user is an IAM user.
#[derive(Debug, Default, Clone)]
pub struct Passwords(Vec<Arc<PasswordProvider>>);

impl Passwords {
    pub fn new(providers: Vec<Arc<PasswordProvider>>) -> Self {
        Passwords(providers)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<PasswordProvider>> {
        self.0.iter()
    }

    /// The source of `user`'s password as far as known without reading anything: the
    /// configured users, and the users of secrets already read.
    pub fn known(&self, user: &str) -> Option<&Arc<PasswordProvider>> {
        self.0.iter().find(|p| p.user().as_deref() == Some(user))
    }

    /// The source of `user`'s password, `None` for an IAM user. A secret whose user is not known
    /// yet (its read at start failed) is read first: until then nobody can tell.
    pub async fn for_user(&self, user: &str) -> Result<Option<&Arc<PasswordProvider>>, PasswordError> {
        if let Some(p) = self.known(user) {
            return Ok(Some(p));
        }
        for p in self.0.iter().filter(|p| p.user().is_none()) {
            p.get().await?;
            if p.user().as_deref() == Some(user) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }
}

/// The `username` of a JSON secret (RDS's managed secret has one): the database user the
/// password is for.
pub fn username_from_secret(text: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => match map.get("username") {
            Some(serde_json::Value::String(u)) if !u.is_empty() => Some(u.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Refuses a password file others could read, like libpq does for `.pgpass`.
pub fn check_password_file_mode(path: &Path) -> Result<(), PasswordError> {
    let meta = std::fs::metadata(path).map_err(|source| PasswordError::FileRead {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PasswordError::FileRead {
            path: path.to_owned(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    let mode = crate::os::mode(&meta);
    if mode & 0o077 != 0 {
        return Err(PasswordError::FilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads `--password-file`: permissions checked first, then exactly one non-empty line (a final
/// newline, `\n` or `\r\n`, is not part of the password).
pub fn read_password_file(path: &Path) -> Result<Password, PasswordError> {
    check_password_file_mode(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| PasswordError::FileRead {
        path: path.to_owned(),
        source,
    })?;
    let line = text
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&text);
    if line.contains('\n') {
        return Err(PasswordError::FileLines {
            path: path.to_owned(),
        });
    }
    if line.is_empty() {
        return Err(PasswordError::FileEmpty {
            path: path.to_owned(),
        });
    }
    Ok(Password::new(line))
}

/// The password in a secret's string: the `key` field of a JSON object (as in RDS's managed
/// master user secret `{"username": …, "password": …}`), or the whole string when it is not a
/// JSON object.
pub fn password_from_secret(text: &str, key: &str) -> Result<Password, SecretsError> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => match map.get(key) {
            Some(serde_json::Value::String(p)) if !p.is_empty() => Ok(Password::new(p.clone())),
            Some(_) => Err(SecretsError::KeyNotAString(key.to_owned())),
            None => Err(SecretsError::MissingKey {
                key: key.to_owned(),
                keys: map.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
        },
        _ if text.is_empty() => Err(SecretsError::Empty),
        _ => Ok(Password::new(text)),
    }
}

// The file tests set Unix modes.
#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with(contents: &str, mode: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), contents).expect("write");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        f
    }

    #[test]
    fn redacted_everywhere() {
        let p = Password::new("hunter2");
        assert_eq!(format!("{p} {p:?}"), "<redacted> <redacted>");
        assert_eq!(p.expose(), "hunter2");
    }

    #[test]
    fn password_file_table() {
        let cases: [(&str, u32, Result<&str, &str>); 9] = [
            ("s3cret\n", 0o600, Ok("s3cret")),
            ("s3cret", 0o400, Ok("s3cret")),
            ("s3cret\r\n", 0o600, Ok("s3cret")),
            (" with spaces \n", 0o600, Ok(" with spaces ")),
            ("s3cret\n", 0o640, Err("mode 0640")),
            ("s3cret\n", 0o604, Err("mode 0604")),
            ("\n", 0o600, Err("no password")),
            ("", 0o600, Err("no password")),
            ("a\nb\n", 0o600, Err("more than one line")),
        ];
        for (contents, mode, expected) in cases {
            let f = file_with(contents, mode);
            match (read_password_file(f.path()), expected) {
                (Ok(p), Ok(want)) => assert_eq!(p.expose(), want, "{contents:?}"),
                (Err(e), Err(want)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(want), "{contents:?} {mode:o}: {msg}");
                    assert!(!msg.contains("s3cret"), "error leaks the password: {msg}");
                }
                (got, want) => panic!("{contents:?} {mode:o}: got {got:?}, want {want:?}"),
            }
        }
        let err = read_password_file(Path::new("/nonexistent/pw")).unwrap_err();
        assert!(matches!(err, PasswordError::FileRead { .. }), "{err}");
    }

    #[test]
    fn secret_string_table() {
        let rds = r#"{"username":"app","password":"pw-from-rds"}"#;
        assert_eq!(
            password_from_secret(rds, "password").unwrap().expose(),
            "pw-from-rds"
        );
        let custom = r#"{"user":"app","db_pass":"x1"}"#;
        assert_eq!(
            password_from_secret(custom, "db_pass").unwrap().expose(),
            "x1"
        );
        let plain = "just-a-password";
        assert_eq!(
            password_from_secret(plain, "password").unwrap().expose(),
            plain
        );
        let err = password_from_secret(custom, "password").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"password\"") && msg.contains("db_pass, user"),
            "{msg}"
        );
        assert!(!msg.contains("x1"), "names keys, never values: {msg}");
        assert!(matches!(
            password_from_secret(r#"{"password":5}"#, "password"),
            Err(SecretsError::KeyNotAString(_))
        ));
        assert_eq!(username_from_secret(rds).as_deref(), Some("app"));
        for no_user in [custom, plain, r#"{"username":"","password":"x"}"#, r#"{"username":7}"#] {
            assert_eq!(username_from_secret(no_user), None, "{no_user}");
        }
        assert!(matches!(
            password_from_secret("", "password"),
            Err(SecretsError::Empty)
        ));
    }

    #[tokio::test]
    async fn provider_caches_until_fresh() {
        let f = file_with("one\n", 0o600);
        let provider = PasswordProvider::new(PasswordSource::File(f.path().to_owned()), Some("app".into()));
        assert_eq!(provider.user().as_deref(), Some("app"));
        assert_eq!(provider.get().await.unwrap().expose(), "one");
        std::fs::write(f.path(), "two\n").unwrap();
        assert_eq!(provider.get().await.unwrap().expose(), "one", "cached");
        assert_eq!(provider.fresh().await.unwrap().expose(), "two");
        assert_eq!(provider.get().await.unwrap().expose(), "two");
    }
}
