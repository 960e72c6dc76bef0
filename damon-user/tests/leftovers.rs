//! What udamon leaves behind (root; under CI=true these must run): `record` killed with SIGKILL
//! at random moments leaves a complete record or none, and no run, killed or ended, leaves a
//! BPF program or map of udamon's in the kernel (a link holds its program, so no program means
//! no link). A file of its own, its tests one at a time, so no other udamon runs beside them.

use std::{
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const ROUNDS: u32 = 50;
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn udamon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_udamon"))
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
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    damon_user::test_support::assert_nothing_of_ours_loaded();
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
    damon_user::test_support::assert_nothing_of_ours_loaded();
}

/// 100 runs that end as planned (`--duration`), each exiting 0, leave nothing loaded.
#[test]
fn a_hundred_runs_leave_nothing_loaded() {
    if !damon_user::test_support::privileged("a_hundred_runs_leave_nothing_loaded") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    damon_user::test_support::assert_nothing_of_ours_loaded();
    let mut target = Command::new("sleep").arg("600").spawn().unwrap();
    for run in 0..100 {
        let out = udamon()
            .args(["monitor", "--quiet", "--duration", "50ms"])
            .arg(target.id().to_string())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run}: {err}");
    }
    let _ = target.kill();
    let _ = target.wait();
    damon_user::test_support::assert_nothing_of_ours_loaded();
}
