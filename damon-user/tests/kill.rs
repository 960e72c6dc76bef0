//! `record` killed with SIGKILL at random moments (root; under CI=true it must run): what is on
//! disk is always a complete record or nothing, and nothing of udamon's stays loaded in the
//! kernel. A file of its own, so no other test's udamon runs beside it.

use std::{
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const ROUNDS: u32 = 50;
const OUR_PROGRAMS: [&str; 3] = ["walk_on_lock", "page_fault_user", "peek"];

fn udamon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_udamon"))
}

fn ours_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|name| OUR_PROGRAMS.contains(&name.as_str()))
        .collect()
}

/// xorshift64: moments to kill at, from a seed printed for a rerun.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn a_record_killed_at_any_moment_leaves_a_complete_file_or_none_and_nothing_loaded() {
    let name = "a_record_killed_at_any_moment_leaves_a_complete_file_or_none_and_nothing_loaded";
    if !damon_user::test_support::privileged(name) {
        return;
    }
    let before = ours_loaded();
    assert!(before.is_empty(), "udamon programs loaded before the test: {before:?}");
    let seed =
        std::env::var("UDAMON_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
    eprintln!("kill moments from UDAMON_KILL_SEED={seed}");
    let mut state = seed;
    let mut target = Command::new("sleep").arg("600").spawn().unwrap();
    let dir = std::env::temp_dir().join(format!("udamon-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("damon.data");
    let (mut absent, mut read) = (0, 0);
    for round in 0..ROUNDS {
        // Alternately a fresh path and one holding the previous round's record.
        if round % 2 == 0 {
            let _ = std::fs::remove_file(&file);
        }
        let existed = file.exists();
        let mut record = udamon()
            .args(["record", "-o", file.to_str().unwrap(), "--flush-every", "150ms"])
            .arg(target.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(next(&mut state) % 1500));
        record.kill().unwrap();
        record.wait().unwrap();
        if !file.exists() {
            assert!(!existed, "round {round}: the previous record was lost");
            absent += 1;
            continue;
        }
        let out = udamon()
            .args(["report", "access", "--json", "-i", file.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "round {round}: report failed: {err}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("round {round}: report printed no JSON: {e}"));
        assert_eq!(report[0]["target_id"], target.id(), "round {round}");
        read += 1;
    }
    let _ = target.kill();
    let _ = target.wait();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{read} records read, {absent} kills before the first flush");
    assert!(read >= ROUNDS / 4, "only {read} of {ROUNDS} kills came after a flush");
    // The kernel frees programs once their last descriptor closes, which the exit does.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ours_loaded().is_empty() {
        assert!(std::time::Instant::now() < deadline, "still loaded: {:?}", ours_loaded());
        std::thread::sleep(Duration::from_millis(50));
    }
}
