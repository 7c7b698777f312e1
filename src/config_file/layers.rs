//! Layering: each target's winning values (flag > variable > file > default, a table's own
//! keys over flags when there are several) as a command line, and a configuration error placed
//! on the line of the key that caused it; no two targets on one listener.

use std::collections::BTreeMap;
use std::path::Path;

use clap::FromArgMatches;

use super::keys::{clap_reason, without_env, Keys};
use super::parse::Layer;
use super::{CliLayer, ConfigFileError, Given, Origin};
use crate::cli::Cli;
use crate::config::{Config, ConfigError};

/// One target's winning values as a command line, and where each came from.
#[derive(Debug)]
pub(super) struct Resolved {
    pub(super) argv: Vec<String>,
    /// By clap id: the origin and, for the file, the line.
    origins: BTreeMap<String, (Origin, Option<usize>)>,
}

pub(super) fn resolve(
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

pub(super) fn parse_resolved(argv: &[String]) -> Result<Cli, String> {
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
pub(super) fn locate_config_error(
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
pub(super) fn check_listeners(path: &Path, targets: &[(Config, Option<&Layer>)]) -> Result<(), ConfigFileError> {
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
