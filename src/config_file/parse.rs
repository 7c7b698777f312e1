//! Reading the file: its top level and `[[target]]` tables (with `[[target.password]]`), each
//! value checked by its flag's parser, every mistake one line as `file:line: key …`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::keys::{check_values, closest, Keys, Kind};
use super::{ConfigFileError, Given};

/// Longest target name: it is a log field and a metric label.
const MAX_NAME_LEN: usize = 64;

/// One table of the file: its values by clap id, each with its line.
#[derive(Debug, Default)]
pub(super) struct Layer {
    pub(super) values: BTreeMap<String, (Given, usize)>,
    /// `[[target]]` tables: the name and its line.
    pub(super) name: Option<(String, usize)>,
    /// The table's first line.
    pub(super) line: usize,
    /// `[[target.password]]`: password users of the target, each with its table's line.
    pub(super) passwords: Vec<(crate::config::PasswordUser, usize)>,
}

#[derive(Debug)]
pub(super) struct FileLayers {
    pub(super) top: Layer,
    pub(super) targets: Vec<Layer>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

pub(super) fn parse_file(path: &Path, text: &str, keys: &Keys) -> Result<FileLayers, ConfigFileError> {
    let at = |offset: usize, message: String| ConfigFileError::At {
        path: path.to_owned(),
        line: line_of(text, offset),
        message,
    };
    let root = DeTable::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset, syntax_error(text, offset, e.message()))
    })?;
    let mut top = Layer {
        line: 1,
        ..Layer::default()
    };
    let mut targets = Vec::new();
    for (key, value) in root.get_ref().iter() {
        let name = key.get_ref().as_ref();
        if name == "target" {
            let tables = value
                .get_ref()
                .as_array()
                .filter(|a| a.iter().all(|t| t.get_ref().is_table()))
                .ok_or_else(|| at(key.span().start, "`target` must be [[target]] tables".to_owned()))?;
            for table in tables.iter() {
                let Some(t) = table.get_ref().as_table() else { continue };
                targets.push(parse_table(t, table.span().start, true, text, keys, &at)?);
            }
        } else {
            add_value(&mut top, name, key.span().start, value, false, text, keys, &at)?;
        }
    }
    // A target's keys are listed as sorted by the parser; its header is the line above its
    // first key (or, for an empty table, where the parser put it).
    let mut seen = BTreeMap::new();
    for t in &targets {
        let Some((name, line)) = &t.name else {
            return Err(ConfigFileError::At {
                path: path.to_owned(),
                line: t.line,
                message: "this [[target]] has no `name`: give each target a name (used in logs and metrics)".to_owned(),
            });
        };
        if let Some(first) = seen.insert(name.clone(), *line) {
            return Err(ConfigFileError::At {
                path: path.to_owned(),
                line: *line,
                message: format!("key \"name\": a second target named {name:?} (the first is on line {first})"),
            });
        }
    }
    Ok(FileLayers { top, targets })
}

fn parse_table(
    table: &DeTable<'_>,
    offset: usize,
    in_target: bool,
    text: &str,
    keys: &Keys,
    at: &dyn Fn(usize, String) -> ConfigFileError,
) -> Result<Layer, ConfigFileError> {
    let mut layer = Layer {
        line: line_of(text, offset),
        ..Layer::default()
    };
    let mut first_key = usize::MAX;
    for (key, value) in table.iter() {
        first_key = first_key.min(line_of(text, key.span().start));
        add_value(&mut layer, key.get_ref().as_ref(), key.span().start, value, in_target, text, keys, at)?;
    }
    // The parser's span of an array-of-tables entry may start at its header or its body.
    if first_key != usize::MAX && first_key > 1 {
        layer.line = layer.line.min(first_key - 1).max(1);
    }
    Ok(layer)
}

#[allow(clippy::too_many_arguments)]
fn add_value(
    layer: &mut Layer,
    name: &str,
    key_offset: usize,
    value: &toml::Spanned<DeValue<'_>>,
    in_target: bool,
    text: &str,
    keys: &Keys,
    at: &dyn Fn(usize, String) -> ConfigFileError,
) -> Result<(), ConfigFileError> {
    let line = line_of(text, key_offset);
    let bad = |message: String| at(key_offset, format!("key {name:?}: {message}"));
    if name == "password" {
        if !in_target {
            return Err(bad("password users belong to a target: [[target.password]] tables after its [[target]]".to_owned()));
        }
        let tables = value
            .get_ref()
            .as_array()
            .filter(|a| a.iter().all(|t| t.get_ref().is_table()))
            .ok_or_else(|| bad("expected [[target.password]] tables with `user` and `secret` or `file`".to_owned()))?;
        for table in tables.iter() {
            let Some(t) = table.get_ref().as_table() else { continue };
            let entry = password_table(t, line_of(text, table.span().start), at)?;
            if let Some((_, first)) = layer.passwords.iter().find(|(p, _)| p.user.is_some() && p.user == entry.0.user) {
                return Err(at(
                    table.span().start,
                    format!("[[target.password]]: a second password for user {:?} (the first is on line {first})", entry.0.user.as_deref().unwrap_or_default()),
                ));
            }
            layer.passwords.push(entry);
        }
        return Ok(());
    }
    if name == "name" {
        if !in_target {
            return Err(bad("`name` belongs in a [[target]] table".to_owned()));
        }
        let Some(n) = value.get_ref().as_str() else {
            return Err(bad(format!("expected a string, not {}", value.get_ref().type_str())));
        };
        let valid = !n.is_empty()
            && n.len() <= MAX_NAME_LEN
            && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(bad(format!(
                "{n:?} is not a valid name: 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"
            )));
        }
        layer.name = Some((n.to_owned(), line));
        return Ok(());
    }
    let Some(key) = keys.by_key(name) else {
        let hint = match closest(name, keys) {
            Some(k) => format!(" (did you mean {k:?}?)"),
            None => String::new(),
        };
        let what = if in_target { "in [[target]]" } else { "at the top level" };
        return Err(bad(format!(
            "unknown key {what}{hint}; keys are the long flags of `rds-auth-proxy --help` with '_' for '-', and `endpoint` for --target"
        )));
    };
    if in_target && key.global {
        return Err(bad("applies to the whole process: put it at the top level, above the first [[target]]".to_owned()));
    }
    let v = value.get_ref();
    let given = match key.kind {
        Kind::Switch => Given::Switch(
            v.as_bool()
                .ok_or_else(|| bad(format!("expected true or false, not {}", v.type_str())))?,
        ),
        Kind::One => Given::Values(vec![
            scalar(v).ok_or_else(|| bad(format!("expected one value, not {}", v.type_str())))?,
        ]),
        Kind::Many => match v.as_array() {
            Some(items) => Given::Values(
                items
                    .iter()
                    .map(|i| scalar(i.get_ref()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("expected an array of strings".to_owned()))?,
            ),
            None => Given::Values(vec![
                scalar(v).ok_or_else(|| bad(format!("expected a string or an array, not {}", v.type_str())))?,
            ]),
        },
    };
    if let Given::Values(values) = &given {
        check_values(key, values).map_err(|reason| at(value.span().start, format!("key {name:?}: {reason}")))?;
    }
    layer.values.insert(key.id.clone(), (given, line));
    Ok(())
}

/// A target's `[[target.password]]` users, for its
/// [`ProxyArgs::password_tables`](crate::cli::ProxyArgs::password_tables)..
pub(super) fn password_tables(table: Option<&Layer>) -> Vec<crate::config::PasswordUser> {
    table.map_or_else(Vec::new, |t| t.passwords.iter().map(|(p, _)| p.clone()).collect())
}

/// One `[[target.password]]` table: `user`, and `secret` (with `secret_key`) or `file`. A file
/// is checked now (owner-only, one line), as `--password-file` is; a secret may leave `user` out
/// when its JSON names it (`username`).
fn password_table(
    table: &DeTable<'_>,
    line: usize,
    at: &dyn Fn(usize, String) -> ConfigFileError,
) -> Result<(crate::config::PasswordUser, usize), ConfigFileError> {
    use crate::config::{PasswordConfig, PasswordUser, DEFAULT_SECRET_KEY};
    let mut values: BTreeMap<&str, (String, usize)> = BTreeMap::new();
    let mut first_key = usize::MAX;
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        let offset = key.span().start;
        first_key = first_key.min(offset);
        let bad = |message: String| at(offset, format!("[[target.password]] key {name:?}: {message}"));
        if !["user", "secret", "secret_key", "file"].contains(&name) {
            return Err(bad("unknown key; a password table has `user`, and `secret` (with `secret_key`) or `file`".to_owned()));
        }
        let Some(v) = value.get_ref().as_str().filter(|v| !v.is_empty()) else {
            return Err(bad(format!("expected a non-empty string, not {}", value.get_ref().type_str())));
        };
        values.insert(name, (v.to_owned(), offset));
    }
    let user = values.get("user").map(|(u, _)| u.clone());
    let source = match (values.get("secret"), values.get("file")) {
        (Some(_), Some((_, offset))) => {
            return Err(at(*offset, "[[target.password]]: `secret` and `file` exclude each other: choose where the password comes from".to_owned()))
        }
        (Some((secret_id, _)), None) => PasswordConfig::Secret {
            secret_id: secret_id.clone(),
            key: values.get("secret_key").map_or_else(|| DEFAULT_SECRET_KEY.to_owned(), |(k, _)| k.clone()),
        },
        (None, Some((file, offset))) => {
            if let Some((_, offset)) = values.get("secret_key") {
                return Err(at(*offset, "[[target.password]] key \"secret_key\": only applies with `secret`".to_owned()));
            }
            if user.is_none() {
                return Err(at(*offset, "[[target.password]]: which database user is the password of `file` for? Add user = \"NAME\"".to_owned()));
            }
            crate::auth::password::read_password_file(Path::new(file))
                .map_err(|e| at(*offset, format!("[[target.password]] key \"file\": {e}")))?;
            PasswordConfig::File(PathBuf::from(file))
        }
        (None, None) => {
            let offset = if first_key == usize::MAX { 0 } else { first_key };
            return Err(at(offset, "[[target.password]]: give `secret` (AWS Secrets Manager) or `file`, and `user`".to_owned()))
        }
    };
    Ok((PasswordUser { user, source }, line))
}

/// A scalar as the text a flag would be given.
fn scalar(v: &DeValue<'_>) -> Option<String> {
    match v {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok().map(|n| n.to_string()),
        DeValue::Float(f) => Some(f.as_str().to_owned()),
        DeValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A TOML syntax error as one line, naming the key on that line when there is one.
fn syntax_error(text: &str, offset: usize, message: &str) -> String {
    let line_text = text
        .get(..offset)
        .and_then(|before| before.rsplit('\n').next())
        .map(|start| {
            let rest = text.get(offset..).unwrap_or_default();
            format!("{start}{}", rest.split('\n').next().unwrap_or_default())
        })
        .unwrap_or_default();
    let message = message.trim().replace('\n', " ");
    match line_text.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.contains('[') => {
            format!("key {:?}: invalid TOML: {message}", key.trim())
        }
        _ => format!("invalid TOML: {message}"),
    }
}
