//! Replays every committed fuzz input (`fuzz/corpus/<target>/` and the crash repros in
//! `fuzz/regressions/<target>/`) through the function its fuzz target calls, on stable Rust, so
//! what the fuzzer found stays fixed. The fuzzers themselves: docs/development.md, Fuzzing.

use std::path::Path;

use rds_auth_proxy::fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("readable corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("readable corpus file");
            (p.display().to_string(), data)
        })
        .collect()
}

#[test]
fn every_corpus_file_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        // A target without a seed corpus would silently test nothing.
        assert!(
            corpus.len() >= 3,
            "fuzz/corpus/{name} has {} files",
            corpus.len()
        );
        let regressions = inputs(&root.join("regressions").join(name));
        for (path, data) in corpus.iter().chain(&regressions) {
            let outcome = std::panic::catch_unwind(|| run(data));
            assert!(outcome.is_ok(), "{path} panics in the {name} target");
            replayed += 1;
        }
    }
    // Every fuzz target has a corpus directory, and nothing else does.
    let mut dirs: Vec<String> = std::fs::read_dir(root.join("corpus"))
        .expect("fuzz/corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    names.sort();
    assert_eq!(dirs, names);
    let targets: Vec<String> = std::fs::read_dir(root.join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            name.trim_end_matches(".rs").to_owned()
        })
        .collect();
    for name in &names {
        assert!(targets.contains(name), "no fuzz/fuzz_targets/{name}.rs");
    }
    eprintln!("replayed {replayed} inputs");
}
