//! `--max-connection-age`: how long one client connection may last upstream, and what its client
//! is told instead of a broken connection. Aurora DSQL ends every connection after 60 minutes
//! with no error at all (clients see "connection terminated unexpectedly"); with the limit the
//! client gets a NOTICE at 55/60 of it and, from 59/60 on, FATAL 57P01 at the first moment the
//! connection is idle — at the limit itself at the next server message boundary, busy or not.
//! [`crate::relay`] applies the moments; this module says when they are and what is said.

use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::Message;
use tokio::time::Instant;

use crate::pg::{ClientError, SqlState};

/// Aurora DSQL's own limit ("run transactions for up to 1 hour"; working-with-connections.html):
/// the `--max-connection-age` its targets get by default.
pub const DSQL_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// The longest `--max-connection-age`: beyond a week a limit recycles nothing.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// One connection's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeLimit {
    /// When the upstream connection's login began: the server counts from about then (a spare
    /// connection's age began before its client came).
    pub since: Instant,
    /// `--max-connection-age`.
    pub age: Duration,
}

impl AgeLimit {
    /// When the client is warned: 55 minutes into 60 (AWS's DSQL connectors recycle pooled
    /// connections at 55 minutes).
    pub fn notice_at(&self) -> Instant {
        self.since + self.age * 55 / 60
    }

    /// From when the connection is ended at its first idle moment (59 minutes into 60).
    pub fn cut_at(&self) -> Instant {
        self.since + self.age * 59 / 60
    }

    /// When it is ended at the next server message boundary, busy or not.
    pub fn end_at(&self) -> Instant {
        self.since + self.age
    }

    /// The NoticeResponse the client gets at [`AgeLimit::notice_at`] (severity NOTICE, SQLSTATE
    /// 01000 warning): psql prints it as `NOTICE:` with its HINT, drivers pass it to their
    /// notice handlers.
    pub fn notice(&self) -> BytesMut {
        let fields = vec![
            (b'S', "NOTICE".to_owned()),
            (b'V', "NOTICE".to_owned()),
            (b'C', "01000".to_owned()),
            (
                b'M',
                format!(
                    "this connection will be closed within {}: it reaches the maximum connection age of {} (--max-connection-age)",
                    human(self.age - self.age * 55 / 60),
                    human(self.age)
                ),
            ),
            (b'H', self.notice_hint()),
        ];
        let mut buf = BytesMut::new();
        // Encoding into a BytesMut only fails for messages over 1 GiB, which this never is.
        if NoticeResponse::new(fields).encode(&mut buf).is_err() {
            buf.clear();
        }
        buf
    }

    fn notice_hint(&self) -> String {
        format!(
            "Finish or commit what is running and reconnect when convenient: a new connection gets a new {}. The proxy closes this one at its first idle moment after {}, and at {} at the latest.",
            human(self.age),
            human(self.age * 59 / 60),
            human(self.age)
        )
    }

    /// What the client gets when its connection is ended: 57P01 like a server shutdown, so
    /// poolers and drivers that reconnect after one do so here too.
    pub fn error(&self) -> ClientError {
        ClientError {
            sqlstate: SqlState::AdminShutdown,
            message: format!(
                "terminating connection: it reached the maximum connection age of {} (--max-connection-age)",
                human(self.age)
            ),
            hint: Some(format!(
                "Reconnect: a new connection gets a new {}. Aurora DSQL ends every connection after 60 minutes, so the proxy ends them first, when idle if it can; give connection pools a shorter maximum lifetime.",
                human(self.age)
            )),
        }
    }

    /// Why the connection ended, for the audit line.
    pub fn reason(&self) -> String {
        format!("the connection reached its maximum age of {} (--max-connection-age)", human(self.age))
    }
}

/// `d` as people say it: whole minutes when it is some, else seconds (rounded up, at least 1).
pub fn human(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (n, unit) = if secs >= 60 && secs.is_multiple_of(60) { (secs / 60, "minute") } else { (secs.max(1), "second") };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// `--max-connection-age`'s value: seconds, or a number with `s`, `m`/`min` or `h`; `0` is no
/// limit (`Duration::ZERO`).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?} is not a duration: give seconds, or a number with s, m or h (e.g. 3600, 60m, 1h; 0 = no limit)")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: give seconds, or a number with s, m or h (e.g. 3600, 60m, 1h; 0 = no limit)"))?;
    let d = Duration::from_secs(n.saturating_mul(scale));
    if d > MAX_AGE {
        return Err(format!("{s:?} is more than the most, {} hours", MAX_AGE.as_secs() / 3600));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_table() {
        for (given, secs) in [("0", 0), ("3600", 3600), ("3600s", 3600), ("60m", 3600), ("60min", 3600), ("1h", 3600), ("6s", 6), ("168h", 604_800)] {
            assert_eq!(parse(given), Ok(Duration::from_secs(secs)), "{given}");
        }
        for bad in ["", "h", "1d", "-5", "1.5h", "60 minutes", "169h", "99999999999999999999"] {
            let err = parse(bad).expect_err(bad);
            assert!(!err.contains('\n') && err.contains(&format!("{:?}", bad.trim())), "{err}");
        }
    }

    #[test]
    fn the_config_file_key_takes_seconds_or_a_duration_per_target() {
        use crate::config_file::{plan_from_text, CliLayer};
        let text = "max_connection_age = \"1h\"\n\
                    [[target]]\nname = \"a\"\nendpoint = \"a.example\"\n\
                    [[target]]\nname = \"b\"\nendpoint = \"b.example\"\nport = 6544\nmax_connection_age = 90\n\
                    [[target]]\nname = \"c\"\nendpoint = \"c.example\"\nport = 6545\nmax_connection_age = 0\n";
        let plan = plan_from_text(std::path::Path::new("t.toml"), text, &CliLayer::default()).unwrap();
        let ages: Vec<_> = plan.targets.iter().map(|t| t.max_connection_age).collect();
        assert_eq!(ages, [Some(Duration::from_secs(3600)), Some(Duration::from_secs(90)), None]);
        let bad = plan_from_text(std::path::Path::new("t.toml"), "endpoint = \"a.example\"\nmax_connection_age = \"1d\"\n", &CliLayer::default());
        let err = bad.err().map(|e| crate::errors::display_chain(&e)).unwrap_or_default();
        assert!(err.contains("max_connection_age") && err.contains("is not a duration"), "{err}");
    }

    #[test]
    fn moments_and_words_for_dsql_and_for_a_short_limit() {
        let since = Instant::now();
        let hour = AgeLimit { since, age: DSQL_MAX_AGE };
        assert_eq!(hour.notice_at() - since, Duration::from_secs(55 * 60));
        assert_eq!(hour.cut_at() - since, Duration::from_secs(59 * 60));
        assert_eq!(hour.end_at() - since, Duration::from_secs(60 * 60));
        let notice = hour.notice();
        assert_eq!(notice[0], b'N');
        assert_eq!(u32::from_be_bytes([notice[1], notice[2], notice[3], notice[4]]) as usize, notice.len() - 1);
        let text = String::from_utf8_lossy(&notice);
        assert!(text.contains("SNOTICE\0VNOTICE\0C01000\0Mthis connection will be closed within 5 minutes: it reaches the maximum connection age of 60 minutes"), "{text:?}");
        assert!(text.contains("after 59 minutes, and at 60 minutes at the latest"), "{text:?}");
        let fatal = String::from_utf8_lossy(&hour.error().encode()).into_owned();
        assert!(fatal.contains("SFATAL\0VFATAL\0C57P01\0Mterminating connection: it reached the maximum connection age of 60 minutes"), "{fatal:?}");
        let six = AgeLimit { since, age: Duration::from_secs(6) };
        assert_eq!(six.notice_at() - since, Duration::from_millis(5500));
        assert_eq!(six.cut_at() - since, Duration::from_millis(5900));
        assert!(String::from_utf8_lossy(&six.notice()).contains("within 1 second: it reaches the maximum connection age of 6 seconds"));
        assert_eq!(human(Duration::from_secs(90)), "90 seconds");
        assert_eq!(human(Duration::from_secs(60)), "1 minute");
    }
}
