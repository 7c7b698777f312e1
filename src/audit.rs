//! One audit line when a connection is logged in and one when it closes, under the tracing
//! target `audit` (kept at `--quiet`). With `--log-format json` the field names are stable and
//! documented in docs/operations.md; every field is present on every line (empty when not known).
//!
//! Strings a client chose (user, database) are escaped (`\n`, `\"`, `\u{…}`), so a crafted name
//! cannot forge a log line or a field in a text log.

use std::time::Duration;

use crate::relay::ClosedBy;

/// The tracing target of audit lines (`RUST_LOG=audit=off` silences them).
pub const TARGET: &str = "audit";

/// Who ended a connection, for the `closed_by` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    Client,
    Upstream,
    /// The proxy's drain timeout ran out (shutdown): the client got 57P01.
    Drain,
    /// `--max-connection-age`: the client got 57P01.
    MaxAge,
    /// The proxy refused or failed the connection before or during login.
    Error,
}

impl Closer {
    pub fn as_str(self) -> &'static str {
        match self {
            Closer::Client => "client",
            Closer::Upstream => "upstream",
            Closer::Drain => "drain",
            Closer::MaxAge => "max_age",
            Closer::Error => "error",
        }
    }
}

impl From<ClosedBy> for Closer {
    fn from(c: ClosedBy) -> Self {
        match c {
            ClosedBy::Client => Closer::Client,
            ClosedBy::Upstream => Closer::Upstream,
            ClosedBy::Drain => Closer::Drain,
            ClosedBy::MaxAge => Closer::MaxAge,
        }
    }
}

/// A client-supplied string cut at 256 characters, so one audit line stays bounded. It is not
/// escaped here: the log formats do that once for every field (the text format through
/// `logfmt`, JSON through serde), so a JSON audit line carries the name exactly as the client
/// sent it and still cannot forge a line.
pub fn bounded(s: &str) -> String {
    let mut out: String = s.chars().take(256).collect();
    if s.chars().nth(256).is_some() {
        out.push('…');
    }
    out
}

/// The fields every audit line of one connection shares.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    pub client: String,
    pub target: String,
    pub db_user: String,
    pub database: String,
    pub principal_arn: String,
    pub ssm_session: String,
    /// The target's engine (`rds`, `dsql`, `redshift`, `redshift-serverless`).
    pub engine: &'static str,
    /// The user the server logged in, when not the client's: Redshift's `IAM:alice`.
    pub upstream_user: String,
}

/// How a connection ended, for [`Audit::closed`].
#[derive(Debug, Clone, Default)]
pub struct Ending {
    pub closed_by: Option<Closer>,
    /// What went wrong, or empty.
    pub reason: String,
    /// The SQLSTATE the client got from the proxy or the server's refusal, or empty.
    pub sqlstate: String,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    pub duration: Duration,
}

impl Audit {
    /// `user` and `database` are the client's (cut to a bounded length here).
    pub fn new(client: &str, target: &str, user: &str, database: &str) -> Self {
        Audit {
            client: client.to_owned(),
            target: target.to_owned(),
            db_user: bounded(user),
            database: bounded(database),
            principal_arn: String::new(),
            ssm_session: String::new(),
            engine: "",
            upstream_user: String::new(),
        }
    }

    pub fn opened(&self) {
        tracing::info!(
            target: TARGET,
            audit = "open",
            client = %self.client,
            target = %self.target,
            engine = self.engine,
            db_user = self.db_user.as_str(),
            upstream_user = self.upstream_user.as_str(),
            database = self.database.as_str(),
            principal_arn = %self.principal_arn,
            ssm_session = %self.ssm_session,
            "connection opened"
        );
    }

    pub fn closed(&self, end: &Ending) {
        tracing::info!(
            target: TARGET,
            audit = "close",
            client = %self.client,
            target = %self.target,
            engine = self.engine,
            db_user = self.db_user.as_str(),
            upstream_user = self.upstream_user.as_str(),
            database = self.database.as_str(),
            principal_arn = %self.principal_arn,
            ssm_session = %self.ssm_session,
            bytes_to_upstream = end.bytes_to_upstream,
            bytes_to_client = end.bytes_to_client,
            duration_ms = u64::try_from(end.duration.as_millis()).unwrap_or(u64::MAX),
            closed_by = end.closed_by.map_or("", Closer::as_str),
            reason = bounded(&end.reason).as_str(),
            sqlstate = %end.sqlstate,
            "connection closed"
        );
    }
}

/// The audit line of one config reload: what asked for it (`sighup`, `file`), the file, whether
/// it was applied, the targets it added, removed and changed (comma-separated names), and why it
/// was refused (empty when applied). Every field is present on every reload line.
pub fn reload(trigger: &str, file: &std::path::Path, applied: bool, added: &[String], removed: &[String], changed: &[String], error: &str) {
    tracing::info!(
        target: TARGET,
        audit = "reload",
        trigger,
        file = %file.display(),
        outcome = if applied { "applied" } else { "refused" },
        added = added.join(",").as_str(),
        removed = removed.join(",").as_str(),
        changed = changed.join(",").as_str(),
        error,
        "configuration reload"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_strings_are_kept_as_sent_and_cut_at_256_characters() {
        assert_eq!(bounded("db_user"), "db_user");
        assert_eq!(bounded("a\nb\"c\\d\u{1b}[31m"), "a\nb\"c\\d\u{1b}[31m", "escaping is the formats' job");
        assert_eq!(bounded("üñï"), "üñï");
        let long = "ü".repeat(300);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), 257);
        assert!(cut.ends_with("ü…"));
        assert_eq!(bounded(&"x".repeat(256)), "x".repeat(256), "256 characters are kept whole");
    }
}
