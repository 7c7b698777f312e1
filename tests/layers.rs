//! Dependencies point one way: every `crate::<module>` reference in `src/` (use lines and inline
//! paths; `#[cfg(test)]` items and `tests.rs` files are not the product and are skipped) goes to a
//! module of the same layer or a lower one, per the layer map in `src/lib.rs`'s doc comment, and
//! the graph of top-level modules has no cycle. The map is read from lib.rs itself, so the map a
//! newcomer reads and the rule checked here are one text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules allowed to use each other, pinned so none may join them and the check says when
/// they come apart. None: the last knot (the per-target context owning the spares and the
/// server knowledge while `spare` and `upstream` took that context) was untied by
/// `spare::SpareHost` and `upstream::UpstreamContext`.
const PINNED_CYCLE: &[&str] = &[];

/// Not part of the product library: the simulator (its own crate), never scanned.
const NOT_SCANNED: &[&str] = &["sim"];

#[test]
fn lower_layers_never_use_upper_ones_and_no_modules_use_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("read src/lib.rs");
    let mut sources = Vec::new();
    collect(&root.join("src"), &root.join("src"), &mut sources);
    let report = check(&lib, &sources);
    let mut problems = report.problems.clone();
    for (members, path) in &report.cycles {
        if members != PINNED_CYCLE {
            problems.push(format!("import cycle: {} (modules that use each other: {})", path.join(" → "), members.join(", ")));
        }
    }
    if !PINNED_CYCLE.is_empty() && !report.cycles.iter().any(|(members, _)| members == PINNED_CYCLE) {
        problems.push(format!(
            "the pinned cycle {PINNED_CYCLE:?} is gone: empty PINNED_CYCLE in tests/layers.rs and drop its note in src/lib.rs"
        ));
    }
    assert!(report.edges > 50, "only {} module references found: the scan is broken", report.edges);
    assert!(problems.is_empty(), "the layer map in src/lib.rs is not what the code does:\n  {}", problems.join("\n  "));
}

/// The check must be able to fail: a cycle and an upward use in a made-up source set are found,
/// and what is not the product (test modules, comments, strings) is not counted.
#[test]
fn the_check_finds_a_cycle_and_an_upward_use() {
    let lib = "//! ### Layer 1 — top\n//! * [`app`], [`b`]: things\n//! ### Layer 0 — bottom\n//! * [`a`]: a\n//! * `c` (hidden): c\n\
               pub mod a;\npub mod app;\npub mod b;\n#[doc(hidden)]\npub mod c;\n";
    let sources = vec![
        file("a.rs", "use crate::{b::Thing, c};\n"),
        file("b/mod.rs", "pub fn f() { crate::app::run() }\n"),
        file("app.rs", "use crate::b;\n// crate::a in a comment\n"),
        file("c.rs", "#[cfg(test)]\nmod tests {\n    use crate::app;\n}\nconst S: &str = \"crate::b\";\n"),
        file("b/tests.rs", "use crate::a;\n"),
    ];
    let report = check(lib, &sources);
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(report.cycles, vec![(names(&["app", "b"]), names(&["app", "b", "app"]))]);
    assert_eq!(report.problems, vec!["a (layer 0) uses b (layer 1) in a.rs".to_owned()]);
    assert_eq!(report.edges, 4, "a→b, a→c, b→app, app→b");

    let unmapped = check("//! ### Layer 0 — x\n//! * [`a`]: a\npub mod a;\npub mod b;\n", &[file("a.rs", "use crate::b;\n")]);
    assert_eq!(
        unmapped.problems,
        vec!["module b is declared in lib.rs but missing from its layer map".to_owned()]
    );
}

/// The simulator crate is the binary's: library code that uses it outside `#[cfg(test)]` is found.
#[test]
fn the_check_finds_the_simulator_in_library_code() {
    let lib = "//! ### Layer 0 — x\n//! * [`a`], [`b`]: a\npub mod a;\npub mod b;\n";
    let sources = vec![
        file("a.rs", "#[cfg(test)]\nmod tests {\n    use rds_auth_proxy_sim::Simulator;\n}\n"),
        file("b.rs", "pub fn f() { rds_auth_proxy_sim::runner::run() }\n"),
    ];
    let report = check(lib, &sources);
    assert_eq!(report.problems, vec!["b.rs uses the simulator crate outside #[cfg(test)]: only the binary may".to_owned()]);
}

fn file(path: &str, text: &str) -> (PathBuf, String) {
    (PathBuf::from(path), text.to_owned())
}

#[derive(Debug, Default)]
struct Report {
    /// Each set of modules that reach each other (sorted), with one cycle through it as a path
    /// back to its start.
    cycles: Vec<(Vec<String>, Vec<String>)>,
    /// Upward uses and modules the map does not place.
    problems: Vec<String>,
    /// Module references found (distinct `from → to` pairs).
    edges: usize,
}

/// Every `.rs` file under `dir` but the simulator's, with its path relative to `src`.
fn collect(src: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("read src/").path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(src).expect("under src").to_path_buf();
        if path.is_dir() {
            if !NOT_SCANNED.iter().any(|m| rel == Path::new(m)) {
                collect(src, &path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((rel, std::fs::read_to_string(&path).expect("read a source file")));
        }
    }
}

/// The layer of each module, from lib.rs's doc comment: a line `### Layer N …` opens layer N,
/// and each bullet under it names the modules it describes in backticks before its first `:`
/// (`` [`name`] ``, or `` `name` `` for a hidden one).
fn layer_map(lib: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    let mut current = None;
    for line in lib.lines().filter_map(|l| l.strip_prefix("//!")).map(str::trim) {
        if let Some(rest) = line.strip_prefix("### Layer ") {
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            current = n.parse::<usize>().ok();
        } else if let (Some(layer), Some(item)) = (current, line.strip_prefix("* ")) {
            let head = item.split(':').next().unwrap_or_default();
            for name in head.split('`').skip(1).step_by(2) {
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    layers.insert(name.to_owned(), layer);
                }
            }
        }
    }
    layers
}

/// The top-level modules lib.rs declares (`mod x;` / `pub mod x;`).
fn declared_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("pub ").unwrap_or(l.trim());
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .filter(|m| !NOT_SCANNED.contains(&m.as_str()))
        .collect()
}

fn check(lib: &str, sources: &[(PathBuf, String)]) -> Report {
    let layers = layer_map(lib);
    let declared = declared_modules(lib);
    let mut report = Report::default();
    for m in &declared {
        if !layers.contains_key(m) {
            report.problems.push(format!("module {m} is declared in lib.rs but missing from its layer map"));
        }
    }
    // from → to → the first file that makes the reference
    let mut graph: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for (path, text) in sources {
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue; // a module's tests, kept beside it
        }
        let Some(first) = path.components().next() else { continue };
        let from = first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if !declared.contains(&from) {
            continue; // lib.rs, main.rs
        }
        let code = product_code(text);
        if code.contains("rds_auth_proxy_sim") {
            report.problems.push(format!("{} uses the simulator crate outside #[cfg(test)]: only the binary may", path.display()));
        }
        for to in crate_references(&code) {
            if to != from && !NOT_SCANNED.contains(&to.as_str()) && to != "self" {
                graph.entry(from.clone()).or_default().entry(to).or_insert_with(|| path.clone());
            }
        }
    }
    for (from, tos) in &graph {
        for (to, path) in tos {
            report.edges += 1;
            if let (Some(&lf), Some(&lt)) = (layers.get(from), layers.get(to)) {
                if lt > lf {
                    report.problems.push(format!("{from} (layer {lf}) uses {to} (layer {lt}) in {}", path.display()));
                }
            } else if !layers.contains_key(to) && !declared.contains(to) {
                report.problems.push(format!("{from} uses crate::{to}, which lib.rs does not declare, in {}", path.display()));
            }
        }
    }
    report.cycles = cycles(&graph);
    report
}

/// The text with comments, string and character literals and `#[cfg(test)]` items removed.
fn product_code(text: &str) -> String {
    let stripped = strip_comments_and_literals(text);
    let mut out = String::with_capacity(stripped.len());
    let mut rest = stripped.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        rest = &rest[at + "#[cfg(test)]".len()..];
        // The item ends at its first `;` outside braces, or with its braces closed.
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn strip_comments_and_literals(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && (i == 0 || !is_ident(b[i - 1])) {
            // r"…", r#"…"#
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.extend_from_slice(b"\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.extend_from_slice(b"\"\"");
        } else if b[i] == b'\'' && (b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\')) {
            // 'x' or '\…' (a lifetime has no closing quote right after one character)
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.extend_from_slice(b"' '");
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // Only whole ASCII-delimited runs were removed, so the rest is still UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The top-level modules named by `crate::x…` and `crate::{x…, y…}` paths (not `$crate::`).
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        if start > 0 && (is_ident(b[start - 1]) || b[start - 1] == b'$') {
            continue;
        }
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of each comma-separated entry at the group's own depth.
            let mut depth = 0usize;
            let mut entry_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entry_start = true,
                    c if entry_start && (c.is_ascii_alphabetic() || c == '_') => {
                        entry_start = false;
                        found.insert(ident_at(&group[i..]));
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn ident_at(s: &str) -> String {
    s.chars().take_while(|&c| c.is_ascii_alphanumeric() || c == '_').collect()
}

/// Each set of modules that reach each other, with one cycle through it (a path back to its
/// first module).
fn cycles(graph: &BTreeMap<String, BTreeMap<String, PathBuf>>) -> Vec<(Vec<String>, Vec<String>)> {
    let nodes: BTreeSet<&String> = graph.keys().chain(graph.values().flat_map(|t| t.keys())).collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for to in graph.get(&n).into_iter().flat_map(|t| t.keys()) {
                if seen.insert(to.clone()) {
                    stack.push(to.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = nodes.iter().map(|&n| (n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for &n in &nodes {
        if done.contains(n) || !reachable[n].contains(n) {
            continue;
        }
        // Its strongly connected set: the modules it reaches that reach it back.
        let set: BTreeSet<String> = reachable[n].iter().filter(|m| reachable[m].contains(n)).cloned().collect();
        done.extend(set.iter().cloned());
        let path = path_back(graph, n, &set);
        out.push((set.into_iter().collect(), path));
    }
    out
}

/// The shortest path from `start` back to itself inside `set` (breadth first), so the message
/// names the references to remove.
fn path_back(graph: &BTreeMap<String, BTreeMap<String, PathBuf>>, start: &String, set: &BTreeSet<String>) -> Vec<String> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    while let Some(n) = queue.pop_front() {
        for to in graph.get(&n).into_iter().flat_map(|t| t.keys()).filter(|t| set.contains(*t)) {
            if to == start {
                let mut path = vec![n.clone()];
                while let Some(p) = prev.get(path.last().expect("non-empty")) {
                    path.push(p.clone());
                }
                path.reverse(); // start … n
                path.push(start.clone());
                return path;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(to.clone()) {
                e.insert(n.clone());
                queue.push_back(to.clone());
            }
        }
    }
    vec![start.clone()]
}
