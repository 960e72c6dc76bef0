//! Shared by the integration tests (the `tests` crate and damon-user's own): whether a test that
//! needs the real kernel can run here, and what such tests share.

use std::time::{Duration, Instant};

/// Outside CI a test that cannot run prints why and passes vacuously; with `CI=true` that would
/// hide a broken pipeline, so it fails instead.
pub fn privileged(test: &str) -> bool {
    match crate::check::require_monitoring() {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("{test}: privileged test cannot run under CI=true: {why:#}"),
        Err(why) => {
            eprintln!("skipping {test}: {why:#}");
            false
        }
    }
}

/// Builds a small C program for a test (in a directory of this test process) and returns its
/// path.
pub fn build_c(name: &str, source: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("udamon-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, binary) = (dir.join(format!("{name}.c")), dir.join(name));
    std::fs::write(&file, source).unwrap();
    let built = std::process::Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&binary)
        .arg(&file)
        .status();
    assert!(built.unwrap().success(), "cc {name}.c failed");
    binary
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Kills `parent` (SIGKILL: no drop, no handler runs) once it has a child and has run `settle`
/// more, then says whether that child outlived it for 5 s (a zombie waiting for init has not).
pub fn child_outlives_sigkill(mut parent: std::process::Child, settle: Duration) -> bool {
    let children = format!("/proc/{0}/task/{0}/children", parent.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    let child = loop {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "pid {} started no child", parent.id());
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(settle);
    parent.kill().unwrap();
    parent.wait().unwrap();
    let running = || {
        std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
            stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let outlived = running();
    if outlived {
        // Not left behind holding the test's pipes.
        // SAFETY: a plain kill of the pid the child had.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    outlived
}

/// udamon's BPF programs and maps the kernel holds now, by name (a link holds its program, so
/// no program means no link).
pub fn ours_loaded() -> Vec<String> {
    use damon_common::names::{MAPS, PROGRAMS};
    let programs = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|name| PROGRAMS.contains(&name.as_str()));
    let maps = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter_map(|m| m.name_as_str().map(str::to_owned))
        .filter(|name| MAPS.contains(&name.as_str()));
    programs.chain(maps).collect()
}

/// Waits up to 5 s for the kernel to free what exited udamons held, and panics naming what
/// stays: descriptors close at exit, but a link puts its program after an RCU grace period and
/// a ring buffer's memory is freed from a work item.
pub fn assert_nothing_of_ours_loaded() {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ours_loaded().is_empty() {
        assert!(Instant::now() < deadline, "still loaded after exit: {:?}", ours_loaded());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// For tests of a target that execs `udamon workload` early in a 5 s `udamon monitor --json`:
/// its output's snapshots of the last second, long after the exec, see the workload's hot
/// memory (64 MiB and more): the last one and all others but one. One aggregation may find
/// nothing where the workload did not run for its whole 100 ms: an emulated guest's one CPU,
/// shared by the workload, udamon and the test, did that once in a 7.2 guest (4 KiB among nine
/// windows of 97 MiB).
pub fn assert_workload_seen_in_last_second(monitor_json: &str) {
    let late: Vec<u64> = monitor_json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["end_ns"].as_u64().is_some_and(|t| t >= 4_000_000_000))
        .filter_map(|l| l["working_set_bytes"].as_u64())
        .collect();
    let seen = |ws: &&u64| **ws >= 64 << 20;
    assert!(late.last().is_some_and(|ws| seen(&ws)), "working sets after the exec: {late:?}");
    let missed = late.iter().filter(|ws| !seen(ws)).count();
    assert!(missed <= 1, "working sets after the exec: {late:?}");
}

/// A fresh anonymous mapping of `len` bytes (`flags`: MAP_PRIVATE or MAP_SHARED).
pub fn map(len: usize, flags: i32) -> usize {
    // SAFETY: a fresh anonymous mapping.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap failed");
    addr as usize
}
