//! `cargo xtask bench` (metrics part): does serving `/metrics` disturb the sampler? The same
//! monitoring run (a memory-bound target, 20 s) without scrapes and under 50 scrapes per
//! second; late sample ticks of each, measured in one run (root needed).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const DURATION: &str = "20s";
const SCRAPES_PER_SECOND: u64 = 50;

/// `(late, ticks)` of one run, and how many scrapes succeeded during it.
fn run(pid: u32, scrape: bool) -> (u64, u64, u64) {
    let mut udamon = Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["monitor", "--quiet", "--metrics", "0", "--duration", DURATION, &pid.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run udamon");
    let mut stderr = BufReader::new(udamon.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "udamon ended early");
        if let Some(url) = line.trim().strip_prefix("udamon: metrics on http://") {
            break url.trim_end_matches("/metrics").to_owned();
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scraper = scrape.then(|| {
        let (done, scrapes) = (done.clone(), scrapes.clone());
        std::thread::spawn(move || {
            let period = Duration::from_micros(1_000_000 / SCRAPES_PER_SECOND);
            let mut next = Instant::now();
            while !done.load(Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect(&addr) {
                    let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
                    let mut body = String::new();
                    if s.read_to_string(&mut body).is_ok() && body.contains("udamon_regions") {
                        scrapes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    });
    let out = udamon.wait_with_output().expect("udamon");
    done.store(true, Ordering::Relaxed);
    scraper.map(|t| t.join());
    let text = String::from_utf8_lossy(&out.stdout);
    // "N aggregations; udamon CPU X s; late sample ticks L of T"
    let summary = text.lines().last().unwrap_or_default();
    let numbers: Vec<u64> = summary
        .rsplit_once("late sample ticks ")
        .map(|(_, tail)| tail.split(" of ").filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
    assert_eq!(numbers.len(), 2, "no summary line: {text}");
    (numbers[0], numbers[1], scrapes.load(Ordering::Relaxed))
}

fn main() {
    if !damon_user::test_support::privileged("metrics bench") {
        return;
    }
    let mut target = Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["workload", "--memory-loop", "64MiB"])
        .stdout(Stdio::null())
        .spawn()
        .expect("workload");
    std::thread::sleep(Duration::from_millis(500));
    let (quiet_late, quiet_ticks, _) = run(target.id(), false);
    let (late, ticks, scrapes) = run(target.id(), true);
    let _ = target.kill();
    let _ = target.wait();
    let share = |late: u64, ticks: u64| 100.0 * late as f64 / ticks.max(1) as f64;
    println!(
        "late sample ticks, {DURATION} on a memory-bound target: no scrapes {quiet_late}/{quiet_ticks} ({:.2} %); {scrapes} scrapes at {SCRAPES_PER_SECOND}/s {late}/{ticks} ({:.2} %)",
        share(quiet_late, quiet_ticks),
        share(late, ticks)
    );
}
