//! The file's keys: every long flag of the proxy, taken from the command line definition, and
//! the flags' own parsers, which check every value; what flags and variables set.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory};

use crate::cli::Cli;

/// Keys that hold for the whole process, so only at the top level.
const GLOBAL_KEYS: &[&str] = &["drain_timeout", "exit_zero_on_sigterm", "http_address", "http_port", "log_format", "quiet"];

/// Flags that are not keys: where the file is and what to do with the configuration.
const NOT_KEYS: &[&str] = &["config", "list_targets", "run_connection_test", "help", "version"];
/// How a flag takes values, which decides what a key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A switch: `true` or `false`.
    Switch,
    /// One value.
    One,
    /// Repeatable: one value or an array.
    Many,
}

#[derive(Debug, Clone)]
pub(super) struct Key {
    /// clap's id (the field name).
    pub(super) id: String,
    /// The flag, without `--`.
    pub(super) long: String,
    /// The file's key.
    pub(super) key: String,
    pub(super) kind: Kind,
    pub(super) global: bool,
}

pub(super) struct Keys(pub(super) Vec<Key>);

impl Keys {
    /// Every long flag of the proxy itself (not of a subcommand) is a key. Built once: the
    /// definition is static and building it costs more than parsing a file.
    pub(super) fn from_cli() -> &'static Keys {
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

    pub(super) fn by_key(&self, key: &str) -> Option<&Key> {
        self.0.iter().find(|k| k.key == key)
    }

    pub(super) fn by_id(&self, id: &str) -> Option<&Key> {
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
pub struct CliLayer(pub(super) BTreeMap<String, (Origin, Given)>);

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

    pub(super) fn values(&self, id: &str) -> Option<&Vec<String>> {
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

/// Runs the flag's own parser on the values: a key means exactly what its flag means.
pub(super) fn check_values(key: &Key, values: &[String]) -> Result<(), String> {
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
pub(super) fn clap_reason(e: &clap::Error) -> String {
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
pub(super) fn without_env() -> clap::Command {
    static COMMAND: OnceLock<clap::Command> = OnceLock::new();
    COMMAND
        .get_or_init(|| {
            let mut cmd = Cli::command().mut_args(|a| a.env(None::<&str>));
            cmd.build();
            cmd
        })
        .clone()
}

/// The known key nearest to a misspelt one, if it is close.
pub(super) fn closest<'k>(name: &str, keys: &'k Keys) -> Option<&'k str> {
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
