//! The Debian package as `scripts/package` builds it, from the binary under test: its contents
//! (binary, man page, shell completions, the systemd user unit, the example config, the README and
//! docs/) and control fields. It is built with dpkg-deb from Cargo.toml's asset list (no cargo-deb
//! needed, which takes minutes to install); where cargo-deb is installed, its package must hold
//! the same files.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rds-auth-proxy");

/// `scripts/package --profile dev --no-build --fast` with `packager`: the .deb it printed.
fn package(packager: &str, output: &Path) -> PathBuf {
    let bin = Path::new(BIN);
    let target_dir = bin.parent().and_then(Path::parent).expect("the binary is in TARGET/debug");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package"))
        .args(["--profile", "dev", "--no-build", "--fast", "--output"])
        .arg(output)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RDS_AUTH_PROXY_PACKAGER", packager)
        .output()
        .expect("scripts/package runs");
    assert!(out.status.success(), "scripts/package with {packager}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("the package's path").trim())
}

/// The package's files (not directories), as `dpkg-deb -c` lists them.
fn files(deb: &Path) -> Vec<String> {
    let out = Command::new("dpkg-deb").arg("-c").arg(deb).output().expect("dpkg-deb is installed (apt-get install dpkg)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_owned))
        .collect();
    files.sort();
    files
}

fn control(deb: &Path) -> String {
    let out = Command::new("dpkg-deb").args(["-f"]).arg(deb).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_package_holds_the_binary_man_page_completions_user_unit_and_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let deb = package("dpkg-deb", dir.path());
    let files = files(&deb);
    for expected in [
        "./usr/bin/rds-auth-proxy",
        "./usr/share/man/man1/rds-auth-proxy.1.gz",
        "./usr/share/bash-completion/completions/rds-auth-proxy",
        "./usr/share/zsh/vendor-completions/_rds-auth-proxy",
        "./usr/share/fish/vendor_completions.d/rds-auth-proxy.fish",
        "./usr/lib/systemd/user/rds-auth-proxy.service",
        "./usr/share/doc/rds-auth-proxy/examples/config.toml",
        "./usr/share/doc/rds-auth-proxy/copyright",
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected} in the package: {files:#?}");
    }
    // The README and every page of docs/ it links to, in the same layout, so the links work.
    let mut docs = vec!["./usr/share/doc/rds-auth-proxy/README.md".to_owned()];
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/docs")).expect("docs/") {
        let name = entry.unwrap().file_name().into_string().unwrap();
        docs.push(format!("./usr/share/doc/rds-auth-proxy/docs/{name}"));
    }
    assert!(docs.len() > 5, "{docs:?}");
    for expected in &docs {
        assert!(files.contains(expected), "{expected} in the package (Cargo.toml's assets): {files:#?}");
    }
    let fields = control(&deb);
    for expected in ["Package: rds-auth-proxy", "Depends: libc6", "Section: database"] {
        assert!(fields.contains(expected), "{expected}: {fields}");
    }

    // What is inside: the binary runs, the man page and completions are its own, the unit
    // reads the user's config and reloads with SIGHUP.
    let root = dir.path().join("root");
    let x = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).status().unwrap();
    assert!(x.success());
    let version = Command::new(root.join("usr/bin/rds-auth-proxy")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("rds-auth-proxy "));
    let man = Command::new("gzip").arg("-dc").arg(root.join("usr/share/man/man1/rds-auth-proxy.1.gz")).output().unwrap();
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(man.contains(".TH rds-auth-proxy 1") && man.contains("drain\\-timeout"), "{}", &man[..man.len().min(300)]);
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/rds-auth-proxy")).unwrap();
    assert!(bash.contains("complete -F _rds__auth__proxy") && bash.contains("--ssm-target"), "{}", &bash[..bash.len().min(300)]);
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/user/rds-auth-proxy.service")).unwrap();
    for expected in [
        "ExecStart=/usr/bin/rds-auth-proxy --config %E/rds-auth-proxy/config.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WantedBy=default.target",
    ] {
        assert!(unit.lines().any(|l| l == expected), "{expected} in the unit:\n{unit}");
    }
    // Where systemd is there, its own parser reads the unit (system mode: a user manager may not
    // run here). Only the unit's own mistakes count: the binary and man page are not installed.
    if let Ok(verify) = Command::new("systemd-analyze").arg("verify").arg(root.join("usr/lib/systemd/user/rds-auth-proxy.service")).output() {
        let err = String::from_utf8_lossy(&verify.stderr);
        for mistake in ["Unknown key", "Unknown section", "Invalid", "Failed to parse", "Ignoring"] {
            assert!(!err.contains(mistake), "{err}");
        }
    }

    // cargo-deb, where installed, must make the same package from the same metadata.
    let cargo_deb = Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    if cargo_deb {
        let other = tempfile::tempdir().unwrap();
        let built = package("cargo-deb", other.path());
        assert_eq!(self::files(&built), files, "cargo-deb and dpkg-deb package the same files");
    } else {
        eprintln!("cargo-deb is not installed: only the dpkg-deb package was checked");
    }
}
