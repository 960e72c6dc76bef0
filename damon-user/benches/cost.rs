//! `cargo xtask bench` (cost part): udamon's own CPU as a share of wall time while its targets
//! run, for the cases the cost goals name: a process sweeping 256 MiB, 50 small processes in a
//! cgroup, an idle process, and 20,000 regions over 100 targets at production intervals. CPU is
//! the run time of udamon's threads (schedstat, in ns: utime + stime without the tick's
//! granularity) over 15 s after a 3 s warm-up; the regions are read from its metrics endpoint
//! at the end. With `UDAMON_BASELINE=/path/to/udamon` every case also runs that binary, right
//! after, for a ratio measured in one run. Needs root.

mod support;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use support::{Load, build_c, metric, remove_cgroup};

const UDAMON: &str = env!("CARGO_BIN_EXE_udamon");
const LOAD_SOURCE: &str = include_str!("cost_load.c");
const WARM_UP: Duration = Duration::from_secs(3);
const MEASURED: Duration = Duration::from_secs(15);

struct Case {
    name: &'static str,
    /// How many loads, of how many MiB, sweeping every how many ms (0: continuously; -1: idle).
    loads: (usize, u64, i64),
    /// udamon's options beyond the defaults.
    options: &'static [&'static str],
    goal: &'static str,
}

/// DAMON's intervals auto-tuning as the service unit runs it.
const TUNED: &[&str] = &["--monitoring_intervals_goal", "400", "3", "5ms", "10s"];

const CASES: [Case; 7] = [
    Case {
        name: "one process sweeping 256 MiB continuously",
        loads: (1, 256, 0),
        options: &[],
        goal: "≤ 1 %",
    },
    Case {
        name: "50 processes of 8 MiB in one cgroup, each sweeping every 200 ms",
        loads: (50, 8, 200),
        options: &[],
        goal: "≤ 1 %",
    },
    Case { name: "one idle 64 MiB process", loads: (1, 64, -1), options: &[], goal: "≤ 0.1 %" },
    Case {
        name: "one process sweeping 256 MiB continuously, intervals goal 4 % 3 5ms 10s",
        loads: (1, 256, 0),
        options: TUNED,
        goal: "reported",
    },
    Case {
        name: "50 processes of 8 MiB in one cgroup, each sweeping every 200 ms, intervals goal 4 % 3 5ms 10s",
        loads: (50, 8, 200),
        options: TUNED,
        goal: "reported",
    },
    Case {
        name: "one idle 64 MiB process, intervals goal 4 % 3 5ms 10s",
        loads: (1, 64, -1),
        options: TUNED,
        goal: "reported",
    },
    Case {
        name: "100 processes of 8 MiB in one cgroup, sweeping every 200 ms, 20,000 regions at sample 50 ms, aggr 1 s",
        loads: (100, 8, 200),
        options: &["--sample", "50ms", "--aggr", "1s", "--minr", "20000", "--maxr", "40000"],
        goal: "reported",
    },
];

/// A cgroup v2 group holding the loads (several loads are monitored with `--cgroup`), removed
/// on drop.
struct Group(PathBuf);

impl Group {
    fn create() -> Result<Self, String> {
        let root = damon_user::sys::cgroup::root().map_err(|e| format!("{e:#}"))?;
        let dir = root.join("udamon-bench-cost");
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Self(dir))
    }

    fn join(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join the group");
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The loads were killed and reaped before.
        remove_cgroup(&self.0);
    }
}

/// The run time of every thread of `pid` so far.
fn run_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let ns: u64 = tasks
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// The regions udamon monitors, from its metrics endpoint at `port`.
fn regions(port: u16) -> Option<u64> {
    metric(port, "udamon_regions").map(|n| n as u64)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// udamon's CPU share (of one core) and its regions at the end, monitoring `targets` (pids or
/// `--cgroup PATH`) with `options`.
fn measure(udamon: &Path, options: &[&str], targets: &[String]) -> (f64, Option<u64>) {
    let port = free_port().to_string();
    let mut child = Command::new(udamon)
        .args(["monitor", "--quiet", "--metrics", &port])
        .args(options)
        .args(targets)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("udamon monitor");
    thread::sleep(WARM_UP);
    let (start, before) = (Instant::now(), run_time(child.id()));
    thread::sleep(MEASURED);
    let (used, wall) = (run_time(child.id()) - before, start.elapsed());
    let regions = regions(port.parse().unwrap());
    let _ = child.kill();
    let _ = child.wait();
    (used.as_secs_f64() / wall.as_secs_f64(), regions)
}

fn run(case: &Case, load: &Path, binaries: &[(&str, PathBuf)]) -> Result<(), String> {
    let (count, mib, period) = case.loads;
    let group = (count > 1).then(Group::create).transpose()?;
    let (mib, period) = (mib.to_string(), period.to_string());
    let loads: Vec<Load> = (0..count).map(|_| Load::start(load, &[&mib, &period])).collect();
    let targets = match &group {
        Some(group) => {
            loads.iter().for_each(|l| group.join(l.pid()));
            vec!["--cgroup".to_string(), group.0.display().to_string()]
        }
        None => loads.iter().map(|l| l.pid().to_string()).collect(),
    };
    println!("cost, {} (goal {}):", case.name, case.goal);
    let mut first = None;
    for (label, binary) in binaries {
        let (share, regions) = measure(binary, case.options, &targets);
        let ratio =
            first.map_or_else(String::new, |f: f64| format!(" ({:.2}× udamon's)", share / f));
        first.get_or_insert(share);
        let regions = regions.map_or_else(|| "?".into(), |n| n.to_string());
        println!(
            "  {label:<9} udamon CPU {:>6.2} % of a core, {regions} regions{ratio}",
            100.0 * share
        );
    }
    drop(loads);
    Ok(())
}

fn main() {
    if let Err(why) = damon_user::check::require_monitoring() {
        println!("cost bench skipped: {why:#}");
        return;
    }
    let mut binaries = vec![("udamon", PathBuf::from(UDAMON))];
    if let Some(baseline) = std::env::var_os("UDAMON_BASELINE") {
        binaries.push(("baseline", PathBuf::from(baseline)));
    }
    let dir = std::env::temp_dir().join(format!("udamon-bench-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let result = build_c(&dir, "cost_load", LOAD_SOURCE)
        .and_then(|load| CASES.iter().try_for_each(|case| run(case, &load, &binaries)));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(why) = result {
        println!("cost bench skipped: {why}");
    }
}
