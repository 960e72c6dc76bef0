//! `cargo xtask bench` (data-plane part): what monitoring real processes costs, through the real
//! `udamon` binary and eBPF data plane. Needs root; prints why and stops otherwise.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use damon_engine::Attrs;
use damon_user::{
    monitor::{Monitor, MonitorConfig},
    vaddr::VaddrOps,
};
use serde_json::Value;

const UDAMON: &str = env!("CARGO_BIN_EXE_udamon");

fn nanos(v: &Value) -> f64 {
    v["secs"].as_f64().unwrap_or(0.0) * 1e9 + v["nanos"].as_f64().unwrap_or(0.0)
}

/// `udamon demo` with `args`; its summary.
fn demo_summary(args: &[&str]) -> Value {
    let out = Command::new(UDAMON)
        .args(["demo", "--json", "--every", "1000000000"])
        .args(args)
        .output()
        .expect("run udamon demo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_owned();
    serde_json::from_str::<Value>(&last).unwrap()["summary"].clone()
}

/// How long each CPU-per-check case runs.
const RUN_SECONDS: u64 = 10;

/// One line for a summary: the sampler thread's CPU per access check (start-up, which parses
/// BTF and has the verifier check the programs, runs before it on the main thread), and where
/// its calls spent it.
fn cpu_line(what: &str, s: &Value) {
    let checks = s["counters"]["checks"].as_f64().unwrap();
    let per = |v: &Value| nanos(v) / checks;
    let (walking, clearing, walk) = (per(&s["walking"]), per(&s["clearing"]), per(&s["walk_time"]));
    let sampler = per(&s["sampler_cpu"]);
    let cleared = s["cleared_pages"].as_f64().unwrap();
    println!(
        "sampler CPU per access check, 1000 regions, 5 ms, {what:<24} {sampler:>5.0} ns   (walk calls {walking:.0}, of which the eBPF walk {walk:.0}; clear calls {clearing:.0}, {:.1} us per cleared page, {:.0} % of checks cleared; the rest {:.0}; {:.0} checks/s; whole process with start-up {:.2} s; late ticks {} of {})",
        nanos(&s["clearing"]) / cleared.max(1.0) / 1e3,
        100.0 * cleared / checks,
        sampler - walking - clearing,
        checks / RUN_SECONDS as f64,
        nanos(&s["process_cpu"]) / 1e9,
        s["late_ticks"],
        s["ticks"],
    );
}

fn rss_at_10000_regions() {
    let mut child = Command::new(UDAMON)
        .args([
            "demo",
            "--duration",
            "8s",
            "--minr",
            "10000",
            "--maxr",
            "10000",
            "--every",
            "1000000000",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("run udamon demo");
    // Past start-up (BTF parsing peaks higher than the steady state), the last reading before 7 s.
    let started = Instant::now();
    let mut rss = None;
    while started.elapsed() < Duration::from_secs(7) && matches!(child.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(250));
        if started.elapsed() > Duration::from_secs(4) {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            rss = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
                .or(rss);
        }
    }
    let exit = child.wait().expect("wait for udamon demo");
    let rss = rss.unwrap_or_else(|| format!("not measured (udamon demo ended early: {exit})"));
    println!("udamon RSS at 10000 regions (udamon demo, 4-7 s in)                 {rss}");
}

fn cpu_per_check() {
    let duration = format!("{RUN_SECONDS}s");
    let busy = demo_summary(&["--duration", &duration, "--minr", "1000", "--maxr", "1000"]);
    cpu_line("busy target (demo)", &busy);
    // A stopped target: its pages are cleared once, while it runs nowhere, then stay idle.
    let (mut child, rx) = memory_loop();
    throughput(&rx, child.id(), 1);
    // SAFETY: stopping our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    let attrs = Attrs { min_nr_regions: 1000, max_nr_regions: 1000, ..Attrs::default() };
    let config = MonitorConfig { attrs, seed: 1, ..Default::default() };
    let (tx, _events) = tokio::sync::mpsc::unbounded_channel();
    let monitor =
        Monitor::start(config, VaddrOps::load().expect("data plane"), &[child.id()], tx, false)
            .expect("monitor");
    thread::sleep(Duration::from_secs(RUN_SECONDS));
    let summary = serde_json::to_value(monitor.join().expect("monitor")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    cpu_line("stopped target", &summary);
}

/// The memory-bound loop's sweeps per second, one value per second, on a channel.
fn memory_loop() -> (Child, mpsc::Receiver<u64>) {
    let mut child = Command::new(UDAMON)
        .args(["workload", "--memory-loop", "256MiB"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the workload");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(n) = line.trim().parse() {
                let _ = tx.send(n);
            }
        }
    });
    (child, rx)
}

/// Nanoseconds process `pid` has run on a CPU (`/proc/PID/schedstat`, first field).
fn on_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A phase of `seconds` reports: sweeps per wall-clock second, and per second on a CPU (which
/// leaves out time the workload was not running at all, and still charges it the interrupts it
/// takes while running).
fn throughput(rx: &mpsc::Receiver<u64>, pid: u32, seconds: usize) -> (f64, f64) {
    let cpu = on_cpu(pid);
    let values: Vec<u64> =
        (0..seconds).filter_map(|_| rx.recv_timeout(Duration::from_secs(5)).ok()).collect();
    let sweeps = values.iter().sum::<u64>() as f64;
    (sweeps / values.len().max(1) as f64, sweeps / ((on_cpu(pid) - cpu) / 1e9).max(1e-9))
}

/// On/off rounds of the overhead measurement: many short paired rounds, so that the median
/// shrugs off bursts of load from the rest of this shared machine.
const ROUNDS: usize = 10;

fn overhead() {
    let (mut child, rx) = memory_loop();
    let pid = child.id();
    throughput(&rx, pid, 2); // warm up
    let config = MonitorConfig { attrs: Attrs::default(), seed: 1, ..Default::default() };
    let (mut wall, mut cpu, mut clears_per_second, mut regions) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    // Off and on alternate, and each "on" is compared with the "off" phases on both sides of it,
    // so drift on this shared machine cancels.
    while rx.try_recv().is_ok() {}
    let mut before = throughput(&rx, pid, 2);
    for _ in 0..ROUNDS {
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let monitor = Monitor::start(
            config.clone(),
            VaddrOps::load().expect("data plane"),
            &[pid],
            tx,
            false,
        )
        .expect("monitor");
        throughput(&rx, pid, 1); // the monitor's start-up is not the steady state
        let on = throughput(&rx, pid, 2);
        let summary = monitor.join().expect("monitor");
        while let Ok(event) = events.try_recv() {
            if let damon_user::monitor::Event::Snapshot(s) = event {
                regions.push(s.nr_regions() as f64);
            }
        }
        clears_per_second.push(summary.ops.cleared_pages as f64 / 3.0);
        let after = throughput(&rx, pid, 2);
        wall.push(on.0 / ((before.0 + after.0) / 2.0));
        cpu.push(on.1 / ((before.1 + after.1) / 2.0));
        before = after;
    }
    let _ = child.kill();
    let _ = child.wait();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        1.0 - v[v.len() / 2]
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (spread_low, spread_high) = (
        1.0 - cpu.iter().copied().fold(f64::MIN, f64::max),
        1.0 - cpu.iter().copied().fold(f64::MAX, f64::min),
    );
    println!(
        "slowdown of a memory-bound loop (256 MiB) monitored at default attrs  {:>5.2} %  per CPU second of the loop (per round {:.1}..{:.1} %); {:.2} % per wall-clock second; median of {ROUNDS} on/off rounds, each between two off phases; {:.0} regions, {:.0} clears/s; {:.0} s",
        100.0 * median(&mut cpu.clone()),
        100.0 * spread_low,
        100.0 * spread_high,
        100.0 * median(&mut wall),
        mean(&regions),
        mean(&clears_per_second),
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    if let Err(why) = damon_user::check::require_monitoring() {
        println!("data-plane bench skipped: {why:#}");
        return;
    }
    println!("data-plane bench (this machine is shared: compare figures measured in one run)");
    cpu_per_check();
    rss_at_10000_regions();
    overhead();
}
