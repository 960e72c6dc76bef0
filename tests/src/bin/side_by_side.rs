//! Kernel DAMON (vaddr, through sysfs) and udamon on the same workload, one after the other
//! with the same attributes: CPU per region-sample of each, and how well they agree on which
//! bytes are hot. Run by `cargo xtask vm-test` in guests whose kernel has DAMON; prints one
//! `UDAMON-VM-SIDE-BY-SIDE:` line, and fails when udamon's hot bytes stray from the workload's
//! or its cost per region-sample regresses past what this kernel's gate allows.
//! Usage: side_by_side UDAMON SECONDS

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use damon_user::workload::Layout;
use serde_json::Value;
use tests::damon_admin::{self, ADMIN, read, write};

const SAMPLE_US: u64 = 5000;
const AGGR_US: u64 = 100_000;

/// One tool's run: CPU time, region-samples, and its last snapshot's hot byte ranges.
struct Run {
    cpu: Duration,
    region_samples: f64,
    /// Regions in the last snapshot.
    regions: usize,
    hot: Vec<(u64, u64)>,
}

/// CPU time of a thread or process so far, from schedstat (nanoseconds on a CPU).
fn cpu_of(pid: &str) -> Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let ns: u64 = text.split_whitespace().next().context("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}

fn kernel_damon(pid: u32, seconds: u64) -> Result<Run> {
    if !Path::new(ADMIN).exists() {
        bail!("no DAMON sysfs interface in this kernel");
    }
    write("kdamonds/nr_kdamonds", "1")?;
    damon_admin::setup(0, "vaddr", SAMPLE_US, AGGR_US, Some(pid))?;
    write("kdamonds/0/state", "on")?;
    let kdamond = read("kdamonds/0/pid")?;
    let cpu_before = cpu_of(&kdamond)?;
    // Region counts once a second, for the region-samples.
    let started = Instant::now();
    let mut counts = Vec::new();
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        last = damon_admin::tried_regions(0)?;
        counts.push(last.len() as f64);
    }
    let cpu = cpu_of(&kdamond)? - cpu_before;
    let elapsed = started.elapsed();
    write("kdamonds/0/state", "off")?;
    let mean = counts.iter().sum::<f64>() / counts.len().max(1) as f64;
    let samples = elapsed.as_micros() as f64 / SAMPLE_US as f64;
    // A region is hot when any of the aggregation's samples found it accessed.
    let hot = last.iter().filter(|r| r.2 > 0).map(|r| (r.0, r.1)).collect();
    // Into the console log, to see what a low agreement is made of.
    for (start, end, accesses) in &last {
        eprintln!("kdamond region {start:#x}-{end:#x} nr_accesses={accesses}");
    }
    Ok(Run { cpu, region_samples: mean * samples, regions: last.len(), hot })
}

fn udamon(udamon: &str, pid: u32, seconds: u64) -> Result<Run> {
    let out = Command::new(udamon)
        .args(["monitor", "--json", "--duration", &format!("{seconds}s"), &pid.to_string()])
        .args(["--sample", &format!("{SAMPLE_US}us"), "--aggr", &format!("{AGGR_US}us")])
        .output()
        .context("cannot run udamon")?;
    if !out.status.success() {
        bail!("udamon monitor failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &Value| l["regions"].is_array())
        .collect();
    let last = lines.last().context("udamon printed no snapshot")?;
    let per_aggr = (AGGR_US / SAMPLE_US) as f64;
    // Steady state only: the first snapshot's CPU share is null (it would measure start-up).
    let (mut cpu_s, mut region_samples) = (0.0, 0.0);
    for l in &lines[1..] {
        cpu_s += l["udamon_cpu_percent"].as_f64().unwrap_or(0.0) / 100.0 * AGGR_US as f64 / 1e6;
        region_samples += l["nr_regions"].as_f64().unwrap_or(0.0) * per_aggr;
    }
    let regions = last["regions"].as_array().context("regions")?;
    let hot = regions
        .iter()
        .filter(|r| r["nr_accesses"].as_u64() > Some(0))
        .filter_map(|r| Some((r["start"].as_u64()?, r["end"].as_u64()?)))
        .collect();
    Ok(Run { cpu: Duration::from_secs_f64(cpu_s), region_samples, regions: regions.len(), hot })
}

fn bytes(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(s, e)| e - s).sum()
}

/// Bytes both call hot over bytes either calls hot.
fn jaccard(a: &[(u64, u64)], b: &[(u64, u64)]) -> f64 {
    let mut both = 0;
    for &(s1, e1) in a {
        for &(s2, e2) in b {
            both += e1.min(e2).saturating_sub(s1.max(s2));
        }
    }
    let either = bytes(a) + bytes(b) - both;
    if either == 0 { 1.0 } else { both as f64 / either as f64 }
}

const SIDE: &str = "UDAMON-VM-SIDE-BY-SIDE:";

/// The most udamon may cost per region-sample, as a multiple of kdamond's, in the median of
/// `ROUNDS` rounds on each kernel. Single rounds of the one-walk data plane on 2026-12-07: 6.12
/// 0.49–1.14 (median 0.59), 7.2 1.37–2.51 (median 1.94), over seven rounds each; the gates are
/// 1.5× 6.12's highest round and 7.2's highest but one (2.25), for TCG's noise, which a median
/// of three narrows but does not remove. 7.2's gate fails the earlier data plane (3.55 there).
const MAX_RATIO: [((u32, u32), f64); 2] = [((6, 12), MAX_RATIO_6_12), ((7, 2), MAX_RATIO_7_2)];
const MAX_RATIO_6_12: f64 = 1.7;
const MAX_RATIO_7_2: f64 = 3.4;

/// Fails when udamon's cost per region-sample over kdamond's passes the gate of `version`.
fn cost_gate(version: Option<(u32, u32)>, ratio: f64) -> Result<()> {
    match MAX_RATIO.iter().find(|(v, _)| Some(*v) == version) {
        Some(&(_, max)) if ratio > max => {
            bail!("udamon costs {ratio:.2}× kdamond per region-sample here (gate: {max})")
        }
        _ => Ok(()),
    }
}

/// The running kernel's major and minor version.
fn kernel_version() -> Option<(u32, u32)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
/// Least Jaccard index of udamon's hot bytes against the workload's hot areas that passes.
const MIN_AGREEMENT: f64 = 0.8;

/// Rounds of a kdamond phase then a udamon phase: under TCG one phase's cost swings up to 2×
/// with the host (6.12's ratio read 0.54–1.14 in single rounds of one day), so the cost gate
/// reads the median round.
const ROUNDS: usize = 3;

/// One round: its report line, udamon's agreement with the truth, and the cost ratio.
fn round(udamon_path: &str, layout: &Layout, seconds: u64) -> Result<(String, f64, f64)> {
    let kernel = kernel_damon(layout.pid, seconds)?;
    let ours = udamon(udamon_path, layout.pid, seconds)?;
    let truth: Vec<(u64, u64)> =
        layout.areas.iter().filter(|a| a.hot).map(|a| (a.start, a.end)).collect();
    let per = |run: &Run| run.cpu.as_nanos() as f64 / run.region_samples.max(1.0);
    let ratio = per(&ours) / per(&kernel).max(1e-9);
    let ours_vs_truth = jaccard(&ours.hot, &truth);
    let line = format!(
        "kdamond_ns_per_region_sample={:.0} udamon_ns_per_region_sample={:.0} ratio={ratio:.2} hot_agreement={:.2} kdamond_vs_truth={:.2} udamon_vs_truth={ours_vs_truth:.2} regions={}/{} hot_mib={}/{}/{}",
        per(&kernel),
        per(&ours),
        jaccard(&kernel.hot, &ours.hot),
        jaccard(&kernel.hot, &truth),
        kernel.regions,
        ours.regions,
        bytes(&kernel.hot) >> 20,
        bytes(&ours.hot) >> 20,
        bytes(&truth) >> 20,
    );
    Ok((line, ours_vs_truth, ratio))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, udamon_path, seconds] = &args[..] else { bail!("usage: side_by_side UDAMON SECONDS") };
    let seconds: u64 = seconds.parse()?;
    let (mut workload, layout) = damon_admin::spawn_workload(udamon_path)?;
    let rounds: Result<Vec<_>> =
        (0..ROUNDS).map(|_| round(udamon_path, &layout, seconds)).collect();
    let _ = workload.kill();
    let _ = workload.wait();
    let mut rounds = rounds?;
    for (k, (line, ..)) in rounds.iter().enumerate() {
        println!("side-by-side round {k}: {line}");
    }
    let ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.2)).collect();
    rounds.sort_by(|a, b| a.2.total_cmp(&b.2));
    let (line, _, ratio) = &rounds[ROUNDS / 2];
    println!("{SIDE} {line} (median of rounds {})", ratios.join(", "));
    // A gate, not only a report: udamon gave 0.99–1.00 in every boot so far (kdamond 0.05–0.93).
    if let Some(worst) = rounds.iter().map(|r| r.1).min_by(f64::total_cmp)
        && worst < MIN_AGREEMENT
    {
        bail!("udamon's hot bytes agree with the workload's only {worst:.2} (< {MIN_AGREEMENT})");
    }
    // After the agreement: a cost failure must not hide a wrong answer.
    cost_gate(kernel_version(), *ratio)
}

// Not `mod tests`: that name is this package's library.
#[cfg(test)]
mod gate {
    use super::*;

    #[test]
    fn the_cost_gate_fails_past_its_kernels_limit() {
        assert!(cost_gate(Some((6, 12)), MAX_RATIO_6_12).is_ok());
        assert!(cost_gate(Some((6, 12)), MAX_RATIO_6_12 + 0.01).is_err());
        assert!(cost_gate(Some((7, 2)), MAX_RATIO_7_2 + 0.01).is_err());
        // Kernels without a measured figure are reported, not gated.
        assert!(cost_gate(Some((6, 1)), 100.0).is_ok());
        assert!(cost_gate(None, 100.0).is_ok());
    }
}
