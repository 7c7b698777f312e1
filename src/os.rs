//! What differs per operating system, where it is not a `cfg` at its one call site: file modes
//! and where the config directory is. Every place that differs per OS is listed in
//! docs/development.md ("Portability").

use std::ffi::OsString;
use std::fs::{Metadata, OpenOptions};
use std::path::PathBuf;

/// rds-auth-proxy's own directory for its config file and local CA: on Linux and macOS
/// `$XDG_CONFIG_HOME/rds-auth-proxy`, else `$HOME/.config/rds-auth-proxy` (the XDG rule: a
/// relative XDG_CONFIG_HOME is ignored; macOS command-line tools commonly follow it too); on
/// Windows `%APPDATA%\rds-auth-proxy`. `env` looks the variables up.
pub fn config_dir(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let non_empty = |name| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if cfg!(windows) {
        return non_empty("APPDATA").map(|dir| dir.join("rds-auth-proxy"));
    }
    let base = match non_empty("XDG_CONFIG_HOME").filter(|p| p.is_absolute()) {
        Some(dir) => dir,
        None => non_empty("HOME")?.join(".config"),
    };
    Some(base.join("rds-auth-proxy"))
}

/// The permission bits of `meta` on Unix. Elsewhere (Windows: ACLs, under a user profile that
/// only its owner can read by default) a file counts as owner-only, 0600.
pub fn mode(meta: &Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o7777
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0o600
    }
}

/// `options` creating a file with `mode` on Unix (never briefly wider); elsewhere the new file
/// takes its directory's ACL.
pub fn create_with_mode(options: &mut OpenOptions, mode: u32) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        options
    }
}
