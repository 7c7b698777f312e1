//! How log fields are written in the text format, so that no value can forge a log line.
//!
//! Clients and servers choose much of what we log (user and database names, error text from
//! PostgreSQL, SSM and AWS). tracing-subscriber's default text formatter writes `%display`
//! fields and error sources raw, so a user name holding `\n` starts a line of the client's
//! choosing, and an ESC byte drives the reader's terminal. [`EscapedFields`] writes every field,
//! the message included, through an escaper: control characters (C0, DEL, C1), Unicode line and
//! paragraph separators and bidirectional overrides come out as `\n`, `\u{1b}`, `\u{202e}`.
//! Plain string values (`user = name.as_str()`, not `%name`) are also quoted, so a value
//! cannot pose as another `key=value` field either. The JSON format needs none of this: serde
//! escapes every string.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// The text format's field formatter: like tracing-subscriber's default (`message key=value
/// …`, string values quoted), with every character that could break or recolour a line escaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            // Debug quotes the string: its spaces and `=` cannot pass for another field.
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{}", crate::errors::display_chain(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let separator = if std::mem::take(&mut self.first) { "" } else { " " };
        let name = field.name();
        self.result = (|| {
            self.writer.write_str(separator)?;
            if name != "message" {
                self.writer.write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
            }
            write!(Escaper(&mut self.writer), "{value:?}")
        })();
    }
}

/// A `fmt::Write` that escapes, on the way through, every character that could end a line or
/// reach the terminal as a command.
pub struct Escaper<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escaper<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Runs of harmless characters go through in one piece.
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if needs_escape(c) {
                self.0.write_str(&s[start..i])?;
                match c {
                    '\n' => self.0.write_str("\\n")?,
                    '\r' => self.0.write_str("\\r")?,
                    '\t' => self.0.write_str("\\t")?,
                    c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                }
                start = i + c.len_utf8();
            }
        }
        self.0.write_str(&s[start..])
    }
}

/// C0 controls (newline, carriage return, ESC, …), DEL and C1 controls (`char::is_control`);
/// U+2028/U+2029, which some viewers break lines at; and the bidirectional controls, which
/// reorder what a reader sees ("Trojan Source").
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `s` with [`Escaper`]'s escapes, for text that goes to a terminal outside the log (e.g. one
/// line on stderr).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let _ = Escaper(&mut out).write_str(s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn escapes_line_breaks_terminal_controls_and_bidi() {
        assert_eq!(escape("plain text, ünïcödé ✓"), "plain text, ünïcödé ✓");
        assert_eq!(
            escape("a\nb\r\n\tc\x1b[31md\x07\x7f\u{85}\u{9b}"),
            "a\\nb\\r\\n\\tc\\u{1b}[31md\\u{7}\\u{7f}\\u{85}\\u{9b}"
        );
        assert_eq!(escape("x\u{2028}y\u{202e}z\u{2066}"), "x\\u{2028}y\\u{202e}z\\u{2066}");
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `log` writes in the text format (no time, no target, no colour).
    fn text_log(log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let out = buffer.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_audit_line_in_text_is_one_line_with_the_client_strings_quoted() {
        let audit = crate::audit::Audit::new("127.0.0.1:5000", "db.example", "bob\n INFO x\x1b[0m", "db closed_by=client");
        let out = text_log(|| audit.closed(&crate::audit::Ending::default()));
        assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
        assert!(out.contains(r#"db_user="bob\n INFO x\u{1b}[0m""#), "escaped once and quoted: {out:?}");
        assert!(out.contains(r#"database="db closed_by=client""#), "cannot pose as another field: {out:?}");
    }

    #[test]
    fn no_field_of_any_kind_can_forge_a_line() {
        let evil = "bob\n2026-01-01T00:00:00Z  INFO forged line\x1b[31m";
        let error = std::io::Error::other(evil);
        let out = text_log(|| {
            tracing::warn!(user = evil, display = %evil, debug = ?evil, error = &error as &dyn std::error::Error, r#type = 1, "message {evil}");
        });
        assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
        assert!(!out.contains('\x1b'), "{out:?}");
        assert_eq!(
            out,
            " WARN message bob\\n2026-01-01T00:00:00Z  INFO forged line\\u{1b}[31m \
             user=\"bob\\n2026-01-01T00:00:00Z  INFO forged line\\u{1b}[31m\" \
             display=bob\\n2026-01-01T00:00:00Z  INFO forged line\\u{1b}[31m \
             debug=\"bob\\n2026-01-01T00:00:00Z  INFO forged line\\u{1b}[31m\" \
             error=bob\\n2026-01-01T00:00:00Z  INFO forged line\\u{1b}[31m type=1\n"
        );
    }
}
