//! `cargo xtask bench` (policies part): the split policies on real memory, through the real
//! binary and eBPF data plane. For each workload and policy: access checks per second (what
//! monitoring costs) and the share of the workload's known hot and cold bytes that their regions
//! read on the right side of `HOT`, over the snapshots after a warm-up. Two workloads: `udamon
//! demo`'s, and a stress-ng vm worker beside a process holding a cold mmap. Policies alternate,
//! `RUNS` runs each. Needs root, and stress-ng (which `cargo xtask bench` installs).

mod support;

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{Load, build_c};

const UDAMON: &str = env!("CARGO_BIN_EXE_udamon");
const LOAD_SOURCE: &str = include_str!("cost_load.c");
const POLICIES: [&str; 2] = ["legacy", "adaptive"];
const RUNS: usize = 2;
const DURATION: &str = "12s";
/// Snapshots before this (seconds into monitoring) are the warm-up: not scored.
const SETTLED_FROM: f64 = 3.0;
/// A byte reads hot when its region's rate (accesses per sample) is at least this.
const HOT: f64 = 0.2;
const MIB: u64 = 1 << 20;
/// stress-ng's buffer: written so fast that every page is young in most samples.
const STRESS_MIB: u64 = 64;
const COLD_MIB: u64 = 256;

/// Memory whose access pattern is known: `[start, end)` of `pid`, hot or cold.
struct Area {
    pid: u64,
    start: u64,
    end: u64,
    hot: bool,
}

/// One run of a policy: its snapshots and the areas it is scored on.
struct Run {
    policy: &'static str,
    snaps: Vec<Snap>,
    areas: Vec<Area>,
}

/// One aggregation as udamon printed it: when it ended, the checks made so far, and every
/// target's regions as (pid, start, end, rate).
struct Snap {
    seconds: f64,
    checks: u64,
    regions: Vec<(u64, u64, u64, f64)>,
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Checks per second, the share of the areas' bytes read right, and the mean region count, over
/// the settled snapshots.
fn score(snaps: &[Snap], areas: &[Area]) -> Option<(f64, f64, f64)> {
    let settled: Vec<&Snap> = snaps.iter().filter(|s| s.seconds >= SETTLED_FROM).collect();
    let (first, last) = (settled.first()?, settled.last()?);
    let checks = (last.checks - first.checks) as f64 / (last.seconds - first.seconds).max(1e-9);
    let (mut right, mut total) = (0u64, 0u64);
    for snap in &settled {
        for area in areas {
            total += area.end - area.start;
            for &(pid, start, end, rate) in &snap.regions {
                let overlap = area.end.min(end).saturating_sub(area.start.max(start));
                if pid == area.pid && (rate >= HOT) == area.hot {
                    right += overlap;
                }
            }
        }
    }
    let regions = settled.iter().map(|s| s.regions.len()).sum::<usize>() as f64;
    Some((checks, right as f64 / total as f64, regions / settled.len() as f64))
}

fn json_lines(out: std::process::Output) -> Result<Vec<Value>, String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}"))).collect()
}

/// `udamon demo` with `policy`: its areas (the hole stays cold: its phase change is after the
/// run) and snapshots.
fn demo(policy: &str) -> Result<(Vec<Area>, Vec<Snap>), String> {
    let out = Command::new(UDAMON)
        .args(["demo", "--json", "--duration", DURATION, "--phase-change", "never"])
        .args(["--split-policy", policy])
        .output()
        .map_err(|e| e.to_string())?;
    let lines = json_lines(out)?;
    let layout = &lines.first().ok_or("no layout")?["layout"];
    let pid = u(&layout["pid"]);
    let areas = layout["areas"].as_array().ok_or("no areas")?;
    let areas = areas
        .iter()
        .map(|a| Area {
            pid,
            start: u(&a["start"]),
            end: u(&a["end"]),
            hot: a["hot"].as_bool().unwrap_or(false),
        })
        .collect();
    let snaps = lines
        .iter()
        .filter_map(|l| l.get("snapshot"))
        .map(|s| {
            let samples = s["samples"].as_f64().unwrap_or(1.0).max(1.0);
            let elapsed = &s["elapsed"];
            let regions = s["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|t| {
                    let pid = u(&t["pid"]);
                    t["regions"].as_array().into_iter().flatten().map(move |r| {
                        let rate = r["nr_accesses"].as_f64().unwrap_or(0.0) / samples;
                        (pid, u(&r["start"]), u(&r["end"]), rate)
                    })
                })
                .collect();
            Snap {
                seconds: u(&elapsed["secs"]) as f64 + u(&elapsed["nanos"]) as f64 / 1e9,
                checks: u(&s["stats"]["counters"]["checks"]),
                regions,
            }
        })
        .collect();
    Ok((areas, snaps))
}

/// `udamon monitor --json` of `pids` with `policy`: one line per target and aggregation,
/// gathered into snapshots.
fn monitor(policy: &str, pids: &[u32]) -> Result<Vec<Snap>, String> {
    let out = Command::new(UDAMON)
        .args(["monitor", "--json", "--duration", DURATION, "--split-policy", policy])
        .args(pids.iter().map(u32::to_string))
        .output()
        .map_err(|e| e.to_string())?;
    let mut snaps: Vec<Snap> = Vec::new();
    for line in json_lines(out)?.iter().filter(|l| l.get("snapshot").is_some()) {
        let number = u(&line["snapshot"]) as usize;
        if snaps.len() <= number {
            snaps.resize_with(number + 1, || Snap { seconds: 0.0, checks: 0, regions: Vec::new() });
        }
        let snap = &mut snaps[number];
        snap.seconds = u(&line["end_ns"]) as f64 / 1e9;
        snap.checks = u(&line["access_checks"]);
        let pid = u(&line["target_id"]);
        for r in line["regions"].as_array().into_iter().flatten() {
            let rate = r["access_percent"].as_f64().unwrap_or(0.0) / 100.0;
            snap.regions.push((pid, u(&r["start"]), u(&r["end"]), rate));
        }
    }
    Ok(snaps)
}

/// stress-ng in its own process group, killed with its workers on drop.
struct StressNg(Child);

impl Drop for StressNg {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own process group; no memory is involved.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// The anonymous mapping of exactly `bytes` in `pid`, as (start, end).
fn mapping_of(pid: u32, bytes: u64) -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let range = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        let anonymous = fields.nth(4).is_none();
        (anonymous && range.1 - range.0 == bytes).then_some(range)
    })
}

/// The process among stress-ng's that holds its buffer, once it does.
fn stress_worker(group: u32) -> Option<(u32, (u64, u64))> {
    for _ in 0..50 {
        let procs = std::fs::read_dir("/proc").ok()?.flatten();
        let found = procs
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // The process group is the fifth field after the command's closing parenthesis.
                let after = stat.rsplit_once(')').map_or("", |s| s.1);
                after.split_whitespace().nth(2) == Some(&group.to_string())
            })
            .find_map(|pid| Some((pid, mapping_of(pid, STRESS_MIB * MIB)?)));
        if found.is_some() {
            return found;
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

fn stress_case(load: &std::path::Path) -> Result<Vec<Run>, String> {
    let child = Command::new("stress-ng")
        .args(["--vm", "1", "--vm-bytes", &format!("{STRESS_MIB}M"), "--vm-keep"])
        .args(["--vm-method", "write64", "--timeout", "300s", "--quiet"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run stress-ng ({e}): `cargo xtask bench` installs it"))?;
    let stress = StressNg(child);
    let (worker, buffer) = stress_worker(stress.0.id()).ok_or("stress-ng's buffer not found")?;
    let cold = Load::start(load, &[&COLD_MIB.to_string(), "-1"]);
    let cold_area = mapping_of(cold.pid(), COLD_MIB * MIB).ok_or("the cold mmap not found")?;
    let areas = || {
        vec![
            Area { pid: worker.into(), start: buffer.0, end: buffer.1, hot: true },
            Area { pid: cold.pid().into(), start: cold_area.0, end: cold_area.1, hot: false },
        ]
    };
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        for policy in POLICIES {
            let snaps = monitor(policy, &[worker, cold.pid()])?;
            runs.push(Run { policy, snaps, areas: areas() });
        }
    }
    Ok(runs)
}

fn demo_case() -> Result<Vec<Run>, String> {
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        for policy in POLICIES {
            let (areas, snaps) = demo(policy)?;
            runs.push(Run { policy, snaps, areas });
        }
    }
    Ok(runs)
}

fn print(what: &str, runs: Result<Vec<Run>, String>) {
    println!("policies on real memory, {what} ({DURATION}, scored after {SETTLED_FROM} s):");
    let runs = match runs {
        Ok(runs) => runs,
        Err(why) => return println!("  skipped: {why}"),
    };
    for policy in POLICIES {
        let scores: Vec<_> = runs
            .iter()
            .filter(|r| r.policy == policy)
            .filter_map(|r| score(&r.snaps, &r.areas))
            .collect();
        let list = |f: fn(&(f64, f64, f64)) -> String| {
            scores.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        println!(
            "  {policy:<9} access checks per second {}; hot and cold bytes read right {}; regions {}",
            list(|s| format!("{:.0}", s.0)),
            list(|s| format!("{:.1} %", 100.0 * s.1)),
            list(|s| format!("{:.0}", s.2)),
        );
    }
}

fn main() {
    if let Err(why) = damon_user::check::require_monitoring() {
        println!("policies bench skipped: {why:#}");
        return;
    }
    print("the demo workload", demo_case());
    let dir = std::env::temp_dir().join(format!("udamon-bench-policies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let what = format!(
        "a stress-ng vm worker ({STRESS_MIB} MiB, write64) and a cold {COLD_MIB} MiB mmap in another process"
    );
    print(&what, build_c(&dir, "cold_load", LOAD_SOURCE).and_then(|load| stress_case(&load)));
    let _ = std::fs::remove_dir_all(&dir);
}
