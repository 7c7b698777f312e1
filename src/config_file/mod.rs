//! The config file (`--config FILE`, `RDS_AUTH_PROXY_CONFIG`, else
//! `$XDG_CONFIG_HOME/rds-auth-proxy/config.toml` when it exists): top-level keys plus any number
//! of `[[target]]` tables, each one endpoint served on its own listener by this one process.
//!
//! A key is a flag's long name with `_` for `-` (`--ssm-target` → `ssm_target`), except
//! `--target`, whose key is `endpoint` (`target` names the tables). The keys are taken from the
//! command line definition itself, and every value is checked by its flag's own parser, so a flag
//! added to [`crate::cli::ProxyArgs`] is a key at once and a value means the same in both places.
//!
//! Precedence, highest first: flag > `RDS_AUTH_PROXY_*` variable > file > built-in default. With
//! several `[[target]]` tables a flag cannot say which target it means, so there a table's own
//! key wins over flags, which still win over the file's top-level keys. clap's `env =` makes a
//! variable look like a flag to the parsed struct, so the layering is done on
//! [`ArgMatches::value_source`], which tells them (and defaults) apart.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use toml::de::{DeTable, DeValue};

use crate::cli::{Cli, LogArgs, ProxyArgs};
use crate::config::{Config, ConfigError, ViaConfig};

/// The default file, under `$XDG_CONFIG_HOME` (else `~/.config`).
pub const DEFAULT_FILE: &str = "rds-auth-proxy/config.toml";

/// Keys that hold for the whole process, so only at the top level.
const GLOBAL_KEYS: &[&str] = &["drain_timeout", "exit_zero_on_sigterm", "http_address", "http_port", "log_format", "quiet"];

/// Flags that are not keys: where the file is and what to do with the configuration.
const NOT_KEYS: &[&str] = &["config", "list_targets", "run_connection_test", "help", "version"];

/// Longest target name: it is a log field and a metric label.
const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigFileError {
    #[error("cannot read the config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// A mistake in the file: where it is and what is wrong, on one line.
    #[error("{}:{line}: {message}", path.display())]
    At {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A mistake in a flag or variable, which wins over the file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Flags(String),
}

/// What to serve: every target's validated configuration, and the process-wide settings.
#[derive(Debug)]
pub struct Plan {
    /// The config file used, if any.
    pub file: Option<PathBuf>,
    pub targets: Vec<Config>,
    /// Targets named through AWS (`--db-instance`, `--db-cluster`, `--ssm-target auto`): they
    /// become configurations after the lookup, at start ([`crate::lookup::resolve_args`]).
    pub pending: Vec<Pending>,
    pub log: LogArgs,
}

/// A target waiting for an AWS lookup; `name` is its file name, if it has one.
#[derive(Debug)]
pub struct Pending {
    pub name: Option<String>,
    pub args: ProxyArgs,
}

/// Builds the plan from the parsed command line (and so the environment clap read) and, when
/// there is one, the config file. `env` looks up `XDG_CONFIG_HOME` and `HOME`.
pub fn plan(matches: &ArgMatches, env: impl Fn(&str) -> Option<OsString>) -> Result<Plan, ConfigFileError> {
    let cli = Cli::from_arg_matches(matches).map_err(|e| ConfigFileError::Flags(clap_reason(&e)))?;
    let path = match &cli.file.config {
        Some(path) => Some(path.clone()),
        None => default_path(&env).filter(|p| p.is_file()),
    };
    let Some(path) = path else {
        let (targets, pending) = if crate::lookup::needs_lookup(&cli.proxy) {
            (vec![], vec![Pending { name: None, args: cli.proxy }])
        } else {
            (vec![Config::from_args(&cli.proxy)?], vec![])
        };
        return Ok(Plan {
            file: None,
            targets,
            pending,
            log: cli.log,
        });
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigFileError::Read {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    plan_from_text(&path, &text, &CliLayer::from_matches(matches))
}

/// `$XDG_CONFIG_HOME/rds-auth-proxy/config.toml`, else `$HOME/.config/…` (the XDG rule: a
/// relative XDG_CONFIG_HOME is ignored); on Windows `%APPDATA%\rds-auth-proxy\config.toml`
/// ([`crate::os::config_dir`]).
pub fn default_path(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    crate::os::config_dir(env).map(|dir| dir.join("config.toml"))
}

/// The plan for the file `text` (read from `path`) under the flags and variables in `cli`.
pub fn plan_from_text(path: &Path, text: &str, cli: &CliLayer) -> Result<Plan, ConfigFileError> {
    let keys = Keys::from_cli();
    let file = parse_file(path, text, keys)?;
    let cli_target = cli.values("target").and_then(|v| v.first().cloned());
    // (the tables to serve, whether flags win over a table's keys, whether --target was a name)
    let (selected, flags_win, target_was_name): (Vec<Option<&Layer>>, bool, bool) = if file.targets.is_empty() {
        (vec![None], true, false)
    } else if let Some(wanted) = cli_target {
        match file.targets.iter().find(|t| t.name.as_ref().map(|(n, _)| n) == Some(&wanted)) {
            Some(t) => (vec![Some(t)], true, true),
            // An endpoint: served alone, with the file's top-level keys as its defaults.
            None => (vec![None], true, false),
        }
    } else {
        (file.targets.iter().map(Some).collect(), file.targets.len() == 1, false)
    };

    let mut targets = Vec::new();
    let mut pending = Vec::new();
    let mut log = None;
    for table in selected {
        let resolved = resolve(keys, cli, table, &file.top, flags_win, target_was_name);
        let mut parsed = parse_resolved(&resolved.argv).map_err(|e| match table {
            Some(t) => ConfigFileError::At {
                path: path.to_owned(),
                line: t.line,
                message: format!("[[target]] {:?}: {e}", t.name.as_ref().map_or("", |(n, _)| n)),
            },
            None => ConfigFileError::Flags(format!("{}: {e}", path.display())),
        })?;
        log.get_or_insert(parsed.log);
        parsed.proxy.password_tables = password_tables(table);
        if crate::lookup::needs_lookup(&parsed.proxy) {
            let name = table.and_then(|t| t.name.as_ref()).map(|(n, _)| n.clone());
            pending.push(Pending { name, args: parsed.proxy });
            continue;
        }
        let mut config = Config::from_args(&parsed.proxy)
            .map_err(|e| locate_config_error(path, e, &resolved, table, &file.top))?;
        if let Some((name, _)) = table.and_then(|t| t.name.as_ref()) {
            config.name = name.clone();
        }
        targets.push((config, table));
    }
    check_listeners(path, &targets)?;
    Ok(Plan {
        file: Some(path.to_owned()),
        targets: targets.into_iter().map(|(c, _)| c).collect(),
        pending,
        log: log.unwrap_or(LogArgs {
            log_format: crate::cli::LogFormat::Text,
            quiet: false,
        }),
    })
}

/// The one target a subcommand (`doctor`, `connect-info`) works on, read as the proxy reads its
/// own: flag > `RDS_AUTH_PROXY_*` variable > the file (`config`, else the default path when it
/// exists) > default, and `--target NAME` picks the file's `[[target]]` NAME. `matches` are the
/// subcommand's own, which flatten [`ProxyArgs`] and so have the same ids. Returns the arguments
/// and the table's name; a file of several targets without `--target NAME` is an error naming
/// them, as a subcommand checks or describes one target.
pub fn one_target(
    matches: &ArgMatches,
    config: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<(ProxyArgs, Option<String>), ConfigFileError> {
    let proxy = ProxyArgs::from_arg_matches(matches).map_err(|e| ConfigFileError::Flags(clap_reason(&e)))?;
    let path = match config {
        Some(path) => Some(path.to_owned()),
        None => default_path(&env).filter(|p| p.is_file()),
    };
    let Some(path) = path else {
        return Ok((proxy, None));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigFileError::Read {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let keys = Keys::from_cli();
    let file = parse_file(&path, &text, keys)?;
    let cli = CliLayer::from_matches(matches);
    let wanted = cli.values("target").and_then(|v| v.first().cloned());
    let named = |t: &&Layer| t.name.as_ref().map(|(n, _)| n) == wanted.as_ref();
    let (table, target_was_name) = match (file.targets.as_slice(), file.targets.iter().find(named)) {
        (_, Some(t)) => (Some(t), true),
        ([], None) => (None, false),
        // An endpoint given with --target: the file's top-level keys are its defaults.
        (_, None) if wanted.is_some() => (None, false),
        ([only], None) => (Some(only), false),
        (all, None) => {
            let names: Vec<String> = all
                .iter()
                .map(|t| t.name.as_ref().map_or_else(|| format!("(unnamed, line {})", t.line), |(n, _)| n.clone()))
                .collect();
            return Err(ConfigFileError::Flags(format!(
                "{} defines {} targets ({}): pick one with --target NAME",
                path.display(),
                all.len(),
                names.join(", ")
            )));
        }
    };
    let resolved = resolve(keys, &cli, table, &file.top, true, target_was_name);
    let parsed = parse_resolved(&resolved.argv).map_err(|e| match table {
        Some(t) => ConfigFileError::At {
            path: path.clone(),
            line: t.line,
            message: format!("[[target]] {:?}: {e}", t.name.as_ref().map_or("", |(n, _)| n)),
        },
        None => ConfigFileError::Flags(format!("{}: {e}", path.display())),
    })?;
    let mut proxy = parsed.proxy;
    proxy.password_tables = password_tables(table);
    Ok((proxy, table.and_then(|t| t.name.as_ref()).map(|(n, _)| n.clone())))
}

/// How a flag takes values, which decides what a key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A switch: `true` or `false`.
    Switch,
    /// One value.
    One,
    /// Repeatable: one value or an array.
    Many,
}

#[derive(Debug, Clone)]
struct Key {
    /// clap's id (the field name).
    id: String,
    /// The flag, without `--`.
    long: String,
    /// The file's key.
    key: String,
    kind: Kind,
    global: bool,
}

struct Keys(Vec<Key>);

impl Keys {
    /// Every long flag of the proxy itself (not of a subcommand) is a key. Built once: the
    /// definition is static and building it costs more than parsing a file.
    fn from_cli() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(Keys::build)
    }

    fn build() -> Keys {
        let cmd = Cli::command();
        let keys = cmd
            .get_arguments()
            .filter_map(|arg| {
                let id = arg.get_id().as_str();
                let long = arg.get_long()?;
                if NOT_KEYS.contains(&id) || arg.is_positional() {
                    return None;
                }
                let key = if id == "target" { "endpoint".to_owned() } else { long.replace('-', "_") };
                let kind = match arg.get_action() {
                    ArgAction::SetTrue => Kind::Switch,
                    ArgAction::Append => Kind::Many,
                    _ => Kind::One,
                };
                Some(Key {
                    id: id.to_owned(),
                    long: long.to_owned(),
                    global: GLOBAL_KEYS.contains(&key.as_str()) || arg.is_global_set(),
                    key,
                    kind,
                })
            })
            .collect();
        Keys(keys)
    }

    fn by_key(&self, key: &str) -> Option<&Key> {
        self.0.iter().find(|k| k.key == key)
    }

    fn by_id(&self, id: &str) -> Option<&Key> {
        self.0.iter().find(|k| k.id == id)
    }
}

/// A value as given in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Given {
    Switch(bool),
    Values(Vec<String>),
}

/// What the command line and the environment set (defaults excluded), by clap id.
#[derive(Debug, Clone, Default)]
pub struct CliLayer(BTreeMap<String, (Origin, Given)>);

impl CliLayer {
    pub fn from_matches(matches: &ArgMatches) -> CliLayer {
        let mut layer = CliLayer::default();
        for key in &Keys::from_cli().0 {
            let origin = match matches.value_source(&key.id) {
                Some(ValueSource::CommandLine) => Origin::Flag,
                Some(ValueSource::EnvVariable) => Origin::Env,
                _ => continue,
            };
            let given = match key.kind {
                Kind::Switch => Given::Switch(matches.get_flag(&key.id)),
                Kind::One | Kind::Many => Given::Values(
                    matches
                        .get_raw(&key.id)
                        .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
                        .unwrap_or_default(),
                ),
            };
            layer.0.insert(key.id.clone(), (origin, given));
        }
        layer
    }

    /// Sets `id` as given by `origin` (tests build layers by hand; clap reads the real env).
    pub fn set(&mut self, id: &str, origin: Origin, given: Given) {
        self.0.insert(id.to_owned(), (origin, given));
    }

    fn values(&self, id: &str) -> Option<&Vec<String>> {
        match self.0.get(id) {
            Some((_, Given::Values(v))) => Some(v),
            _ => None,
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    /// A `[[target]]` table.
    Target,
    /// The file's top level.
    TopLevel,
}

/// One table of the file: its values by clap id, each with its line.
#[derive(Debug, Default)]
struct Layer {
    values: BTreeMap<String, (Given, usize)>,
    /// `[[target]]` tables: the name and its line.
    name: Option<(String, usize)>,
    /// The table's first line.
    line: usize,
    /// `[[target.password]]`: password users of the target, each with its table's line.
    passwords: Vec<(crate::config::PasswordUser, usize)>,
}

#[derive(Debug)]
struct FileLayers {
    top: Layer,
    targets: Vec<Layer>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

fn parse_file(path: &Path, text: &str, keys: &Keys) -> Result<FileLayers, ConfigFileError> {
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

/// A target's `[[target.password]]` users, for its [`ProxyArgs::password_tables`].
fn password_tables(table: Option<&Layer>) -> Vec<crate::config::PasswordUser> {
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

/// Runs the flag's own parser on the values: a key means exactly what its flag means.
fn check_values(key: &Key, values: &[String]) -> Result<(), String> {
    let mut argv = vec!["rds-auth-proxy".to_owned()];
    argv.extend(values.iter().map(|v| format!("--{}={v}", key.long)));
    match without_env().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => {
            let got = values.join(", ");
            Err(format!("{} (got {got:?})", clap_reason(&e)))
        }
    }
}

/// The reason of a clap error, without its "error:" prefix and usage lines.
fn clap_reason(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return format!("expected one of: {}", valid.join(", "));
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// The command line definition with no `env =`: resolved values are all passed as flags. Built
/// once and cloned, as a file parse runs it once per key.
fn without_env() -> clap::Command {
    static COMMAND: OnceLock<clap::Command> = OnceLock::new();
    COMMAND
        .get_or_init(|| {
            let mut cmd = Cli::command().mut_args(|a| a.env(None::<&str>));
            cmd.build();
            cmd
        })
        .clone()
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

/// The known key nearest to a misspelt one, if it is close.
fn closest<'k>(name: &str, keys: &'k Keys) -> Option<&'k str> {
    keys.0
        .iter()
        .map(|k| (edit_distance(name, &k.key), k.key.as_str()))
        .chain(std::iter::once((edit_distance(name, "name"), "name")))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// One target's winning values as a command line, and where each came from.
#[derive(Debug)]
struct Resolved {
    argv: Vec<String>,
    /// By clap id: the origin and, for the file, the line.
    origins: BTreeMap<String, (Origin, Option<usize>)>,
}

fn resolve(
    keys: &Keys,
    cli: &CliLayer,
    table: Option<&Layer>,
    top: &Layer,
    flags_win: bool,
    target_was_name: bool,
) -> Resolved {
    let mut argv = vec!["rds-auth-proxy".to_owned()];
    let mut origins = BTreeMap::new();
    for key in &keys.0 {
        let from_cli = cli
            .0
            .get(&key.id)
            .filter(|_| !(target_was_name && key.id == "target"))
            .map(|(origin, given)| (*origin, given, None));
        let from_table = table
            .and_then(|t| t.values.get(&key.id))
            .map(|(given, line)| (Origin::Target, given, Some(*line)));
        let from_top = top
            .values
            .get(&key.id)
            .map(|(given, line)| (Origin::TopLevel, given, Some(*line)));
        let winner = if flags_win {
            from_cli.or(from_table).or(from_top)
        } else {
            from_table.or(from_cli).or(from_top)
        };
        let Some((origin, given, line)) = winner else { continue };
        match given {
            Given::Switch(true) => argv.push(format!("--{}", key.long)),
            Given::Switch(false) => {}
            Given::Values(values) => argv.extend(values.iter().map(|v| format!("--{}={v}", key.long))),
        }
        origins.insert(key.id.clone(), (origin, line));
    }
    Resolved { argv, origins }
}

fn parse_resolved(argv: &[String]) -> Result<Cli, String> {
    let matches = without_env().try_get_matches_from(argv).map_err(|e| clap_reason(&e))?;
    Cli::from_arg_matches(&matches).map_err(|e| clap_reason(&e))
}

/// The flag (clap id) a configuration error is about.
fn error_key(e: &ConfigError) -> Option<&'static str> {
    Some(match e {
        ConfigError::MissingTarget | ConfigError::BadTarget(_) => "target",
        ConfigError::RemoteAddress(_) => "address",
        ConfigError::BadConnectAddr(_) | ConfigError::ConnectAddrWithSsm => "connect_addr",
        ConfigError::BadUnixSocketDir(_) => "unix_socket",
        ConfigError::MissingCaBundle(_) => "ca_bundle",
        ConfigError::MissingProxyCaBundle(_) => "proxy_ca_bundle",
        ConfigError::EmptyDbUser => "db_user",
        ConfigError::MissingSsmTarget => "via",
        ConfigError::BadSsmTarget(_) => "ssm_target",
        ConfigError::BadSsmSessions(_) => "ssm_sessions",
        ConfigError::BadSsmIdleTimeout => "ssm_idle_timeout",
        ConfigError::SsmFlagWithoutSsm(flag) => return Some(static_id(flag)),
        ConfigError::BadSsmKeepalive => "ssm_keepalive",
        ConfigError::BadSsmStallTimeout => "ssm_stall_timeout",
        ConfigError::BadSsmMaxPayload(_) => "ssm_max_payload",
        ConfigError::TwoPasswordSources | ConfigError::EmptyPasswordSecret => "password_secret",
        ConfigError::SecretKeyWithoutSecret => "password_secret_key",
        ConfigError::BadPasswordFile(_) | ConfigError::NoPasswordUser => "password_file",
        ConfigError::PasswordUserWithoutPassword | ConfigError::EmptyPasswordUser => "password_user",
        ConfigError::ClientCaWithoutLocalTls | ConfigError::ClientCaWithoutRemote | ConfigError::MissingClientCaFile(_) => {
            "client_ca_file"
        }
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

fn static_id(flag: &str) -> &'static str {
    match flag {
        "ssm-target" => "ssm_target",
        "ssm-sessions" => "ssm_sessions",
        "ssm-tag" => "ssm_tag",
        "ssm-prewarm" => "ssm_prewarm",
        _ => "via",
    }
}

/// A configuration error of a target, placed on the line of the key that caused it.
fn locate_config_error(
    path: &Path,
    e: ConfigError,
    resolved: &Resolved,
    table: Option<&Layer>,
    top: &Layer,
) -> ConfigFileError {
    let prefix = match table.and_then(|t| t.name.as_ref()) {
        Some((name, _)) => format!("[[target]] {name:?}: "),
        None => String::new(),
    };
    let id = error_key(&e);
    let key = id
        .and_then(|id| Keys::from_cli().by_id(id).map(|k| k.key.clone()))
        .unwrap_or_default();
    match id.and_then(|id| resolved.origins.get(id)) {
        Some((Origin::Target | Origin::TopLevel, Some(line))) => ConfigFileError::At {
            path: path.to_owned(),
            line: *line,
            message: format!("{prefix}key {key:?}: {e}"),
        },
        // The flag or variable won: its own mistake.
        Some(_) => ConfigFileError::Config(e),
        None => {
            let message = match e {
                ConfigError::MissingTarget => format!(
                    "{prefix}no `endpoint`: the RDS endpoint name, e.g. endpoint = \"mydb.abc123.eu-central-1.rds.amazonaws.com\""
                ),
                ConfigError::MissingSsmTarget => {
                    format!("{prefix}via = \"ssm\" needs `ssm_target`: the id of an SSM managed node that can reach the database, e.g. ssm_target = \"i-0123456789abcdef0\"")
                }
                other => format!("{prefix}{other}"),
            };
            ConfigFileError::At {
                path: path.to_owned(),
                line: table.map_or(top.line, |t| t.line),
                message,
            }
        }
    }
}

/// No two targets on one TCP port of overlapping addresses, or on one Unix socket.
fn check_listeners(path: &Path, targets: &[(Config, Option<&Layer>)]) -> Result<(), ConfigFileError> {
    for (i, (b, table)) in targets.iter().enumerate() {
        for (a, _) in &targets[..i] {
            let (la, lb) = (&a.listen, &b.listen);
            let same_port = la.address.port() == lb.address.port() && la.address.port() != 0;
            let overlap = la.address.ip() == lb.address.ip()
                || la.address.ip().is_unspecified()
                || lb.address.ip().is_unspecified();
            let socket = |c: &Config| {
                c.listen
                    .unix_socket_dir
                    .as_ref()
                    .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
            };
            let same_socket = same_port && socket(a).is_some() && socket(a) == socket(b);
            if (same_port && overlap) || same_socket {
                let what = if same_port && overlap {
                    format!("port {}", lb.address.port())
                } else {
                    format!("the Unix socket in {}", lb.unix_socket_dir.as_deref().unwrap_or(Path::new("")).display())
                };
                let line = table
                    .and_then(|t| t.values.get("port").map(|(_, l)| *l).or(Some(t.line)))
                    .unwrap_or(1);
                return Err(ConfigFileError::At {
                    path: path.to_owned(),
                    line,
                    message: format!(
                        "key \"port\": targets {:?} and {:?} both listen on {what}: give each target its own `port`",
                        a.name, b.name
                    ),
                });
            }
        }
    }
    Ok(())
}

/// `--list-targets`: one line per target — name, listener, endpoint, route.
pub fn describe(plan: &Plan) -> String {
    let mut rows = rows(&plan.targets);
    for p in &plan.pending {
        let a = &p.args;
        let endpoint = match (&a.db_instance, &a.db_cluster, &a.target) {
            (Some(db), _, _) => format!("(DB instance {db})"),
            (_, Some(c), _) if a.reader => format!("(reader of DB cluster {c})"),
            (_, Some(c), _) => format!("(DB cluster {c})"),
            (_, _, Some(t)) => t.clone(),
            _ => String::new(),
        };
        let via = match a.via {
            crate::cli::Via::Direct => "direct".to_owned(),
            crate::cli::Via::Ssm => format!("ssm {} (up to {} sessions)", a.ssm_target.as_deref().unwrap_or("?"), a.ssm_sessions),
        };
        let name = p.name.clone().unwrap_or_else(|| endpoint.clone());
        rows.push([name, SocketAddr::new(a.address, a.port).to_string(), endpoint, via]);
    }
    table(rows)
}

fn rows(targets: &[Config]) -> Vec<[String; 4]> {
    targets
        .iter()
        .map(|c| {
            let mut listen = c.listen.address.to_string();
            if let Some(dir) = &c.listen.unix_socket_dir {
                let _ = write!(listen, " + {}", dir.join(format!(".s.PGSQL.{}", c.listen.address.port())).display());
            }
            let via = match &c.via {
                ViaConfig::Direct { connect_addr } if *connect_addr == format!("{}:{}", c.endpoint, c.port) => "direct".to_owned(),
                ViaConfig::Direct { connect_addr } => format!("direct to {connect_addr}"),
                ViaConfig::Ssm(ssm) => format!("ssm {} (up to {} sessions)", ssm.node, ssm.sessions),
            };
            [c.name.clone(), listen, format!("{}:{}", c.endpoint, c.port), via]
        })
        .collect()
}

fn table(rows: Vec<[String; 4]>) -> String {
    let header = ["NAME", "LISTEN", "ENDPOINT", "VIA"].map(str::to_owned);
    let mut widths = [0; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(text: &str, cli: &CliLayer) -> Result<Plan, ConfigFileError> {
        plan_from_text(Path::new("test.toml"), text, cli)
    }

    fn flag(pairs: &[(&str, Origin, &str)]) -> CliLayer {
        let mut layer = CliLayer::default();
        for (id, origin, v) in pairs {
            layer.set(id, *origin, Given::Values(vec![(*v).to_owned()]));
        }
        layer
    }

    fn err_line(r: Result<Plan, ConfigFileError>) -> String {
        r.expect_err("refused").to_string()
    }

    const TWO: &str = r#"
region = "eu-west-1"
db_user = "top_user"
ssm_sessions = 2

[[target]]
name = "dev"
endpoint = "dev.abc.eu-west-1.rds.amazonaws.com"
port = 7001
via = "ssm"
ssm_target = "i-0123456789abcdef0"

[[target]]
name = "prod"
endpoint = "prod.abc.eu-west-1.rds.amazonaws.com"
port = 7002
db_user = "prod_user"
"#;

    #[test]
    fn password_users_per_target() {
        use crate::config::{PasswordConfig, PasswordUser};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("app.pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pw = pw.display().to_string();
        let text = format!(
            "[[target]]\nname = \"db\"\nendpoint = \"db.abc.eu-west-1.rds.amazonaws.com\"\n\n\
             [[target.password]]\nsecret = \"rds!db-1\"\n\n\
             [[target.password]]\nuser = \"app\"\nfile = {pw:?}\n\n\
             [[target.password]]\nuser = \"report\"\nsecret = \"report-pw\"\nsecret_key = \"pw\"\n"
        );
        let plan = plan_of(&text, &CliLayer::default()).expect("valid");
        assert_eq!(
            plan.targets[0].passwords,
            vec![
                PasswordUser { user: None, source: PasswordConfig::Secret { secret_id: "rds!db-1".into(), key: "password".into() } },
                PasswordUser { user: Some("app".into()), source: PasswordConfig::File(pw.clone().into()) },
                PasswordUser { user: Some("report".into()), source: PasswordConfig::Secret { secret_id: "report-pw".into(), key: "pw".into() } },
            ]
        );
        // With a flag's password too: one source per user.
        let cli = flag(&[("password_secret", Origin::Flag, "other"), ("password_user", Origin::Flag, "app")]);
        let got = err_line(plan_of(&text, &cli));
        assert!(got.contains("two passwords for database user \"app\": give each user one password source"), "{got}");

        let head = "[[target]]\nname = \"db\"\nendpoint = \"db.abc.eu-west-1.rds.amazonaws.com\"\n[[target.password]]\n";
        let cases: [(String, &str); 7] = [
            (format!("{head}user = \"app\"\n"), "test.toml:5: [[target.password]]: give `secret` (AWS Secrets Manager) or `file`, and `user`"),
            (format!("{head}file = {pw:?}\n"), "test.toml:5: [[target.password]]: which database user is the password of `file` for? Add user = \"NAME\""),
            (format!("{head}user = \"app\"\nsecret = \"s\"\nfile = {pw:?}\n"), "test.toml:7: [[target.password]]: `secret` and `file` exclude each other"),
            (format!("{head}user = \"app\"\npasword = \"x\"\n"), "test.toml:6: [[target.password]] key \"pasword\": unknown key"),
            (format!("{head}user = 5\nsecret = \"s\"\n"), "test.toml:5: [[target.password]] key \"user\": expected a non-empty string, not integer"),
            (format!("{head}user = \"app\"\nfile = \"/nonexistent/pw\"\n"), "test.toml:6: [[target.password]] key \"file\": cannot read the password file /nonexistent/pw"),
            (
                format!("{head}user = \"app\"\nsecret = \"a\"\n[[target.password]]\nuser = \"app\"\nsecret = \"b\"\n"),
                "a second password for user \"app\" (the first is on line 4)",
            ),
        ];
        for (text, want) in cases {
            let got = err_line(plan_of(&text, &CliLayer::default()));
            assert!(got.contains(want), "{text}\n got: {got}\nwant: {want}");
        }
        let top = "[[password]]\nuser = \"app\"\nsecret = \"s\"\n";
        assert!(err_line(plan_of(top, &CliLayer::default())).contains("password users belong to a target"));
    }

    #[test]
    fn two_targets_with_top_level_defaults() {
        let plan = plan_of(TWO, &CliLayer::default()).unwrap();
        let [dev, prod] = &plan.targets[..] else { panic!("{:?}", plan.targets) };
        assert_eq!(dev.name, "dev");
        assert_eq!(dev.listen.address.to_string(), "127.0.0.1:7001");
        assert_eq!(dev.db_user.as_deref(), Some("top_user"));
        match &dev.via {
            ViaConfig::Ssm(ssm) => assert_eq!((ssm.node.as_str(), ssm.sessions), ("i-0123456789abcdef0", 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(prod.name, "prod");
        assert_eq!(prod.db_user.as_deref(), Some("prod_user"));
        assert_eq!(prod.region.as_deref(), Some("eu-west-1"));
        assert!(matches!(prod.via, ViaConfig::Direct { .. }));
        let listing = describe(&plan);
        assert!(listing.starts_with("NAME  LISTEN"), "{listing}");
        assert!(listing.contains("dev   127.0.0.1:7001  dev.abc.eu-west-1.rds.amazonaws.com:5432   ssm i-0123456789abcdef0 (up to 2 sessions)"), "{listing}");
        assert!(listing.contains("prod  127.0.0.1:7002  prod.abc.eu-west-1.rds.amazonaws.com:5432  direct\n"), "{listing}");
    }

    /// (file, flags and variables, the region each target gets)
    type Case<'a> = (&'a str, &'a [(&'a str, Origin, &'a str)], &'a [Option<&'a str>]);

    /// flag > env > file > default, for a key set in a single target's table, at the top level,
    /// or both; and with several targets a table's own key over the flag.
    #[test]
    fn precedence_table() {
        use Origin::{Env, Flag};
        let single_table = "[[target]]\nname = \"a\"\nendpoint = \"db.example\"\nregion = \"table-1\"\n";
        let single_top = "region = \"top-1\"\nendpoint = \"db.example\"\n";
        let both = "region = \"top-1\"\n[[target]]\nname = \"a\"\nendpoint = \"db.example\"\nregion = \"table-1\"\n";
        let multi = "region = \"top-1\"\n[[target]]\nname = \"a\"\nendpoint = \"db.example\"\nport = 7001\nregion = \"table-1\"\n\
                     [[target]]\nname = \"b\"\nendpoint = \"db2.example\"\nport = 7002\n";
        let none = "endpoint = \"db.example\"\n";
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // file                  flags/env                                        region per target
            (none,         &[],                                                 &[None]),
            (single_top,   &[],                                                 &[Some("top-1")]),
            (single_top,   &[("region", Env, "env-1")],                         &[Some("env-1")]),
            (single_top,   &[("region", Env, "env-1"), ("region", Flag, "flag-1")], &[Some("flag-1")]),
            (single_table, &[],                                                 &[Some("table-1")]),
            (single_table, &[("region", Env, "env-1")],                         &[Some("env-1")]),
            (single_table, &[("region", Flag, "flag-1")],                       &[Some("flag-1")]),
            (both,         &[],                                                 &[Some("table-1")]),
            (both,         &[("region", Flag, "flag-1")],                       &[Some("flag-1")]),
            (multi,        &[],                                                 &[Some("table-1"), Some("top-1")]),
            (multi,        &[("region", Env, "env-1")],                         &[Some("table-1"), Some("env-1")]),
            (multi,        &[("region", Flag, "flag-1")],                       &[Some("table-1"), Some("flag-1")]),
        ];
        for (file, given, expected) in cases {
            let plan = plan_of(file, &flag(given)).unwrap_or_else(|e| panic!("{file} {given:?}: {e}"));
            let regions: Vec<Option<&str>> = plan.targets.iter().map(|t| t.region.as_deref()).collect();
            assert_eq!(&regions, expected, "{file} with {given:?}");
        }
    }

    #[test]
    fn defaults_switches_lists_and_globals() {
        // A shared listener needs the client password file (owner-only) and local TLS.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("client.pw");
        std::fs::write(&pw, "secret\n").unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let text = format!(
            "log_format = \"json\"\nquiet = true\ndrain_timeout = 3\nca_bundle = [\"/\", \"/\"]\n\
             [[target]]\nname = \"a\"\nendpoint = \"db.example:6000\"\naddress = \"0.0.0.0\"\nallow_remote = true\n\
             client_password_file = {:?}\nport = 0\nlocal_tls = true\nlocal_tls_ca_out = {:?}\n",
            pw.display().to_string(),
            dir.path().join("ca.pem").display().to_string()
        );
        let plan = plan_of(&text, &CliLayer::default()).unwrap();
        let t = &plan.targets[0];
        assert_eq!(plan.log.log_format, crate::cli::LogFormat::Json);
        assert!(plan.log.quiet);
        assert_eq!(t.listen.drain_timeout, std::time::Duration::from_secs(3));
        assert_eq!(t.ca_bundles.len(), 2);
        assert_eq!(t.listen.address.to_string(), "0.0.0.0:0");
        assert_eq!(t.port, 6000);
        // Untouched keys keep the flags' defaults.
        let plan = plan_of("endpoint = \"db.example\"\n", &CliLayer::default()).unwrap();
        assert_eq!(plan.targets[0].listen.address.to_string(), "127.0.0.1:6543");
        assert_eq!(plan.targets[0].name, "db.example");
        assert_eq!(plan.log.log_format, crate::cli::LogFormat::Text);
        // A flag switch wins over the file's false (flags win for a single target).
        let mut cli = CliLayer::default();
        cli.set("quiet", Origin::Flag, Given::Switch(true));
        assert!(plan_of("endpoint = \"db.example\"\nquiet = false\n", &cli).unwrap().log.quiet);
    }

    #[test]
    fn target_flag_selects_a_name_or_replaces_the_targets() {
        let by_name = plan_of(TWO, &flag(&[("target", Origin::Flag, "prod")])).unwrap();
        assert_eq!(by_name.targets.len(), 1);
        assert_eq!(by_name.targets[0].endpoint, "prod.abc.eu-west-1.rds.amazonaws.com");
        // A selected target is the only one, so flags win over its keys.
        let cli = flag(&[("target", Origin::Env, "prod"), ("db_user", Origin::Flag, "me")]);
        assert_eq!(plan_of(TWO, &cli).unwrap().targets[0].db_user.as_deref(), Some("me"));
        let endpoint = plan_of(TWO, &flag(&[("target", Origin::Flag, "other.example")])).unwrap();
        let [t] = &endpoint.targets[..] else { panic!() };
        assert_eq!((t.endpoint.as_str(), t.name.as_str()), ("other.example", "other.example"));
        assert_eq!(t.db_user.as_deref(), Some("top_user"), "top-level keys still apply");
    }

    /// Every mistake is one line naming the file, the line and the key.
    #[test]
    fn error_table() {
        #[rustfmt::skip]
        let cases: &[(&str, &str)] = &[
            ("endpoint = \"db\"\nprot = 1\n", "test.toml:2: key \"prot\": unknown key at the top level (did you mean \"port\"?)"),
            ("[[target]]\nname = \"a\"\nendpoint = \"db\"\nssm_targte = \"i-1\"\n", "test.toml:4: key \"ssm_targte\": unknown key in [[target]] (did you mean \"ssm_target\"?)"),
            ("endpoint = \"db\"\nport = \"abc\"\n", "test.toml:2: key \"port\": invalid digit found in string (got \"abc\")"),
            ("endpoint = \"db\"\nport = 70000\n", "test.toml:2: key \"port\": 70000 is not in 0..=65535 (got \"70000\")"),
            ("endpoint = \"db\"\nvia = \"sms\"\n", "test.toml:2: key \"via\": expected one of: direct, ssm (got \"sms\")"),
            ("endpoint = \"db\"\nallow_remote = \"yes\"\n", "test.toml:2: key \"allow_remote\": expected true or false, not string"),
            ("endpoint = \"db\"\nregion = [\"a\"]\n", "test.toml:2: key \"region\": expected one value, not array"),
            ("endpoint = \"db\"\nport = \n", "test.toml:2: key \"port\": invalid TOML:"),
            ("[[target]]\nname = \"a\"\nendpoint = \"db\"\nlog_format = \"json\"\n", "test.toml:4: key \"log_format\": applies to the whole process"),
            ("name = \"a\"\nendpoint = \"db\"\n", "test.toml:1: key \"name\": `name` belongs in a [[target]] table"),
            ("[[target]]\nendpoint = \"db\"\n", "test.toml:1: this [[target]] has no `name`"),
            ("[[target]]\nname = \"a b\"\nendpoint = \"db\"\n", "test.toml:2: key \"name\": \"a b\" is not a valid name"),
            ("[[target]]\nname = \"a\"\nendpoint = \"db\"\nport = 7000\n[[target]]\nname = \"a\"\nendpoint = \"db2\"\nport = 7001\n", "test.toml:6: key \"name\": a second target named \"a\" (the first is on line 2)"),
            ("[[target]]\nname = \"a\"\nendpoint = \"db\"\nport = 7000\n\n[[target]]\nname = \"b\"\nendpoint = \"db2\"\nport = 7000\n", "test.toml:9: key \"port\": targets \"a\" and \"b\" both listen on port 7000"),
            ("[[target]]\nname = \"a\"\nendpoint = \"db\"\n\n[[target]]\nname = \"b\"\nendpoint = \"db2\"\n", "test.toml:5: key \"port\": targets \"a\" and \"b\" both listen on port 6543"),
            ("[[target]]\nname = \"a\"\nendpoint = \"db\"\nport = 7000\nunix_socket = \"/tmp\"\n[[target]]\nname = \"b\"\nendpoint = \"db2\"\naddress = \"127.0.0.2\"\nport = 7000\nunix_socket = \"/tmp\"\n", "test.toml:10: key \"port\": targets \"a\" and \"b\" both listen on the Unix socket in /tmp"),
            ("[[target]]\nname = \"a\"\nport = 7000\n", "test.toml:1: [[target]] \"a\": no `endpoint`"),
            ("[[target]]\nname = \"a\"\nendpoint = \"db\"\nvia = \"ssm\"\n", "test.toml:4: [[target]] \"a\": key \"via\": --via ssm needs --ssm-target"),
            ("endpoint = \"db\"\nssm_sessions = 0\nvia = \"ssm\"\nssm_target = \"i-0123456789abcdef0\"\n", "test.toml:2: key \"ssm_sessions\": --ssm-sessions must be between 1 and 64, not 0"),
            ("endpoint = \"bad host\"\n", "test.toml:1: key \"endpoint\": --target \"bad host\" is not a valid ENDPOINT[:PORT]"),
            ("endpoint = \"db\"\naddress = \"10.1.2.3\"\n", "test.toml:2: key \"address\": --address 10.1.2.3 is not a loopback address"),
            ("target = 1\n", "test.toml:1: `target` must be [[target]] tables"),
        ];
        for (text, expected) in cases {
            let got = err_line(plan_of(text, &CliLayer::default()));
            assert!(got.starts_with(expected), "{text:?}\n got: {got}\nwant: {expected}");
            assert!(!got.contains('\n'), "one line: {got}");
        }
        // Two targets on different ports of different loopback addresses are fine; port 0 never clashes.
        assert!(plan_of("[[target]]\nname = \"a\"\nendpoint = \"db\"\nport = 0\n[[target]]\nname = \"b\"\nendpoint = \"db\"\nport = 0\n", &CliLayer::default()).is_ok());
        // A flag's own mistake is reported as the flag's, without a file line.
        let got = err_line(plan_of("endpoint = \"db\"\n", &flag(&[("address", Origin::Flag, "10.1.2.3")])));
        assert!(got.starts_with("--address 10.1.2.3 is not a loopback address"), "{got}");
    }

    #[cfg(not(windows))]
    #[test]
    fn default_path_follows_xdg() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
        };
        assert_eq!(default_path(env(&[("HOME", "/home/u")])), Some("/home/u/.config/rds-auth-proxy/config.toml".into()));
        assert_eq!(
            default_path(env(&[("HOME", "/home/u"), ("XDG_CONFIG_HOME", "/xdg")])),
            Some("/xdg/rds-auth-proxy/config.toml".into())
        );
        assert_eq!(
            default_path(env(&[("HOME", "/home/u"), ("XDG_CONFIG_HOME", "relative")])),
            Some("/home/u/.config/rds-auth-proxy/config.toml".into())
        );
        assert_eq!(default_path(env(&[])), None);
    }

    /// The shipped example documents every key, and is itself a valid file.
    #[test]
    fn shipped_example_parses_and_documents_every_key() {
        let text = include_str!("../config/rds-auth-proxy.toml");
        let plan = plan_of(text, &CliLayer::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(plan.targets.len() >= 2, "the example shows several targets");
        for key in &Keys::from_cli().0 {
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{} =", key.key))
            });
            assert!(documented, "config/rds-auth-proxy.toml does not document the key {:?}", key.key);
        }
    }
}
