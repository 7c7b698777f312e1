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
//!
//! Here: [`plan`] and [`one_target`], which read the file and serve it. By concern: [`keys`]
//! (the keys, taken from the flags, and the flags' own parsers), [`parse`] (the file's tables,
//! with `file:line: key …` errors), [`layers`] (each target's values under the flags and
//! variables, and errors placed on the key's line) and [`list`] (`--list-targets`).

mod keys;
mod layers;
mod list;
mod parse;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgMatches, FromArgMatches};

pub use self::keys::{CliLayer, Given, Origin};
pub use self::list::describe;

use self::keys::{clap_reason, Keys};
use self::layers::{check_listeners, locate_config_error, parse_resolved, resolve};
use self::parse::{parse_file, password_tables, Layer};
use crate::cli::{Cli, LogArgs, ProxyArgs};
use crate::config::{Config, ConfigError};

/// The default file, under `$XDG_CONFIG_HOME` (else `~/.config`).
pub const DEFAULT_FILE: &str = "rds-auth-proxy/config.toml";

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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ViaConfig;

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
        let text = include_str!("../../config/rds-auth-proxy.toml");
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
