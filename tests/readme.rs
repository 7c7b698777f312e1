//! The README's and `docs/`'s commands, run as written: a recipe that does not work is worse than
//! none. Also: every HINT has a row in docs/troubleshooting.md, every config key a row in
//! docs/config-file.md, and every relative link in those pages leads somewhere.
//!
//! The only substitution: `cargo run -q --` is a shell function that runs the binary this test
//! build made (the same code; a nested `cargo` would fight the running one for the build lock).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rds-auth-proxy");

/// The indented code block right after the line holding `marker`, without its indentation.
fn code_block_after(markdown: &str, marker: &str) -> Vec<String> {
    let mut lines = markdown.lines().skip_while(|l| !l.contains(marker)).skip(1);
    let mut block: Vec<String> = Vec::new();
    for line in lines.by_ref() {
        if let Some(code) = line.strip_prefix("    ") {
            block.push(code.to_owned());
        } else if !block.is_empty() || !line.trim().is_empty() {
            break;
        }
    }
    assert!(!block.is_empty(), "no code block after {marker:?}");
    block
}

/// The documentation: README.md and docs/*.md, as (path from the repository root, text).
fn pages() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![PathBuf::from("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("a docs/ directory") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            paths.push(path.strip_prefix(root).unwrap().to_owned());
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(root.join(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

fn page(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The one page holding `marker`, wherever the recipe has moved.
fn page_with(marker: &str) -> String {
    let mut found: Vec<(PathBuf, String)> = pages().into_iter().filter(|(_, text)| text.contains(marker)).collect();
    let names: Vec<String> = found.iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(found.len(), 1, "{marker:?} must be in exactly one page, is in {names:?}");
    found.remove(0).1
}

/// `cargo run -q -- ARGS` → this build's binary, exec'd so `$!` is the program itself.
fn cargo_shim() -> String {
    format!(
        "cargo() {{ if [ \"$1 $2 $3\" = 'run -q --' ]; then shift 3; exec '{BIN}' \"$@\"; fi; \
         echo \"unexpected: cargo $*\" >&2; return 99; }}\n"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Direct children of `pid` (Linux /proc).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_recipe_works_as_written() {
    let marker = "<!-- tests/readme.rs: sim recipe -->";
    let recipe = code_block_after(&page_with(marker), marker);
    assert!(recipe.iter().any(|l| l.contains("cargo run -q -- sim")), "{recipe:?}");
    let script = cargo_shim() + &recipe.join("\n") + "\n";
    let port = free_port();
    let mut child = Command::new("bash")
        .args(["-c", &script])
        // Only what a fresh shell has, minus the developer's AWS setup; the port is the one
        // thing we move, through the variable the documentation gives.
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RDS_AUTH_PROXY_PORT", port.to_string())
        .env("RDS_AUTH_PROXY_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let bash_pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
        // EOF: every process of the recipe (bash, simulator, proxy) has exited.
    });
    let mut seen = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the recipe never started the proxy; stderr so far:\n{}", seen.join("\n"))
        });
        let ready = line.contains("ready for connections");
        seen.push(line);
        if ready {
            break;
        }
    }

    // The proxy from $SIM_PROXY_CMD answers on the port, through the simulated SSM tunnel.
    let conn = format!("host=127.0.0.1 port={port} user=db_user dbname=postgres connect_timeout=20");
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("login through the proxy");
    tokio::spawn(connection);
    let row = client.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "db_user");
    drop(client);

    // Ctrl-C the proxy, as a user would; the recipe's last line then stops the simulator.
    let kids = children(bash_pid);
    let proxy = *kids
        .iter()
        .find(|&&p| cmdline(p).iter().any(|a| a == "--target"))
        .unwrap_or_else(|| panic!("no proxy among {kids:?}"));
    let ca_bundle = cmdline(proxy)
        .windows(2)
        .find(|w| w[0] == "--ca-bundle")
        .map(|w| std::path::PathBuf::from(&w[1]))
        .expect("the proxy command names the simulator's CA file");
    assert!(ca_bundle.exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(proxy as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "recipe failed ({status}):\n{}\n{}", seen.join("\n"), rest.join("\n"));
    assert!(!ca_bundle.exists(), "the simulator was stopped and removed its files");
}

/// The documented config file is valid, and `--list-targets` prints for it what the page shows.
#[test]
fn the_config_file_example_lists_as_shown() {
    let marker = "<!-- tests/readme.rs: config file -->";
    let doc = page_with(marker);
    // The file has blank lines, which end code_block_after's blocks: take every indented or
    // blank line up to the next paragraph.
    let file: Vec<String> = doc
        .lines()
        .skip_while(|l| !l.contains(marker))
        .skip(2)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l).to_owned())
        .collect();
    assert!(file.iter().filter(|l| l.as_str() == "[[target]]").count() >= 2, "{file:?}");
    let expected = code_block_after(&doc, "`--list-targets` prints one line per target");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, file.join("\n") + "\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "--list-targets"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected.join("\n") + "\n");
}

/// A token of Rust source, as far as finding HINT texts needs: identifiers, string literals (raw
/// source text between the quotes) and single punctuation characters. Comments are skipped.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if ch == '"' || (ch == 'r' && matches!(c.get(i + 1), Some('"') | Some('#'))) || (ch == 'b' && c.get(i + 1) == Some(&'"')) {
            // "…", b"…", r"…", r#"…"#.
            let raw = ch == 'r';
            if ch != '"' {
                i += 1;
            }
            let mut hashes = 0;
            while raw && c.get(i) == Some(&'#') {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            let start = i;
            loop {
                if i >= c.len() {
                    break;
                }
                if !raw && c[i] == '\\' {
                    i += 2;
                    continue;
                }
                if c[i] == '"' && (0..hashes).all(|h| c.get(i + 1 + h) == Some(&'#')) {
                    break;
                }
                i += 1;
            }
            out.push(Tok::Str(c[start..i.min(c.len())].iter().collect()));
            i += 1 + hashes;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '"', '{') or a lifetime ('a).
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else {
            if !ch.is_whitespace() {
                out.push(Tok::Punct(ch));
            }
            i += 1;
        }
    }
    out
}

/// Whether a function makes HINT (or doctor `fix:`) texts, by the naming rule the code follows.
fn makes_hints(name: &str) -> bool {
    name == "hint" || name.ends_with("_hint") || name == "fix_for" || name.ends_with("_fix")
}

/// A literal that starts a sentence meant for the user, not a pattern compared against.
fn is_hint_text(toks: &[Tok], at: usize) -> bool {
    let Tok::Str(s) = &toks[at] else { return false };
    let compared = match (at.checked_sub(2).map(|p| &toks[p]), toks.get(at.wrapping_sub(1))) {
        (Some(Tok::Punct('=' | '!')), Some(Tok::Punct('='))) => true,
        (Some(Tok::Ident(f)), Some(Tok::Punct('('))) => {
            ["contains", "starts_with", "ends_with", "eq_ignore_ascii_case", "strip_prefix"].contains(&f.as_str())
        }
        _ => false,
    };
    !compared && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && s.contains(' ')
}

/// The opening words of a HINT literal as docs/troubleshooting.md's table quotes them: its
/// first six words, up to a line continuation or code span, with `…` for each placeholder.
fn opening(s: &str) -> String {
    let end = s.find(['\\', '`']).unwrap_or(s.len());
    let mut text = String::new();
    let mut rest = &s[..end];
    while let Some(open) = rest.find('{') {
        text.push_str(&rest[..open]);
        text.push('…');
        rest = rest[open..].find('}').map_or("", |close| &rest[open + close + 1..]);
    }
    text.push_str(rest);
    text.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
}

/// The HINT texts in one file's source, by their opening words: the literals in functions named
/// `hint`, `*_hint`, `fix_for`, `*_fix`, in `const HINT_*` / `FIX_*`, and after `hint: Some(`.
fn hints_in(src: &str) -> Vec<String> {
    // Unit tests make up hints of their own.
    let src = src.split("#[cfg(test)]\nmod tests {").next().unwrap_or_default();
    let toks = tokens(src);
    let mut found = Vec::new();
    let mut push = |at: usize| {
        if let (true, Tok::Str(s)) = (is_hint_text(&toks, at), &toks[at]) {
            found.push(opening(s));
        }
    };
    let mut i = 0;
    while i < toks.len() {
        match (&toks[i], toks.get(i + 1)) {
            (Tok::Ident(kw), Some(Tok::Ident(name))) if kw == "fn" && makes_hints(name) => {
                let Some(open) = (i..toks.len()).find(|&j| toks[j] == Tok::Punct('{')) else { break };
                let mut depth = 0;
                let mut j = open;
                while j < toks.len() {
                    match toks[j] {
                        Tok::Punct('{') => depth += 1,
                        Tok::Punct('}') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => push(j),
                    }
                    j += 1;
                }
                i = j;
            }
            (Tok::Ident(kw), Some(Tok::Ident(name))) if kw == "const" && (name.starts_with("HINT_") || name.starts_with("FIX_")) => {
                if let Some(j) = (i..toks.len()).find(|&j| matches!(toks[j], Tok::Str(_))) {
                    push(j);
                    i = j;
                }
            }
            (Tok::Ident(kw), Some(Tok::Punct(':'))) if kw == "hint" && toks.get(i + 2) == Some(&Tok::Ident("Some".into())) => {
                // hint: Some("…") or hint: Some(format!("…")).
                if let Some(j) = (i + 3..(i + 8).min(toks.len())).find(|&j| matches!(toks[j], Tok::Str(_))) {
                    push(j);
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Every HINT the code can emit, as (file, opening words). The simulator's texts are AWS's and
/// PostgreSQL's, not ours; `fuzzing.rs` makes none.
fn hints_in_code() -> Vec<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut found = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(root).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("sim") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("fuzzing.rs") || path.ends_with("tests.rs") {
                continue;
            }
            let file = path.strip_prefix(root).unwrap().display().to_string();
            for hint in hints_in(&std::fs::read_to_string(&path).unwrap()) {
                found.push((file.clone(), hint));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn hint_finder_reads_rust_as_written() {
    let src = r##"
        // a comment with "quotes" and { braces
        fn hint(&self) -> String {
            let _c = '"'; let _d = '{'; let _l: &'static str = "x";
            if code == "ExpiredToken" || m.contains("PAM authentication failed") { return "Run the thing now.".into() }
            format!("Allow {action} on it, please.\
                     And more.") + r#"Raw "quoted" text here"#
        }
        fn other() -> &'static str { "Not a hint at all" }
        const FIX_X: &str = "Fix the flag and retry.";
        fn region_fix(n: &str) -> String { format!("Use --region {n} now") }
        let e = ClientError { hint: Some("Reconnect when it is back.".into()) };
    "##;
    let texts = hints_in(src);
    assert_eq!(
        texts,
        ["Run the thing now.", "Allow … on it, please.", "Raw \"quoted\" text here", "Fix the flag and retry.", "Use --region … now", "Reconnect when it is back."]
    );
    assert_eq!(opening("Check that {} is reachable from this machine"), "Check that … is reachable from");
    assert_eq!(opening("run `aws sso login` now"), "run");
}

/// Every HINT the code can emit has a row in docs/troubleshooting.md's "Errors by HINT", quoted
/// by its opening words. A new HINT (in a `fn hint`, `*_hint`, `fix_for`, `*_fix`, a `const
/// HINT_*`/`FIX_*`, or a `hint: Some(…)`) fails here until that page explains it.
#[test]
fn every_hint_in_the_code_has_a_troubleshooting_row() {
    let page = page("docs/troubleshooting.md");
    let section = page
        .split("\n## Errors by HINT")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("an Errors by HINT section in docs/troubleshooting.md");
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with('|')).collect();
    let hints = hints_in_code();
    assert!(hints.len() > 50, "the finder found only {}: {hints:#?}", hints.len());
    for must in ["The server's certificate is not valid", "RDS refused the IAM token. Allow", "Your IAM Identity Center (SSO) session"] {
        assert!(hints.iter().any(|(_, h)| h == must), "{must:?} not found in the code: {hints:#?}");
    }
    let missing: Vec<String> = hints
        .iter()
        .filter(|(_, h)| !rows.iter().any(|r| r.contains(h.as_str())))
        .map(|(f, h)| format!("{f}: {h}"))
        .collect();
    assert!(missing.is_empty(), "HINTs with no row in docs/troubleshooting.md:\n{}", missing.join("\n"));
}

/// The first column's names of the table rows in `section`: `` `key` `` cells, split at commas.
fn first_column_names(section: &str) -> Vec<String> {
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split(','))
        .filter_map(|name| name.trim().strip_prefix('`')?.strip_suffix('`').map(str::to_owned))
        .collect()
}

/// The text between the heading line `heading` and the next heading of its level or above.
fn section<'a>(page: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let start = page.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("no heading {heading:?}")) + heading.len() + 2;
    let rest = &page[start..];
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| {
            let hashes = rest[i..].chars().take_while(|&c| c == '#').count();
            (1..=level).contains(&hashes) && rest[i + hashes..].starts_with(' ')
        })
        .unwrap_or(rest.len());
    &rest[..end]
}

/// docs/config-file.md's "Every key" table has exactly the keys a config file takes: every long
/// flag of the proxy with `_` for `-` (`--target` is `endpoint`), but those saying where the file
/// is and what to do with it, plus a target's `name` (src/config_file.rs builds them the same way).
#[test]
fn every_config_key_has_a_row() {
    use clap::CommandFactory;
    let not_keys = ["config", "list_targets", "run_connection_test", "help", "version"];
    let mut keys: Vec<String> = rds_auth_proxy::cli::Cli::command()
        .get_arguments()
        .filter(|arg| !arg.is_positional() && !not_keys.contains(&arg.get_id().as_str()))
        .filter_map(|arg| {
            let long = arg.get_long()?;
            Some(if arg.get_id() == "target" { "endpoint".to_owned() } else { long.replace('-', "_") })
        })
        .chain(["name".to_owned()])
        .collect();
    keys.sort();
    assert!(keys.len() > 40 && keys.contains(&"ssm_target".to_owned()), "{keys:?}");
    let page = page("docs/config-file.md");
    let mut rows = first_column_names(section(&page, "## Every key"));
    rows.sort();
    let missing: Vec<&String> = keys.iter().filter(|k| !rows.contains(k)).collect();
    let stale: Vec<&String> = rows.iter().filter(|r| !keys.contains(r)).collect();
    assert!(missing.is_empty() && stale.is_empty(), "docs/config-file.md, Every key: no row for {missing:?}; rows for no key {stale:?}");
}

/// GitHub's anchor for a heading: lower case, only letters, digits, `-`, `_` and spaces kept,
/// spaces turned into `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a page outside code blocks (indented or fenced), with inline code removed.
fn prose_lines(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || line.starts_with("    ") || line.starts_with('\t') {
            continue;
        }
        out.push(line.split('`').step_by(2).collect::<Vec<_>>().join(""));
    }
    out
}

/// The anchors of a page's headings; a repeated heading gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if fenced || hashes == 0 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = anchor(&line[hashes..]);
        let mut name = base.clone();
        let mut n = 0;
        while seen.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        seen.insert(name);
    }
    seen
}

/// Every `[text](target)` of README.md and docs/*.md that is not a URL names a file that exists,
/// and a `#anchor` in it (or alone, for the same page) names a heading of that page.
#[test]
fn every_relative_link_leads_to_a_file_and_heading() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pages = pages();
    assert!(pages.len() >= 5, "README.md and the docs/ pages: {:?}", pages.iter().map(|p| &p.0).collect::<Vec<_>>());
    let mut bad = Vec::new();
    let mut links = 0;
    for (path, text) in &pages {
        let dir = path.parent().unwrap_or(Path::new(""));
        for line in prose_lines(text) {
            for (at, _) in line.match_indices("](") {
                let Some(end) = line[at + 2..].find(')') else { continue };
                let target = &line[at + 2..at + 2 + end];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                links += 1;
                let (file, fragment) = target.split_once('#').map_or((target, None), |(f, a)| (f, Some(a)));
                let linked = if file.is_empty() { root.join(path) } else { root.join(dir).join(file) };
                if !linked.exists() {
                    bad.push(format!("{}: {target}: no such file", path.display()));
                    continue;
                }
                if let Some(fragment) = fragment {
                    let heading_ok = linked.extension().is_some_and(|e| e == "md")
                        && anchors(&std::fs::read_to_string(&linked).unwrap()).contains(fragment);
                    if !heading_ok {
                        bad.push(format!("{}: {target}: no such heading", path.display()));
                    }
                }
            }
        }
    }
    assert!(links > 50, "only {links} links found");
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn anchors_are_githubs() {
    let page = "# The SSM tunnel (`--via ssm`)\n## doctor: check the whole chain\n    # not a heading\n## Notes\n## Notes\n";
    let found = anchors(page);
    for expected in ["the-ssm-tunnel---via-ssm", "doctor-check-the-whole-chain", "notes", "notes-1"] {
        assert!(found.contains(expected), "{expected} in {found:?}");
    }
    assert_eq!(found.len(), 4);
    assert_eq!(prose_lines("a `[x](y)` b [c](d)\n    [e](f)\n"), ["a  b [c](d)"]);
}
