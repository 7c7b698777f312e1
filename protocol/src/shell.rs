//! POSIX shell quoting for the settings both ends print as shell lines: the simulator's
//! `export NAME=value` contract and the proxy's `connect-info` (psql line, `export PG…=`).

/// Single-quotes a value for a POSIX shell (left bare when it is plainly safe).
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
