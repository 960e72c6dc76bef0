//! Kernel DAMON through its sysfs interface, for the guest programs (never run on the host,
//! whose kdamond is not ours): writing a context's setup, and reading a `stat` scheme's tried
//! regions (the kernel's own view of its regions).

use std::{
    fs,
    io::BufRead as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use damon_user::workload::Layout;

pub const ADMIN: &str = "/sys/kernel/mm/damon/admin";

pub fn write(path: &str, value: &str) -> Result<()> {
    let path = format!("{ADMIN}/{path}");
    fs::write(&path, value).with_context(|| format!("cannot write {value} to {path}"))
}

pub fn read(path: &str) -> Result<String> {
    let path = format!("{ADMIN}/{path}");
    Ok(fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?.trim().to_owned())
}

/// Sets kdamond `k`'s one context up: `ops`, intervals in µs, region bounds, a target pid for
/// vaddr, and a `stat` scheme whose pattern takes every region, so all are "tried" ones.
pub fn setup(k: u32, ops: &str, sample_us: u64, aggr_us: u64, pid: Option<u32>) -> Result<()> {
    write(&format!("kdamonds/{k}/contexts/nr_contexts"), "1")?;
    let ctx = format!("kdamonds/{k}/contexts/0");
    write(&format!("{ctx}/operations"), ops)?;
    write(&format!("{ctx}/monitoring_attrs/intervals/sample_us"), &sample_us.to_string())?;
    write(&format!("{ctx}/monitoring_attrs/intervals/aggr_us"), &aggr_us.to_string())?;
    write(&format!("{ctx}/monitoring_attrs/intervals/update_us"), "1000000")?;
    write(&format!("{ctx}/monitoring_attrs/nr_regions/min"), "10")?;
    write(&format!("{ctx}/monitoring_attrs/nr_regions/max"), "1000")?;
    // paddr has one target too, without a pid (its region: the largest System RAM block).
    write(&format!("{ctx}/targets/nr_targets"), "1")?;
    match pid {
        Some(pid) => write(&format!("{ctx}/targets/0/pid_target"), &pid.to_string())?,
        // Sysfs gives paddr no default region (damo writes one): the largest System RAM block.
        None => {
            let (start, end) = biggest_system_ram()?;
            let regions = format!("{ctx}/targets/0/regions");
            write(&format!("{regions}/nr_regions"), "1")?;
            write(&format!("{regions}/0/start"), &start.to_string())?;
            write(&format!("{regions}/0/end"), &end.to_string())?;
        }
    }
    write(&format!("{ctx}/schemes/nr_schemes"), "1")?;
    write(&format!("{ctx}/schemes/0/action"), "stat")?;
    let pattern = format!("{ctx}/schemes/0/access_pattern");
    write(&format!("{pattern}/sz/max"), &u64::MAX.to_string())?;
    write(&format!("{pattern}/nr_accesses/max"), &u32::MAX.to_string())?;
    write(&format!("{pattern}/age/max"), &u32::MAX.to_string())
}

/// The largest top-level `System RAM` range of /proc/iomem, end exclusive.
fn biggest_system_ram() -> Result<(u64, u64)> {
    let iomem = fs::read_to_string("/proc/iomem")?;
    iomem
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(": System RAM"))
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()? + 1))
        })
        .max_by_key(|(start, end)| end - start)
        .context("no System RAM in /proc/iomem")
}

/// The regions kdamond `k` holds now, `(start, end, nr_accesses)` in address order, through
/// its `stat` scheme's tried regions. The request returns once the regions are in on 6.12 for
/// quick aggregations and on 7.x (damos_walk); a slow 6.12 kdamond fills them at its next scheme
/// application, so an empty answer is read again, for up to 10 s.
pub fn tried_regions(k: u32) -> Result<Vec<(u64, u64, u64)>> {
    write(&format!("kdamonds/{k}/state"), "update_schemes_tried_regions")?;
    let dir = format!("{ADMIN}/kdamonds/{k}/contexts/0/schemes/0/tried_regions");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let regions = read_tried(&dir)?;
        if !regions.is_empty() || Instant::now() > deadline {
            return Ok(regions);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_tried(dir: &str) -> Result<Vec<(u64, u64, u64)>> {
    let mut regions = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
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

/// The demo's workload, started through `udamon workload`, and the layout it prints first.
pub fn spawn_workload(udamon: &str) -> Result<(Child, Layout)> {
    let mut workload = Command::new(udamon)
        .args(["workload", "--phase-change", "1h"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(workload.stdout.take().context("no pipe")?).read_line(&mut line)?;
    Ok((workload, serde_json::from_str(&line)?))
}
