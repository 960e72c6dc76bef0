//! Kernel DAMON (vaddr, through sysfs) and udamon on the same workload, one after the other
//! with the same attributes: CPU per region-sample of each, and how well they agree on which
//! bytes are hot. Run by `cargo xtask vm-test` in guests whose kernel has DAMON; prints one
//! `UDAMON-VM-SIDE-BY-SIDE:` line, and fails when udamon's hot bytes stray from the workload's.
//! Usage: side_by_side UDAMON SECONDS

use std::{
    fs,
    io::BufRead as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use damon_user::workload::Layout;
use serde_json::Value;

const ADMIN: &str = "/sys/kernel/mm/damon/admin";
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

fn write(path: &str, value: &str) -> Result<()> {
    let path = format!("{ADMIN}/{path}");
    fs::write(&path, value).with_context(|| format!("cannot write {value} to {path}"))
}

fn read(path: &str) -> Result<String> {
    let path = format!("{ADMIN}/{path}");
    Ok(fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?.trim().to_owned())
}

/// CPU time of a thread or process so far, from schedstat (nanoseconds on a CPU).
fn cpu_of(pid: &str) -> Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let ns: u64 = text.split_whitespace().next().context("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}

/// The regions kernel DAMON holds now, through a `stat` scheme's tried regions.
fn kernel_regions() -> Result<Vec<(u64, u64, u64)>> {
    write("kdamonds/0/state", "update_schemes_tried_regions")?;
    let dir = format!("{ADMIN}/kdamonds/0/contexts/0/schemes/0/tried_regions");
    let mut regions = Vec::new();
    for entry in fs::read_dir(&dir)?.flatten() {
        let p = entry.path();
        if !p.is_dir() {
            continue;
        }
        let field =
            |name: &str| -> Result<u64> { Ok(fs::read_to_string(p.join(name))?.trim().parse()?) };
        regions.push((field("start")?, field("end")?, field("nr_accesses")?));
    }
    regions.sort_unstable();
    Ok(regions)
}

fn kernel_damon(pid: u32, seconds: u64) -> Result<Run> {
    if !Path::new(ADMIN).exists() {
        bail!("no DAMON sysfs interface in this kernel");
    }
    write("kdamonds/nr_kdamonds", "1")?;
    write("kdamonds/0/contexts/nr_contexts", "1")?;
    let ctx = "kdamonds/0/contexts/0";
    write(&format!("{ctx}/operations"), "vaddr")?;
    write(&format!("{ctx}/monitoring_attrs/intervals/sample_us"), &SAMPLE_US.to_string())?;
    write(&format!("{ctx}/monitoring_attrs/intervals/aggr_us"), &AGGR_US.to_string())?;
    write(&format!("{ctx}/monitoring_attrs/intervals/update_us"), "1000000")?;
    write(&format!("{ctx}/monitoring_attrs/nr_regions/min"), "10")?;
    write(&format!("{ctx}/monitoring_attrs/nr_regions/max"), "1000")?;
    write(&format!("{ctx}/targets/nr_targets"), "1")?;
    write(&format!("{ctx}/targets/0/pid_target"), &pid.to_string())?;
    write(&format!("{ctx}/schemes/nr_schemes"), "1")?;
    write(&format!("{ctx}/schemes/0/action"), "stat")?;
    // The pattern's ranges start at 0..0: widen them so every region is a "tried" one.
    let pattern = format!("{ctx}/schemes/0/access_pattern");
    write(&format!("{pattern}/sz/max"), &u64::MAX.to_string())?;
    write(&format!("{pattern}/nr_accesses/max"), &u32::MAX.to_string())?;
    write(&format!("{pattern}/age/max"), &u32::MAX.to_string())?;
    write("kdamonds/0/state", "on")?;
    let kdamond = read("kdamonds/0/pid")?;
    let cpu_before = cpu_of(&kdamond)?;
    // Region counts once a second, for the region-samples.
    let started = Instant::now();
    let mut counts = Vec::new();
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        last = kernel_regions()?;
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
/// Least Jaccard index of udamon's hot bytes against the workload's hot areas that passes.
const MIN_AGREEMENT: f64 = 0.8;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, udamon_path, seconds] = &args[..] else { bail!("usage: side_by_side UDAMON SECONDS") };
    let seconds: u64 = seconds.parse()?;
    let mut workload = Command::new(udamon_path)
        .args(["workload", "--phase-change", "1h"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(workload.stdout.take().context("no pipe")?).read_line(&mut line)?;
    let layout: Layout = serde_json::from_str(&line)?;
    let result = (|| -> Result<(String, f64)> {
        let kernel = kernel_damon(layout.pid, seconds)?;
        let ours = udamon(udamon_path, layout.pid, seconds)?;
        let truth: Vec<(u64, u64)> =
            layout.areas.iter().filter(|a| a.hot).map(|a| (a.start, a.end)).collect();
        let per = |run: &Run| run.cpu.as_nanos() as f64 / run.region_samples.max(1.0);
        let ours_vs_truth = jaccard(&ours.hot, &truth);
        let line = format!(
            "kdamond_ns_per_region_sample={:.0} udamon_ns_per_region_sample={:.0} ratio={:.2} hot_agreement={:.2} kdamond_vs_truth={:.2} udamon_vs_truth={ours_vs_truth:.2} regions={}/{} hot_mib={}/{}/{}",
            per(&kernel),
            per(&ours),
            per(&ours) / per(&kernel).max(1e-9),
            jaccard(&kernel.hot, &ours.hot),
            jaccard(&kernel.hot, &truth),
            kernel.regions,
            ours.regions,
            bytes(&kernel.hot) >> 20,
            bytes(&ours.hot) >> 20,
            bytes(&truth) >> 20,
        );
        Ok((line, ours_vs_truth))
    })();
    let _ = workload.kill();
    let _ = workload.wait();
    let (line, ours_vs_truth) = result?;
    println!("{SIDE} {line}");
    // A gate, not only a report: udamon gave 0.99–1.00 in every boot so far (kdamond 0.05–0.93).
    if ours_vs_truth < MIN_AGREEMENT {
        bail!(
            "udamon's hot bytes agree with the workload's only {ours_vs_truth:.2} (< {MIN_AGREEMENT})"
        );
    }
    Ok(())
}
