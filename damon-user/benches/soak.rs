//! `cargo xtask bench soak`: a long run at 20,000 regions over 100 real targets (8 MiB each,
//! swept every 200 ms) at the seed's production intervals (sample 50 ms, aggregation 1 s).
//! udamon's RSS and open descriptors are sampled every 10 s and must stay flat; late sample
//! ticks and the regions come from its metrics endpoint. `UDAMON_SOAK_SECONDS` sets the length
//! (600 by default). Needs root.

mod support;

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use support::{Load, build_c, metric};

const UDAMON: &str = env!("CARGO_BIN_EXE_udamon");
const LOAD_SOURCE: &str = include_str!("cost_load.c");
const EVERY: Duration = Duration::from_secs(10);
/// Samples before this are the start-up (BTF parsing, regions growing): not judged.
const WARM_UP: Duration = Duration::from_secs(30);

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn main() {
    if let Err(why) = damon_user::check::require_monitoring() {
        println!("soak bench skipped: {why:#}");
        return;
    }
    let seconds: u64 =
        std::env::var("UDAMON_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let dir = std::env::temp_dir().join(format!("udamon-bench-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let load = match build_c(&dir, "soak_load", LOAD_SOURCE) {
        Ok(load) => load,
        Err(why) => return println!("soak bench skipped: {why}"),
    };
    let loads: Vec<Load> = (0..100).map(|_| Load::start(&load, &["8", "200"])).collect();
    let port =
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let mut udamon = Command::new(UDAMON)
        .args(["monitor", "--quiet", "--metrics", &port.to_string()])
        .args(["--sample", "50ms", "--aggr", "1s", "--minr", "20000", "--maxr", "40000"])
        .args(loads.iter().map(|l| l.pid().to_string()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("udamon monitor");
    let pid = udamon.id();
    println!("soak, {seconds} s at 20,000 regions over 100 targets (sample 50 ms, aggr 1 s):");
    let start = Instant::now();
    let mut judged: Vec<(u64, usize)> = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        thread::sleep(EVERY);
        let (Some(rss), fds) = (status_kib(pid, "VmRSS:"), fds(pid)) else {
            println!("  udamon exited early: {:?}", udamon.try_wait());
            return;
        };
        let late = metric(port, "udamon_sample_ticks_late_total").unwrap_or(f64::NAN);
        let ticks = metric(port, "udamon_sample_ticks_total").unwrap_or(f64::NAN);
        let regions = metric(port, "udamon_regions").unwrap_or(f64::NAN);
        let at = start.elapsed().as_secs();
        println!(
            "  {at:>4} s  RSS {:>6.1} MiB  fds {fds:>3}  regions {regions:>6.0}  late ticks {late:.0} of {ticks:.0}",
            rss as f64 / 1024.0
        );
        if start.elapsed() >= WARM_UP {
            judged.push((rss, fds));
        }
    }
    let _ = udamon.kill();
    let _ = udamon.wait();
    drop(loads);
    let _ = std::fs::remove_dir_all(&dir);
    let (Some(first), Some(last)) = (judged.first(), judged.last()) else { return };
    let peak = judged.iter().map(|j| j.0).max().unwrap_or(0);
    let fds_seen: std::collections::BTreeSet<usize> = judged.iter().map(|j| j.1).collect();
    println!(
        "  after the warm-up: RSS {:.1} → {:.1} MiB (peak {:.1}), fds {:?}",
        first.0 as f64 / 1024.0,
        last.0 as f64 / 1024.0,
        peak as f64 / 1024.0,
        fds_seen
    );
}
