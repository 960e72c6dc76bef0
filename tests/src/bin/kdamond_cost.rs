//! What observing the kernel's DAMON costs the kdamond, in a guest whose kernel has DAMON: a
//! paddr kdamond at 1,000 and at 10,000 regions (5 ms samples, 100 ms aggregations), its CPU over
//! equal phases with nothing attached, with `udamon kdamond --quiet` (sums in the kernel), with
//! `--record` (every region streamed), and with the tracefs event enabled and read as text (what
//! perf and trace-cmd build on). Run by `cargo xtask bench`; prints one `UDAMON-VM-KDAMOND-COST:`
//! line per size. Usage: kdamond_cost UDAMON SECONDS

use std::{
    fs,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tests::damon_admin::{self, read, write};

const LINE: &str = "UDAMON-VM-KDAMOND-COST:";
const TRACING: &str = "/sys/kernel/tracing";

/// CPU time of a thread so far, from schedstat.
fn cpu_of(pid: u32) -> Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    Ok(Duration::from_nanos(text.split_whitespace().next().context("empty schedstat")?.parse()?))
}

/// The kdamond's and the observer's CPU over `seconds` while `observer` (if any) runs.
fn phase(kdamond: u32, seconds: u64, observer: Option<Child>) -> Result<(Duration, Duration)> {
    // Let the observer attach first.
    std::thread::sleep(Duration::from_secs(2));
    let (k0, o0) = (cpu_of(kdamond)?, observer.as_ref().map(|o| cpu_of(o.id())).transpose()?);
    std::thread::sleep(Duration::from_secs(seconds));
    let (k1, o1) = (cpu_of(kdamond)?, observer.as_ref().map(|o| cpu_of(o.id())).transpose()?);
    if let Some(mut o) = observer {
        let _ = o.kill();
        let _ = o.wait();
    }
    Ok((k1 - k0, o1.zip(o0).map_or(Duration::ZERO, |(a, b)| a - b)))
}

fn observer(udamon: &str, args: &[&str]) -> Result<Child> {
    Ok(Command::new(udamon)
        .args(["kdamond", "--quiet"])
        .args(args)
        .stdout(Stdio::null())
        .spawn()?)
}

fn measure(udamon: &str, regions: u64, seconds: u64) -> Result<String> {
    write("kdamonds/nr_kdamonds", "1")?;
    damon_admin::setup(0, "paddr", 5000, 100_000, None)?;
    let attrs = "kdamonds/0/contexts/0/monitoring_attrs/nr_regions";
    write(&format!("{attrs}/max"), &regions.to_string())?;
    write(&format!("{attrs}/min"), &regions.to_string())?;
    write("kdamonds/0/state", "on")?;
    let kdamond: u32 = read("kdamonds/0/pid")?.parse()?;
    let result = (|| -> Result<String> {
        let (base, _) = phase(kdamond, seconds, None)?;
        let (summed, summed_own) = phase(kdamond, seconds, Some(observer(udamon, &[])?))?;
        let file = "/tmp/kdamond-cost.data";
        let (recording, recording_own) =
            phase(kdamond, seconds, Some(observer(udamon, &["--record", file])?))?;
        let _ = fs::remove_file(file);
        // The text stream: the event enabled, trace_pipe read to nowhere.
        let enable = format!("{TRACING}/events/damon/damon_aggregated/enable");
        fs::write(&enable, "1")?;
        let reader = Command::new("/bin/busybox")
            .args(["cat", &format!("{TRACING}/trace_pipe")])
            .stdout(Stdio::null())
            .spawn()?;
        let traced = phase(kdamond, seconds, Some(reader));
        fs::write(&enable, "0")?;
        let (traced, traced_own) = traced?;
        let nr = damon_admin::tried_regions(0).map(|r| r.len()).unwrap_or(0);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let vs = |d: Duration| ms(d) / ms(base).max(1e-9);
        Ok(format!(
            "max_nr_regions={regions} nr_regions_now={nr} seconds={seconds} kdamond_ms: alone={:.0} summed={:.0} ({:.2}x) recording={:.0} ({:.2}x) tracefs={:.0} ({:.2}x); reader_ms: udamon={:.0} udamon_recording={:.0} tracefs_cat={:.0}",
            ms(base),
            ms(summed),
            vs(summed),
            ms(recording),
            vs(recording),
            ms(traced),
            vs(traced),
            ms(summed_own),
            ms(recording_own),
            ms(traced_own),
        ))
    })();
    let _ = write("kdamonds/0/state", "off");
    result
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, udamon, seconds] = &args[..] else { bail!("usage: kdamond_cost UDAMON SECONDS") };
    let seconds: u64 = seconds.parse()?;
    for regions in [1000, 10_000] {
        println!("{LINE} {}", measure(udamon, regions, seconds)?);
    }
    Ok(())
}
