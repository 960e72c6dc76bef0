//! The fuzz targets' saved inputs (`fuzz/corpus`, grown by `cargo xtask fuzz`), replayed on
//! stable: every reader of untrusted input still takes each of them without a panic, promptly.

use std::time::{Duration, Instant};

use damon_user::fuzz;

/// A target's name (its directory in the corpus) and entry point.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 6] = [
    ("record", fuzz::record),
    ("proc_maps", fuzz::proc_maps),
    ("btf", fuzz::btf),
    ("scenario", fuzz::scenario),
    ("config", fuzz::config),
    ("metrics_request", fuzz::metrics_request),
];

#[test]
fn every_saved_fuzz_input_is_read_without_a_panic() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = corpus.join(name);
        let inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(!inputs.is_empty(), "no saved inputs for {name}");
        for input in inputs {
            let started = Instant::now();
            target(&std::fs::read(&input).unwrap());
            let took = started.elapsed();
            assert!(took < Duration::from_secs(5), "{} took {took:?}", input.display());
        }
    }
}

/// The replay covers every fuzz target there is.
#[test]
fn every_fuzz_target_is_replayed() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml");
    let text = std::fs::read_to_string(manifest).unwrap();
    let bins: Vec<&str> = text
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| bin.lines().find_map(|l| l.strip_prefix("name = ")))
        .map(|name| name.trim_matches('"'))
        .collect();
    let replayed: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(bins, replayed);
}
