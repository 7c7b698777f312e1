//! Reading AWS's answers: the XML records of the Query protocol, the error code and message of
//! an XML, JSON 1.0/1.1 or rest-json error, and the error codes that mean "credentials refused"
//! or "access denied"; timestamps in both forms.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// One `<record>` element's leaves, keyed by their path below it (`Endpoint/Address`).
pub type Record = HashMap<String, String>;

pub fn field<'a>(record: &'a Record, path: &str) -> Option<&'a str> {
    record.get(path).map(String::as_str)
}

/// Every `<name>` element's leaves, in document order. The error names a position, never text.
pub fn records(xml: &str, name: &str) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    // Depth of the open record element, if inside one.
    let mut open: Option<usize> = None;
    for token in xmlparser::Tokenizer::from(xml) {
        let token = token.map_err(|e| format!("not XML: {e}"))?;
        match token {
            xmlparser::Token::ElementStart { local, .. } => {
                stack.push(local.as_str().to_owned());
                if open.is_none() && local.as_str() == name {
                    open = Some(stack.len());
                    out.push(Record::new());
                }
            }
            xmlparser::Token::ElementEnd { end, .. } => match end {
                xmlparser::ElementEnd::Open => {}
                xmlparser::ElementEnd::Close(..) | xmlparser::ElementEnd::Empty => {
                    if open == Some(stack.len()) {
                        open = None;
                    }
                    stack.pop();
                }
            },
            xmlparser::Token::Text { text } => {
                if let (Some(depth), Some(record)) = (open, out.last_mut()) {
                    if stack.len() > depth {
                        let path = stack[depth..].join("/");
                        record.entry(path).or_default().push_str(&unescape(text.as_str()));
                    }
                }
            }
            xmlparser::Token::Cdata { text, .. } => {
                if let (Some(depth), Some(record)) = (open, out.last_mut()) {
                    if stack.len() > depth {
                        record.entry(stack[depth..].join("/")).or_default().push_str(text.as_str());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `<ErrorResponse><Error><Code>…</Code><Message>…</Message></Error>` → (code, message).
pub fn xml_error(xml: &str) -> Option<(String, String)> {
    let error = records(xml, "Error").ok()?.into_iter().next()?;
    let code = error.get("Code")?.trim().to_owned();
    Some((code, error.get("Message").map(|m| m.trim().to_owned()).unwrap_or_default()))
}

/// `{"__type": "com.amazonaws…#AccessDeniedException", "message": "…"}` (or `code`/`Code`,
/// `Message`) → (code, message), the code without its namespace; the code is empty when only
/// the `x-amzn-ErrorType` header names it (rest-json).
pub fn json_error(json: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let text = |keys: &[&str]| keys.iter().find_map(|k| value.get(*k)?.as_str()).map(str::to_owned);
    let code = text(&["__type", "code", "Code"]).unwrap_or_default();
    let code = error_type_name(&code).to_owned();
    Some((code, text(&["message", "Message"]).unwrap_or_default()))
}

/// An error type as AWS spells it in `__type` or `x-amzn-ErrorType`, without the namespace
/// before `#` and the URL after `:`.
pub(super) fn error_type_name(raw: &str) -> &str {
    let name = raw.rsplit('#').next().unwrap_or(raw);
    name.split(':').next().unwrap_or(name).trim()
}

/// XML's predefined entities and character references.
fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// AWS error codes that mean the caller's credentials were refused (expired, wrong, unsigned).
pub fn is_credentials_refused(code: &str) -> bool {
    matches!(
        code,
        "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "MissingAuthenticationTokenException"
            | "UnrecognizedClientException"
    )
}

/// AWS error codes that mean the caller may not do this.
pub fn is_access_denied(code: &str) -> bool {
    matches!(code, "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" | "AccessDeniedFault")
}

/// An ISO-8601 timestamp (`2026-12-07T15:10:00Z`, `….123Z`) as AWS XML writes it.
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let t = aws_smithy_types::DateTime::from_str(text.trim(), aws_smithy_types::date_time::Format::DateTime).ok()?;
    SystemTime::try_from(t).ok()
}

/// Epoch seconds (a JSON number) as AWS JSON 1.1 writes timestamps.
pub fn epoch_seconds(value: &serde_json::Value) -> Option<SystemTime> {
    let secs = value.as_f64()?;
    (secs.is_finite() && secs >= 0.0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
}
