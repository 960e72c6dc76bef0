//! `monitor` and `record` on live processes through the real eBPF data plane (root; under
//! CI=true they must run), and the real damo reading what was recorded.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

fn udamon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_udamon"))
}

fn privileged(test: &str) -> bool {
    damon_user::test_support::privileged(test)
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("udamon-live-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A process to monitor that lives until dropped.
struct Sleeper(Child);

impl Sleeper {
    fn new() -> Self {
        Self(Command::new("sleep").arg("600").spawn().unwrap())
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn succeed(out: Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn report(file: &Path, kind: &str) -> Value {
    let out = udamon().args(["report", kind, "--json", "-i", file.to_str().unwrap()]).output();
    serde_json::from_str(&succeed(out.unwrap())).unwrap()
}

/// Records `target` for `duration` into a fresh directory; the file's path.
fn record(test: &str, target: &Sleeper, duration: &str) -> PathBuf {
    let file = scratch(test).join("damon.data");
    let out = udamon()
        .args(["record", "-o", file.to_str().unwrap(), "--duration", duration, &target.pid()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("snapshots written to"), "{err}");
    file
}

#[test]
fn record_then_report_round_trip() {
    if !privileged("record_then_report_round_trip") {
        return;
    }
    let target = Sleeper::new();
    let file = record("round-trip", &target, "2500ms");
    let last = &report(&file, "access")[0];
    assert_eq!(last["target_id"].as_u64().unwrap().to_string(), target.pid());
    let regions = last["regions"].as_array().unwrap();
    assert!(regions.len() >= 3, "a process's address space in {} regions", regions.len());
    let snapshots = last["snapshot"].as_u64().unwrap() + 1;
    // 25 at most; fewer when a loaded machine delays sample ticks (aggregations count samples).
    assert!((8..=26).contains(&snapshots), "{snapshots} snapshots of 100 ms in 2.5 s");
}

/// `record -o` writes a device through (never replacing it: /dev/null stays a device, /dev/full
/// is a runtime error) and follows a symlink, which stays one.
#[test]
fn record_writes_through_devices_and_follows_links() {
    use std::os::unix::fs::FileTypeExt as _;
    if !privileged("record_writes_through_devices_and_follows_links") {
        return;
    }
    let target = Sleeper::new();
    let record = |output: &str| {
        udamon().args(["record", "--duration", "1s", "-o", output, &target.pid()]).output().unwrap()
    };
    let out = record("/dev/null");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("snapshots written to /dev/null"), "{err}");
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    let out = record("/dev/full");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("udamon: cannot write /dev/full: No space left on device"), "{err}");
    let dir = scratch("link");
    let (link, file) = (dir.join("link.data"), dir.join("damon.data"));
    std::os::unix::fs::symlink(&file, &link).unwrap();
    succeed(record(link.to_str().unwrap()));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(report(&file, "access")[0]["target_id"].as_u64().unwrap().to_string(), target.pid());
}

/// The real damo reads a live record (not in vm-test guests, which have no damo: they skip it
/// by name).
#[test]
fn damo_reads_a_live_record() {
    if !privileged("damo_reads_a_live_record") {
        return;
    }
    let Some(damo) = std::env::var_os("UDAMON_DAMO").map(PathBuf::from) else {
        assert!(!damon_user::test_support::in_ci(), "UDAMON_DAMO must name damo under CI=true");
        eprintln!("skipping damo_reads_a_live_record: UDAMON_DAMO is not set");
        return;
    };
    let target = Sleeper::new();
    let file = record("damo", &target, "1500ms");
    let regions = report(&file, "access")[0]["regions"].clone();
    let damo_says = |args: &[&str]| {
        let out = Command::new(&damo).args(args).arg("--input").arg(&file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success() && !text.contains("Traceback"), "damo {args:?}: {text}");
        text
    };
    let access = damo_says(&["report", "access", "--raw_number"]);
    let first = regions[0]["start"].as_u64().unwrap();
    assert!(
        access.contains(&format!("addr {first} ")),
        "damo shows our first region {first}: {access}"
    );
    assert!(access.contains("intervals: sample 5000 aggr 100000"), "{access}");
    damo_says(&["report", "heatmap"]);
    let wss = damo_says(&["report", "wss", "--exclude_samples", "0"]);
    assert!(wss.contains("# avr:"), "{wss}");
}

#[test]
fn record_keeps_a_readable_file_while_running_and_flushes_on_sigterm() {
    if !privileged("record_keeps_a_readable_file_while_running_and_flushes_on_sigterm") {
        return;
    }
    let target = Sleeper::new();
    let dir = scratch("flush");
    let file = dir.join("damon.data");
    let record = udamon()
        .args(["record", "-o", file.to_str().unwrap(), "--flush-every", "200ms", &target.pid()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Whenever we look, the file is whole: absent at first, then always a readable record. Watch
    // for 2 s after it first appears (start-up takes seconds in an emulated guest).
    let appeared = Instant::now() + Duration::from_secs(60);
    let mut deadline = appeared;
    let mut seen = 0;
    while Instant::now() < deadline {
        if file.exists() {
            if deadline == appeared {
                deadline = Instant::now() + Duration::from_secs(2);
            }
            let snapshots = report(&file, "access")[0]["snapshot"].as_u64().unwrap() + 1;
            assert!(snapshots >= seen, "the file went back in time");
            seen = snapshots;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen >= 3, "only {seen} snapshots flushed 2 s after the first flush");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(record.id() as i32, libc::SIGTERM) };
    let out = record.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = report(&file, "access")[0]["snapshot"].as_u64().unwrap() + 1;
    assert!(last >= seen, "{last} snapshots at the end, {seen} before");
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
}

#[test]
fn monitor_follows_the_command_it_started() {
    if !privileged("monitor_follows_the_command_it_started") {
        return;
    }
    let started = Instant::now();
    // The command starts once the data plane is loaded: a second is seen even in an emulated
    // guest, where loading takes seconds.
    let out = udamon().args(["monitor", "--every", "5", "--", "sleep", "1"]).output().unwrap();
    let text = succeed(out);
    assert!(started.elapsed() < Duration::from_secs(60), "monitor outlived its command");
    assert!(text.contains("working set") && text.contains("heatmap |"), "{text}");
    assert!(text.contains("udamon CPU"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("pid ") && l.ends_with(" exited")), "{text}");
    // Every 5th aggregation only: at most 0, 5 and 10 within 1 s.
    let shown = text.lines().filter(|l| l.starts_with("target ")).count();
    assert!((1..=3).contains(&shown), "{shown} snapshots shown: {text}");
}

/// After `-- CMD` exited, udamon exits as the shell would: the command's code, or 128 + the
/// signal that ended it.
#[test]
fn the_commands_exit_status_is_passed_on() {
    if !privileged("the_commands_exit_status_is_passed_on") {
        return;
    }
    for (script, code) in [("sleep 2; exit 3", 3), ("sleep 2; kill -SEGV $$", 139), ("exit 5", 5)] {
        let out = udamon().args(["monitor", "--every", "100", "--", "sh", "-c", script]).output();
        let out = out.unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Gone before the first aggregation: said, naming the command; 1 if it succeeded. Unless a
    // slow machine let the first aggregation see it alive: then that window is written, and
    // udamon succeeded.
    let out = udamon().args(["record", "-o", "/dev/null", "--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("1 snapshots written to /dev/null") {
        assert_eq!(out.status.code(), Some(0), "{err}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.ends_with("udamon: `true` exited (status 0) before the first aggregation: nothing recorded, no file written\n"),
            "{err}"
        );
    }
}

/// The command dies with udamon, even when udamon is killed outright (a parent-death signal).
#[test]
fn the_command_does_not_outlive_a_killed_udamon() {
    if !privileged("the_command_does_not_outlive_a_killed_udamon") {
        return;
    }
    let monitor = udamon().args(["monitor", "--quiet", "--", "sleep", "30"]).spawn().unwrap();
    let outlived =
        damon_user::test_support::child_outlives_sigkill(monitor, Duration::from_secs(1));
    assert!(!outlived, "sleep outlived udamon");
}

/// SIGUSR1 writes the record now and recording goes on; SIGHUP (a closed terminal) ends it
/// like SIGTERM, with the final write.
#[test]
fn record_flushes_on_sigusr1_and_ends_cleanly_on_sighup() {
    if !privileged("record_flushes_on_sigusr1_and_ends_cleanly_on_sighup") {
        return;
    }
    let target = Sleeper::new();
    let dir = scratch("signals");
    let file = dir.join("damon.data");
    let record = udamon()
        .args(["record", "-o", file.to_str().unwrap(), "--flush-every", "1h", &target.pid()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let signal = |signal| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(record.id() as i32, signal) };
    };
    // Once udamon catches SIGUSR1 (SigCgt bit 10)...
    let status = format!("/proc/{}/status", record.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&status).unwrap_or_default().lines().any(|l| {
        l.strip_prefix("SigCgt:")
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & 1 << (libc::SIGUSR1 - 1) != 0)
    }) {
        assert!(Instant::now() < deadline, "udamon never caught SIGUSR1");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...ask until the file appears (before the first aggregation there is nothing to write).
    while !file.exists() {
        assert!(Instant::now() < deadline, "SIGUSR1 wrote no file");
        signal(libc::SIGUSR1);
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = report(&file, "access")[0]["snapshot"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    signal(libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while report(&file, "access")[0]["snapshot"].as_u64().unwrap() == first {
        assert!(Instant::now() < deadline, "a second SIGUSR1 wrote nothing new");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(libc::SIGHUP);
    let out = record.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("snapshots written to"), "{err}");
    assert!(report(&file, "access")[0]["snapshot"].as_u64().unwrap() > first);
}

#[test]
fn monitor_json_lines_describe_each_target() {
    if !privileged("monitor_json_lines_describe_each_target") {
        return;
    }
    let (a, b) = (Sleeper::new(), Sleeper::new());
    let out = udamon().args(["monitor", "--json", "--duration", "1s", &a.pid(), &b.pid()]).output();
    let text = succeed(out.unwrap());
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for pid in [a.pid(), b.pid()] {
        let theirs: Vec<&Value> = lines
            .iter()
            .filter(|l| l["target_id"].as_u64().map(|id| id.to_string()) == Some(pid.clone()))
            .collect();
        assert!(theirs.len() >= 3, "pid {pid}: {} snapshots in 1 s", theirs.len());
        assert!(theirs.iter().all(|l| l["nr_regions"].as_u64() > Some(0)));
        // The first snapshot's CPU share would measure start-up: it is null.
        assert!(theirs[0]["udamon_cpu_percent"].is_null());
        assert!(theirs[1..].iter().all(|l| l["udamon_cpu_percent"].is_number()));
    }
}

/// An idle process costs one wake-up a window once its memory is known idle: its regions are
/// sampled in pairs of long samples, both checked at the window's end (`ticks` counts the
/// sampler's wake-ups).
#[test]
fn an_idle_process_is_visited_once_a_window() {
    if !privileged("an_idle_process_is_visited_once_a_window") {
        return;
    }
    let target = Sleeper::new();
    let out = udamon().args(["monitor", "--json", "--duration", "3s", &target.pid()]).output();
    let snapshots: Vec<Value> =
        succeed(out.unwrap()).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(snapshots.len() >= 20, "{} snapshots in 3 s", snapshots.len());
    let (from, to) = (&snapshots[10], snapshots.last().unwrap());
    let ticks = to["ticks"].as_u64().unwrap() - from["ticks"].as_u64().unwrap();
    let windows = to["snapshot"].as_u64().unwrap() - from["snapshot"].as_u64().unwrap();
    assert!(ticks <= windows + windows / 4, "{ticks} wake-ups in {windows} windows");
}

/// Sample ticks that start late: the JSON says how many were late, and window times are the
/// real ones, window after window; the text view says so. At 20 us ticks this machine is late.
#[test]
fn late_ticks_are_reported_with_real_window_times() {
    if !privileged("late_ticks_are_reported_with_real_window_times") {
        return;
    }
    let target = Sleeper::new();
    let args = ["--sample", "20us", "--aggr", "10ms", "--duration", "2s"];
    let out = udamon().args(["monitor", "--json"]).args(args).arg(target.pid()).output();
    let text = succeed(out.unwrap());
    let snapshots: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (mut late, mut late_windows, mut previous_end) = (0, 0, None);
    let ns = |s: &Value, key: &str| s[key].as_u64().unwrap();
    for s in &snapshots {
        let now = s["late_ticks"].as_u64().expect("late_ticks in every snapshot");
        // Each window starts where the last ended, when its aggregation was done (a late one
        // makes it longer, and the next shorter).
        assert!(previous_end.is_none_or(|end| end == ns(s, "start_ns")), "a gap before {s}");
        assert!(ns(s, "end_ns") > ns(s, "start_ns"));
        previous_end = Some(ns(s, "end_ns"));
        late_windows += (now > late) as u32;
        late = now;
    }
    let span = ns(snapshots.last().unwrap(), "end_ns") - ns(&snapshots[0], "start_ns");
    let mean = span / snapshots.len() as u64;
    // Never shorter on average; longer where the machine cannot keep up (emulated guests ran
    // 110 ms windows: the ceiling only catches a stalled sampler).
    assert!((9_500_000..250_000_000).contains(&mean), "windows of {mean} ns on average");
    assert!(late_windows > 0, "no late ticks at 20 us here: nothing checked");
    let out = udamon().args(["monitor", "--every", "5"]).args(args).arg(target.pid()).output();
    let text = succeed(out.unwrap());
    assert!(
        text.lines()
            .any(|l| l
                .ends_with("sample ticks late since the last view: windows ran longer than 10 ms")),
        "{text}"
    );
}

/// The names of the BPF maps process `pid` holds, one entry per map (by map id).
fn bpf_maps_of(pid: u32) -> Vec<String> {
    let mut ids = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten() {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")) {
            ids.insert(id.trim().parse::<u32>().unwrap());
        }
    }
    ids.into_iter()
        .filter_map(|id| aya::maps::MapInfo::from_id(id).ok())
        .map(|info| info.name_as_str().unwrap_or_default().to_owned())
        .collect()
}

/// One object per process: a monitoring udamon holds each of the object's maps once (the
/// walker's shared arrays and the fault stream's ring buffer included), not once per user.
#[test]
fn the_data_plane_is_loaded_once_per_process() {
    if !privileged("the_data_plane_is_loaded_once_per_process") {
        return;
    }
    let target = Sleeper::new();
    let mut monitor =
        udamon().args(["monitor", "--quiet", "--duration", "60s", &target.pid()]).spawn().unwrap();
    // Wait for the session to be sampling: the walker's maps are held from then on.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut maps = Vec::new();
    while Instant::now() < deadline {
        maps = bpf_maps_of(monitor.id());
        if maps.iter().any(|m| m == "WALK_OUT") {
            std::thread::sleep(Duration::from_millis(500));
            maps = bpf_maps_of(monitor.id());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    for name in damon_common::names::MAPS {
        let held = maps.iter().filter(|m| *m == name).count();
        assert!(held <= 1, "{name} is held {held} times: {maps:?}");
    }
    for name in ["WALK_SEGMENTS", "WALK_ADDRS", "WALK_OUT", "WALK_CONFIG", "FAULT_EVENTS"] {
        assert!(maps.iter().any(|m| m == name), "no {name}: {maps:?}");
    }
}

/// `--monitoring_intervals_goal`: an idle target observes far fewer accesses than the goal, so
/// DAMON's tuner lengthens the sample interval up to the goal's maximum, the aggregation keeping
/// its number of samples; the live view and the record carry each aggregation's intervals.
#[test]
fn intervals_auto_tuning_lengthens_an_idle_targets_intervals() {
    if !privileged("intervals_auto_tuning_lengthens_an_idle_targets_intervals") {
        return;
    }
    let target = Sleeper::new();
    let goal = ["--monitoring_intervals_goal", "4%", "1", "5ms", "20ms"];
    let out = udamon()
        .args(["monitor", "--json", "--duration", "2s", &target.pid()])
        .args(goal)
        .output()
        .unwrap();
    let intervals: Vec<(u64, u64)> = succeed(out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["sample_us"].as_u64().unwrap(), v["aggr_us"].as_u64().unwrap()))
        .collect();
    assert_eq!(intervals.first(), Some(&(5000, 100_000)), "{intervals:?}");
    assert!(intervals.iter().all(|&(s, a)| a == 20 * s && (5000..=20_000).contains(&s)));
    assert!(
        intervals.iter().any(|&(s, _)| s == 20_000),
        "never reached the maximum: {intervals:?}"
    );
    let file = scratch("intervals_goal").join("damon.json");
    let out = udamon()
        .args(["record", "--format", "json", "--duration", "2s", "-o"])
        .arg(&file)
        .args(goal)
        .arg(target.pid())
        .output()
        .unwrap();
    succeed(out);
    let record: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let recorded: Vec<&Value> = record[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["sample_interval_us"])
        .collect();
    assert!(recorded.iter().any(|s| s.as_u64() == Some(20_000)), "{recorded:?}");
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

/// Two monitors of one process clear each other's accessed bits and both read wrong: a second
/// is refused with one line while the first holds the process, and may go once the first ends,
/// however it ends (SIGKILL included: the kernel drops the lock).
#[test]
fn a_second_monitor_of_a_process_is_refused_while_the_first_runs() {
    if !privileged("a_second_monitor_of_a_process_is_refused_while_the_first_runs") {
        return;
    }
    let target = Sleeper::new();
    let claimed_by = |holder: u32| {
        let files = std::fs::read_dir(damon_user::sys::claim::DIR).into_iter().flatten().flatten();
        files.into_iter().any(|f| {
            f.file_name().to_string_lossy().starts_with(&format!("{}-", target.pid()))
                && std::fs::read_to_string(f.path()).is_ok_and(|s| s == holder.to_string())
        })
    };
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut first = udamon()
            .args(["monitor", "--quiet", &target.pid()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !claimed_by(first.id()) {
            assert!(Instant::now() < deadline, "the first monitor never claimed its target");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = udamon().args(["monitor", "--duration", "1s", &target.pid()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let says =
            format!("pid {} is monitored by another udamon (pid {})", target.pid(), first.id());
        assert!(err.contains(&says), "{err}");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(first.id() as i32, signal) };
        first.wait().unwrap();
        let out = udamon().args(["monitor", "--quiet", "--duration", "1s", &target.pid()]).output();
        succeed(out.unwrap());
    }
}

/// A target that replaces itself by exec keeps being monitored, in its new address space: the
/// walker finds the old one without users and opens the new one; no exit, no problem.
#[test]
fn a_target_that_execs_is_followed_into_its_new_address_space() {
    if !privileged("a_target_that_execs_is_followed_into_its_new_address_space") {
        return;
    }
    // The demo's workload (hot areas of 64 MiB and more) after a second of a shell.
    let exec = format!("sleep 1; exec {} workload --phase-change 1h", env!("CARGO_BIN_EXE_udamon"));
    let mut shell = Command::new("sh").args(["-c", &exec]).spawn().unwrap();
    let pid = shell.id().to_string();
    let out = udamon().args(["monitor", "--json", "--duration", "5s", &pid]).output();
    let _ = shell.kill();
    let _ = shell.wait();
    let text = succeed(out.unwrap());
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        lines.iter().all(|l| l.get("problem").is_none() && l.get("exited").is_none()),
        "{text}"
    );
    damon_user::test_support::assert_workload_seen_in_last_second(&text);
}
