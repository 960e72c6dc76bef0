//! The `udamon` binary: output, exit codes and error lines.

use std::process::{Command, Output};

fn udamon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_udamon")).args(args).output().expect("run udamon")
}

/// A two-target damo record, written under `dir` (the tests also run in VM guests, where the
/// source tree is not).
fn sample_record(dir: &std::path::Path) -> String {
    let path = dir.join("two-targets.json");
    std::fs::write(&path, include_str!("data/two-targets.json")).unwrap();
    path.to_str().unwrap().to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `udamon` as user nobody with no capabilities, through setpriv (util-linux); needs root.
fn udamon_as_nobody(args: &[&str]) -> Option<Output> {
    udamon_as_nobody_with(&[], args)
}

/// `udamon` as user nobody with only `caps` (e.g. "bpf"), inherited and ambient.
fn udamon_as_nobody_with(caps: &[&str], args: &[&str]) -> Option<Output> {
    // The binary may sit under a directory nobody cannot enter; run a copy from /tmp.
    // One copy per call: tests run in parallel and each removes its own.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let copy = std::env::temp_dir().join(format!("udamon-cli-test-{}-{call}", std::process::id()));
    std::fs::copy(env!("CARGO_BIN_EXE_udamon"), &copy).ok()?;
    let caps = if caps.is_empty() {
        vec!["--inh-caps=-all".to_owned()]
    } else {
        let list = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
        vec![format!("--inh-caps={list}"), format!("--ambient-caps={list}")]
    };
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(caps)
        .arg(&copy)
        .args(args)
        .current_dir("/")
        .output()
        .ok();
    let _ = std::fs::remove_file(&copy);
    output
}

#[test]
fn check_json_is_one_json_document_whose_verdict_matches_the_exit_code() {
    let out = udamon(&["check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let possible = report["monitoring_possible"].as_bool().expect("verdict is a bool");
    assert_eq!(out.status.success(), possible, "exit code disagrees with the verdict");
    let rows = report["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().map(|r| r["requirement"].as_str().unwrap()).collect();
    for expected in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_ADMIN",
        "CAP_SYS_PTRACE",
        "CAP_SYS_NICE",
        "/sys/kernel/btf/vmlinux",
        "tracefs",
        "kernel version",
        "lockdown",
        "raw_tp test run + bpf_loop",
        "tracepoint",
        "perf_event (software)",
        "kprobe attach",
        "fentry",
        "transparent huge pages",
        "kernel DAMON (kdamond)",
        "kernel DAMON to observe",
        "RLIMIT_MEMLOCK",
        "page-table walker",
        "page-table layout",
    ] {
        assert!(names.contains(&expected), "no row for {expected}: {names:?}");
    }
    for row in rows {
        let status = row["status"].as_str().unwrap();
        assert!(["ok", "warn", "missing", "skipped"].contains(&status), "status {status}");
        assert!(row["if_missing"].as_str().is_some_and(|s| !s.is_empty()));
    }
}

#[test]
fn check_as_root_says_monitoring_is_possible_here() {
    if !damon_user::test_support::privileged("check_as_root_says_monitoring_is_possible_here") {
        return;
    }
    let out = udamon(&["check"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "check failed as root:\n{stdout}");
    assert!(stdout.starts_with("REQUIREMENT"), "no table header:\n{stdout}");
    assert!(stdout.contains("\nmonitoring: possible\n"), "{stdout}");
    for line in stdout.lines().filter(|l| l.starts_with("raw_tp")) {
        assert!(line.contains("loads, attaches, fires"), "{line}");
    }
    let layout = stdout.lines().find(|l| l.starts_with("page-table layout")).unwrap_or_default();
    assert!(layout.contains(" ok ") && layout.contains("agrees with pagemap"), "{layout}");
    // The walker itself verifies, with room to spare: a kernel whose verifier explores more
    // (this host's 6.18 build once gave up on it at the limit) shows here first.
    let walker = stdout.lines().find(|l| l.starts_with("page-table walker")).unwrap_or_default();
    let share = walker
        .split_once(" instructions, ")
        .and_then(|(_, rest)| rest.split_once(" %"))
        .and_then(|(percent, _)| percent.parse::<f64>().ok());
    match share {
        Some(share) => assert!(share < 50.0, "{walker}"),
        // Kernels before 5.16 do not count verified instructions.
        None => assert!(walker.contains(" ok ") && walker.contains("verified"), "{walker}"),
    }
}

#[test]
fn check_without_privileges_names_what_is_missing_and_fails() {
    if !damon_user::test_support::privileged(
        "check_without_privileges_names_what_is_missing_and_fails",
    ) {
        return;
    }
    let out = udamon_as_nobody(&["check"]).expect("setpriv (util-linux) drops to nobody");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let verdict = stdout.lines().last().unwrap_or_default();
    assert!(
        verdict
            .starts_with("monitoring: NOT possible; missing: CAP_BPF, CAP_PERFMON, CAP_SYS_NICE"),
        "{verdict}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("raw_tp test run + bpf_loop") && l.contains("skipped"))
    );
    assert!(text(&out.stderr).is_empty(), "no panic or noise on stderr: {}", text(&out.stderr));
}

#[test]
fn unknown_subcommand_and_flag_are_usage_errors() {
    for args in [&["frobnicate"][..], &["check", "--jsno"]] {
        let out = udamon(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("error:"), "{args:?}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_failing_stdout_is_one_error_line_not_a_panic() {
    let full = std::fs::File::create("/dev/full").expect("/dev/full");
    let out = Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["check", "--json"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("udamon: cannot write the output:"), "{stderr}");
}

#[test]
fn sim_compare_prints_one_row_per_policy() {
    let out = udamon(&["sim", "stairs", "--compare"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("stairs: 800 aggregations (80 warm-up), seed 1, max_nr_regions 24"),
        "{stdout}"
    );
    assert!(lines[1].starts_with("policy") && lines[1].contains("detection (aggregations)"));
    let policies: Vec<&str> =
        lines[2..].iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(policies, ["legacy", "age-zero", "fraction", "adaptive"]);
}

#[test]
fn sim_json_has_the_metrics_and_overrides_apply() {
    let out =
        udamon(&["sim", "stairs", "--maxr", "30", "--duration", "20s", "--seed", "9", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["policy"], "adaptive", "the default policy");
    assert_eq!(report["max_nr_regions"], 30);
    assert_eq!(report["seed"], 9);
    assert_eq!(report["aggregations"], 200);
    for key in ["effective_regions", "error", "splits", "wasted_splits", "cost"] {
        assert!(report[key].is_number(), "{key}");
    }
    assert_eq!(
        report["detections"].as_array().unwrap().len(),
        6,
        "steps at 5, 10, 15 s: two areas each"
    );
}

#[test]
fn a_printed_scenario_runs_the_same_from_its_file() {
    let printed = udamon(&["sim", "stairs", "--print-scenario", "--duration", "15s"]);
    assert!(printed.status.success());
    let file = std::env::temp_dir().join(format!("udamon-stairs-{}.toml", std::process::id()));
    std::fs::write(&file, &printed.stdout).unwrap();
    let from_file = udamon(&["sim", file.to_str().unwrap(), "--json"]);
    let _ = std::fs::remove_file(&file);
    let builtin = udamon(&["sim", "stairs", "--duration", "15s", "--json"]);
    assert!(from_file.status.success(), "{}", text(&from_file.stderr));
    assert_eq!(text(&from_file.stdout), text(&builtin.stdout));
}

#[test]
fn sim_bad_input_is_one_line_and_exit_2() {
    let bad_file = std::env::temp_dir().join(format!("udamon-bad-{}.toml", std::process::id()));
    std::fs::write(&bad_file, "name = \"x\"\nsize = \"1GiB\"\nduration = \"10s\"\n[[ranges]]\nstart = 0\nend = \"2GiB\"\nprobability = 0.5\n").unwrap();
    // Files too big to read whole are refused before they are read.
    let huge_file = std::env::temp_dir().join(format!("udamon-huge-{}.toml", std::process::id()));
    std::fs::write(&huge_file, vec![b'#'; (16 << 20) + 1]).unwrap();
    let huge = huge_file.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["sim", huge], "is larger than 16777216 bytes"),
        (&["sim", "stairs", "--config", huge], "is larger than 1048576 bytes"),
        (&["sim", "stairs", "--config", "/proc/self"], "cannot read --config /proc/self"),
        (
            &["sim", "no-such-scenario"],
            "unknown scenario `no-such-scenario`: not a built-in (seed-corner, seed-reproducer, stairs, flat, sparse-spots, needle, gradient, phases, mixed-spots) and no such file",
        ),
        (
            &["sim", bad_file.to_str().unwrap()],
            "ranges[0]: end 2GiB is beyond the space's size 1GiB",
        ),
        (
            &["sim", "stairs", "--maxr", "5"],
            "min_nr_regions (10) must not exceed max_nr_regions (5)",
        ),
        (&["sim", "stairs", "--sample", "5 parsecs"], "--sample: unknown time unit `parsecs`"),
        (
            &["sim", "stairs", "--aggr", "1ms"],
            "the sample interval (5000 us) must not exceed the aggregation interval (1000 us)",
        ),
    ];
    for (args, expected) in cases {
        let out = udamon(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("udamon: ") && stderr.contains(expected), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    let _ = std::fs::remove_file(&bad_file);
    let _ = std::fs::remove_file(&huge_file);
    let conflicting = udamon(&["sim", "stairs", "--compare", "--policy", "legacy"]);
    assert_eq!(conflicting.status.code(), Some(2));
}

#[test]
fn sim_runs_average_over_consecutive_seeds() {
    let out =
        udamon(&["sim", "stairs", "--compare", "--runs", "2", "--duration", "20s", "--seed", "4"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .starts_with("stairs: 200 aggregations (20 warm-up), means over seeds 4..=5,")
    );
    let json = udamon(&["sim", "stairs", "--runs", "3", "--duration", "20s", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["runs"], 3);
    assert_eq!(report["detections"].as_array().unwrap().len(), 3 * 6, "every run's detections");
    assert_eq!(udamon(&["sim", "stairs", "--runs", "0"]).status.code(), Some(2));
    // Seeds wrap: any seed starts a series.
    let max = u64::MAX.to_string();
    let wrapped = udamon(&["sim", "stairs", "--runs", "2", "--duration", "5s", "--seed", &max]);
    assert!(wrapped.status.success(), "{}", text(&wrapped.stderr));
    assert!(text(&wrapped.stdout).contains(&format!("means over seeds {max}..=0")));
}

#[test]
fn monitoring_errors_are_one_line_with_the_right_exit_code() {
    if !damon_user::test_support::privileged(
        "monitoring_errors_are_one_line_with_the_right_exit_code",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("udamon-cli-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let record = dir.join("never.data");
    let record = record.to_str().unwrap();
    let cases: [(&[&str], i32, &str); 5] = [
        (&["monitor", "4194305"], 2, "no process with pid 4194305"),
        (&["monitor", "2"], 2, "kernel thread"),
        (&["monitor"], 2, "nothing to monitor"),
        (&["record", "-o", record, "1", "--", "true"], 2, "give one of PIDs"),
        (&["monitor", "--", "/no/such/program"], 2, "cannot run `/no/such/program`"),
    ];
    for (args, code, expected) in cases {
        let out = udamon(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // Gone before the first aggregation: its exit, then a runtime failure naming it; no file.
    // Unless udamon opened it alive and no sample reached it before the first aggregation
    // (quiet regions are checked once per window): then that window is a true record of it,
    // written whole, and the command's status is udamon's.
    let out = udamon(&["record", "-o", record, "--aggr", "10s", "--", "true"]);
    let err = text(&out.stderr);
    if std::path::Path::new(record).exists() {
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("1 snapshots written"), "{err}");
        std::fs::remove_file(record).unwrap();
    } else {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.ends_with(
            "`true` exited (status 0) before the first aggregation: nothing recorded, no file written\n"
        ), "{err}");
    }
    // Refused although udamon has every capability (this sandbox's pid 1, as root): the line
    // does not blame capabilities.
    if std::fs::read("/proc/1/smaps")
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    {
        let out = udamon(&["monitor", "1"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("although udamon has CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"),
            "{err}"
        );
    }
    // Privileges: none at all, then all but the one that reads another user's process.
    let out = udamon_as_nobody(&["monitor", "1"]).expect("setpriv");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing CAP_BPF"), "{}", text(&out.stderr));
    let caps = ["bpf", "perfmon", "sys_admin", "sys_nice"];
    let out = udamon_as_nobody_with(&caps, &["monitor", "1"]).expect("setpriv");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("udamon: cannot monitor pid 1: permission denied"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The shipped systemd unit grants exactly `caps::SERVICE`, and they are enough: as nobody with
/// only those, `check` passes and another user's process can be monitored.
#[test]
fn the_service_unit_runs_with_exactly_the_capabilities_it_needs() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/udamon.service"
    ))
    .unwrap();
    let granted = |key: &str| -> Vec<String> {
        let line =
            unit.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key}"));
        let mut caps: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        caps.sort();
        caps
    };
    let mut wanted: Vec<String> =
        damon_user::sys::caps::SERVICE.iter().map(|c| c.name().to_owned()).collect();
    wanted.sort();
    assert_eq!(granted("AmbientCapabilities="), wanted);
    assert_eq!(granted("CapabilityBoundingSet="), wanted);
    if !damon_user::test_support::privileged(
        "the_service_unit_runs_with_exactly_the_capabilities_it_needs",
    ) {
        return;
    }
    let caps: Vec<String> =
        wanted.iter().map(|c| c.trim_start_matches("CAP_").to_lowercase()).collect();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let out = udamon_as_nobody_with(&caps, &["check"]).expect("setpriv");
    assert!(out.status.success(), "{}", text(&out.stdout));
    // Without CAP_SYS_ADMIN pagemap hides frames: the calibration says how it was checked.
    let stdout = text(&out.stdout);
    let layout = stdout.lines().find(|l| l.starts_with("page-table layout")).unwrap_or_default();
    assert!(layout.contains("checked by a read through the direct map"), "{layout}");
    let mut root_owned = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let pid = root_owned.id().to_string();
    // With the unit's own options beyond the group and the metrics address.
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let goal =
        exec.split(" --monitoring_intervals_goal ").nth(1).expect("the unit tunes intervals");
    let mut args = vec!["monitor", "--duration", "1s", "--every", "5"];
    args.push("--monitoring_intervals_goal");
    args.extend(goal.split_whitespace().take(4));
    args.push(&pid);
    let out = udamon_as_nobody_with(&caps, &args);
    let _ = root_owned.kill();
    let _ = root_owned.wait();
    let out = out.expect("setpriv");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("working set"));
}

/// Zero intervals are bad input on every command that runs the engine, from the command line or
/// a config file: one line, exit 2, before anything starts.
#[test]
fn zero_intervals_are_refused_everywhere() {
    let config = std::env::temp_dir().join(format!("udamon-zero-{}.toml", std::process::id()));
    std::fs::write(&config, "updr = \"0s\"\n").unwrap();
    let config = config.to_str().unwrap();
    let mut cases: Vec<(Vec<&str>, String)> = Vec::new();
    for command in
        [&["monitor", "1"][..], &["record", "-o", "/dev/null", "1"], &["demo"], &["sim", "stairs"]]
    {
        for (option, value, expected) in [
            ("--updr", "0", "--updr 0: the interval must be positive".to_owned()),
            ("--sample", "0", "--sample 0: the interval must be positive".to_owned()),
            ("--config", config, format!("--config {config}: updr must be positive")),
        ] {
            cases.push(([&command[..1], &[option, value], &command[1..]].concat(), expected));
        }
    }
    for (args, expected) in cases {
        let out = udamon(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&out.stderr), format!("udamon: {expected}\n"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let _ = std::fs::remove_file(config);
}

/// Overlapping simulator ranges run (the later wins) with one warning line per overlap; a size
/// of 2^64 bytes is refused rather than saturated.
#[test]
fn sim_warns_of_overlapping_ranges_and_refuses_sizes_past_2_64() {
    let file = std::env::temp_dir().join(format!("udamon-overlap-{}.toml", std::process::id()));
    let base = "name = \"x\"\nsize = \"1GiB\"\nduration = \"2s\"\n";
    let ranges = "[[ranges]]\nstart = 0\nend = \"64MiB\"\nprobability = 0.9\n[[ranges]]\nstart = \"32MiB\"\nend = \"96MiB\"\nprobability = 0.1\n";
    std::fs::write(&file, format!("{base}{ranges}")).unwrap();
    let out = udamon(&["sim", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "udamon: scenario x: ranges[1] overlaps ranges[0] at 32MiB..64MiB: the later range wins there\n"
    );
    for size in ["\"16777216TiB\"", "\"18446744073709551616\""] {
        std::fs::write(&file, base.replace("\"1GiB\"", size)).unwrap();
        let out = udamon(&["sim", file.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{size}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("is 2^64 bytes or more: too large"), "{size}: {err}");
    }
    let _ = std::fs::remove_file(&file);
}

/// Pids that name no monitorable process say what they are, with no capability hint where
/// capabilities are not the cause.
#[test]
fn pids_that_are_not_processes_say_what_they_are() {
    if !damon_user::test_support::privileged("pids_that_are_not_processes_say_what_they_are") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // SAFETY: gettid cannot fail.
        tx.send(unsafe { libc::gettid() }.to_string()).unwrap();
        let _ = wait.recv();
    });
    let tid = rx.recv().unwrap();
    let me = std::process::id();
    let cases: [(&[&str], String); 3] = [
        (&["monitor", "0"], "no process with pid 0".into()),
        (&["monitor", "--json", "4294967295"], "no process with pid 4294967295".into()),
        (&["record", "-o", "/dev/null", &tid], format!("{tid} is a thread of process {me}")),
    ];
    for (args, expected) in cases {
        let out = udamon(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&out.stderr), format!("udamon: {expected}\n"), "{args:?}");
    }
    drop(done);
    thread.join().unwrap();
    // Itself: the shell's pid becomes udamon's.
    let out = Command::new("sh")
        .args(["-c", "echo $$ >&2; exec \"$0\" monitor $$", env!("CARGO_BIN_EXE_udamon")])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    let pid = err.lines().next().unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err, format!("{pid}\nudamon: pid {pid} is udamon itself\n"));
}

/// `--cgroup` takes only cgroup v2 groups: a v1 hierarchy (if one is mounted here) or a
/// directory that merely has a cgroup.procs file is refused.
#[test]
fn cgroup_v1_hierarchies_are_refused() {
    let fake = std::env::temp_dir().join(format!("udamon-cli-fake-cgroup-{}", std::process::id()));
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("cgroup.procs"), "1\n").unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let v1 = mounts.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup")).then(|| fields[1].to_owned())
    });
    for dir in [fake.to_str().unwrap().to_owned()].into_iter().chain(v1) {
        let out = udamon(&["monitor", "--cgroup", &dir]);
        assert_eq!(out.status.code(), Some(2), "{dir}");
        assert_eq!(
            text(&out.stderr),
            format!(
                "udamon: --cgroup {dir}: {dir} is not a cgroup v2 directory (cgroup v1 is not supported)\n"
            )
        );
    }
    std::fs::remove_dir_all(&fake).unwrap();
}

/// Bad input on paths that need no privileges: one `udamon: ` line naming the problem, exit 2,
/// nothing on stdout.
#[test]
fn bad_input_is_one_line_naming_the_problem() {
    let dir = std::env::temp_dir().join(format!("udamon-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let record = &sample_record(&dir);
    let goal = file("goal.toml", "monitoring-intervals-goal = \"0 3 5ms 10s\"\n");
    let scenario = |attrs: &str| {
        file(
            "zero.toml",
            &format!("name = \"z\"\nsize = \"1GiB\"\nduration = \"10s\"\n[attrs]\n{attrs}\n"),
        )
    };
    let zero_sample = scenario("sample_us = 0");
    let backwards = file(
        "backwards.json",
        r#"[{"target_id": 1, "snapshots": [{"start_time": 200, "end_time": 100, "regions": [{"start": 0, "end": 4096}]}]}]"#,
    );
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["sim", "new\nline"],
            "unknown scenario `new\\nline`: not a built-in (seed-corner, seed-reproducer, stairs, flat, sparse-spots, needle, gradient, phases, mixed-spots) and no such file".into(),
        ),
        (vec!["monitor", "--duration", "0s", "1"], "--duration 0s: give a length of time above zero".into()),
        (vec!["sim", "stairs", "--duration", "0ms"], "--duration 0ms: give a length of time above zero".into()),
        (
            vec!["demo", "--phase-change", "20s"],
            "--phase-change 20s is not before the demo's end (--duration 10s): the change would not be seen (`never` keeps the hole cold)".into(),
        ),
        (
            vec!["monitor", "--monitoring_intervals_goal", "4%", "3", "0", "5ms", "1"],
            "--monitoring_intervals_goal: minimum sample interval 0: the interval must be positive".into(),
        ),
        (
            vec!["monitor", "--config", &goal, "1"],
            format!("--config {goal}: monitoring-intervals-goal: access goal `0`: give 1 to 10000 basis points, or a percentage up to 100%"),
        ),
        (
            vec!["sim", &zero_sample],
            format!("scenario file {zero_sample}: attrs: the sample interval must be positive"),
        ),
        (
            vec!["report", "heatmap", "-i", record, "--time-bins", "10000", "--address-bins", "10000"],
            "10000 time bins × 10000 address bins are 100000000 cells: at most 1000000".into(),
        ),
        (
            vec!["report", "wss", "-i", record, "--skip", "3"],
            "--skip 3 leaves no snapshot of target 4242: it has 3 snapshots".into(),
        ),
        (
            vec!["convert", "-i", record, "-o", "/proc/self/mem"],
            "cannot write /proc/self/mem: it is in /proc, a kernel interface, not a file".into(),
        ),
        (
            vec!["report", "wss", "-i", &backwards],
            format!("{backwards} is not a usable record: target 1, snapshot 0: start_time 200 is after end_time 100"),
        ),
    ];
    for (args, expected) in cases {
        let out = udamon(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), format!("udamon: {expected}\n"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // clap's own line for a count out of range.
    let out = udamon(&["monitor", "--every", "0", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .starts_with("error: invalid value '0' for '--every <EVERY>': give 1 or more\n")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `-o /dev/stdout` (or `-o -`) writes through whatever stdout is (here a pipe), as a FIFO is;
/// `-i -` reads standard input.
#[test]
fn output_to_dev_stdout_goes_through_the_pipe() {
    let dir = std::env::temp_dir().join(format!("udamon-cli-stdout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let record = &sample_record(&dir);
    // A minimal system (the VM guests) may have no /dev/stdout; `-` needs none.
    for output in
        ["/dev/stdout", "-"].into_iter().filter(|o| *o == "-" || std::path::Path::new(o).exists())
    {
        let out = udamon(&["convert", "-i", record, "-o", output, "--format", "json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let written: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the record");
        assert_eq!(written.as_array().map(Vec::len), Some(2), "both targets");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["report", "nr-regions", "-i", "-"])
        .stdin(std::fs::File::open(record).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("# target "), "{}", text(&out.stdout));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A pid that has exited but is not reaped yet (a zombie) is bad input, said as such.
#[test]
fn a_zombie_is_refused_as_exited() {
    let child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let stat = format!("/proc/{pid}/stat");
    let zombie = || std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z "));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !zombie() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(zombie(), "the child never became a zombie");
    let out = udamon(&["monitor", "--duration", "1s", &pid.to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "udamon: pid {pid} has exited already (a zombie its parent has not reaped): nothing to monitor\n"
        )
    );
    drop(child);
}
