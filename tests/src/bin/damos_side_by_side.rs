//! Kernel DAMOS (a vaddr `pageout` scheme through sysfs) and udamon's `pageout` scheme on the
//! same workload, one after the other with the same attributes and pattern: how much of the
//! workload's cold memory each pages out and how soon, how much of its hot memory stays, how
//! fast its hot loop runs meanwhile, and the CPU each takes. Run by `cargo xtask vm-test` in
//! guests whose kernel has DAMON, over a zram swap set up here (the guests have no disk); prints
//! one `UDAMON-VM-DAMOS:` line, and fails when udamon leaves more than a fifth of the cold
//! memory in or pages out hot memory that the kernel's scheme keeps.
//! Usage: damos_side_by_side UDAMON SECONDS

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::FileExt as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tests::{
    PAGE,
    damon_admin::{self, write},
};

const SAMPLE_US: u64 = 5000;
const AGGR_US: u64 = 100_000;
/// Memory idle this long is paged out (`--damos_age`; the kernel's age counts aggregations).
const MIN_AGE_S: u64 = 1;
const HOT_MIB: usize = 4;
const COLD_MIB: usize = 32;
/// The least share of the cold memory udamon must page out by the end.
const MIN_COLD_OUT: f64 = 0.8;

/// A zram swap device for this run, removed (and swap turned off) on drop.
struct Swap {
    device: String,
    added: Option<String>,
}

impl Swap {
    fn on() -> Result<Self> {
        let control = "/sys/class/zram-control/hot_add";
        let (index, added) = match fs::read_to_string(control) {
            Ok(index) => (index.trim().to_owned(), Some(index.trim().to_owned())),
            Err(_) if fs::metadata("/sys/block/zram0").is_ok() => ("0".to_owned(), None),
            Err(e) => bail!("no zram here (the zram module not loaded?): {e}"),
        };
        let swap = Self { device: format!("/dev/zram{index}"), added };
        fs::write(format!("/sys/block/zram{index}/disksize"), "256M")?;
        let made = Command::new("mkswap").arg(&swap.device).stdout(Stdio::null()).status()?;
        if !made.success() {
            bail!("mkswap {} failed", swap.device);
        }
        let path = std::ffi::CString::new(swap.device.clone())?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::swapon(path.as_ptr(), 0) } != 0 {
            bail!("swapon {}: {}", swap.device, std::io::Error::last_os_error());
        }
        Ok(swap)
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        if let Ok(path) = std::ffi::CString::new(self.device.clone()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::swapoff(path.as_ptr()) };
        }
        let index = self.device.trim_start_matches("/dev/zram");
        let _ = fs::write(format!("/sys/block/zram{index}/reset"), "1");
        if let Some(added) = &self.added {
            let _ = fs::write("/sys/class/zram-control/hot_remove", added);
        }
    }
}

/// A forked child with a hot and a cold anonymous area of small pages: it writes both once,
/// then reads one byte of every hot page in a loop, counting its sweeps in a shared page.
struct Workload {
    pid: u32,
    hot: (u64, u64),
    cold: (u64, u64),
    shared: *const AtomicU64,
}

fn map(len: usize, flags: i32) -> *mut u8 {
    tests::map(len, flags) as *mut u8
}

impl Workload {
    fn spawn() -> Self {
        let (hot_len, cold_len) = (HOT_MIB << 20, COLD_MIB << 20);
        let (hot, cold) = (map(hot_len, libc::MAP_PRIVATE), map(cold_len, libc::MAP_PRIVATE));
        for (p, len) in [(hot, hot_len), (cold, cold_len)] {
            // Small pages, so both tools act on the same units. SAFETY: our own mapping.
            unsafe { libc::madvise(p.cast(), len, libc::MADV_NOHUGEPAGE) };
        }
        // [0]: ready, [1]: sweeps.
        let shared = map(PAGE, libc::MAP_SHARED) as *const AtomicU64;
        // SAFETY: the child touches only memory mapped before the fork, then loops forever
        // (killed by the parent): fork-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: the child's own mappings and the shared page.
            unsafe {
                std::ptr::write_bytes(hot, 1, hot_len);
                std::ptr::write_bytes(cold, 1, cold_len);
                (*shared).store(1, Ordering::Release);
                loop {
                    let mut sum = 0u8;
                    for page in (0..hot_len).step_by(PAGE) {
                        sum = sum.wrapping_add(std::ptr::read_volatile(hot.add(page)));
                    }
                    std::hint::black_box(sum);
                    (*shared.add(1)).fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let work = Self {
            pid: pid as u32,
            hot: (hot as u64, hot as u64 + hot_len as u64),
            cold: (cold as u64, cold as u64 + cold_len as u64),
            shared,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // SAFETY: the shared page lives as long as `work`.
        while unsafe { &*work.shared }.load(Ordering::Acquire) == 0 {
            assert!(Instant::now() < deadline, "the workload never got ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        work
    }

    fn sweeps(&self) -> u64 {
        // SAFETY: the shared page lives as long as `self`.
        unsafe { &*self.shared.add(1) }.load(Ordering::Relaxed)
    }

    /// The share of `(start, end)`'s pages in memory, from pagemap's present bit.
    fn resident(&self, (start, end): (u64, u64)) -> Result<f64> {
        let pagemap = fs::File::open(format!("/proc/{}/pagemap", self.pid))?;
        let pages = ((end - start) / PAGE as u64) as usize;
        let mut bytes = vec![0u8; pages * 8];
        pagemap.read_exact_at(&mut bytes, start / PAGE as u64 * 8)?;
        let present = bytes
            .chunks_exact(8)
            .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) & (1 << 63) != 0)
            .count();
        Ok(present as f64 / pages as f64)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        tests::kill_and_reap(self.pid);
    }
}

/// What one tool's run did to a fresh workload.
struct Outcome {
    /// The cold memory's share paged out at the end, and when four fifths of it first were.
    cold_out: f64,
    four_fifths_at: Option<Duration>,
    /// The least share of the hot memory in memory over the run.
    hot_kept: f64,
    /// Hot sweeps per second during the run's second half over before the run.
    loop_ratio: f64,
    cpu: Duration,
}

impl Outcome {
    fn line(&self) -> String {
        let at =
            self.four_fifths_at.map_or("never".to_owned(), |t| format!("{:.1}s", t.as_secs_f64()));
        format!(
            "cold_out={:.0}% (80% at {at}) hot_kept={:.0}% loop={:.2} cpu_ms={}",
            self.cold_out * 100.0,
            self.hot_kept * 100.0,
            self.loop_ratio,
            self.cpu.as_millis()
        )
    }
}

/// A tool acting on a workload: started by `start` (given its pid), watched for `seconds`,
/// then `stop` returns the CPU it took.
fn watch(
    seconds: u64,
    start: impl FnOnce(u32) -> Result<()>,
    stop: impl FnOnce() -> Result<Duration>,
) -> Result<Outcome> {
    let work = Workload::spawn();
    // The loop's own pace first.
    let (before, from) = (work.sweeps(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let alone = (work.sweeps() - before) as f64 / from.elapsed().as_secs_f64();
    start(work.pid)?;
    let started = Instant::now();
    let (mut four_fifths_at, mut hot_kept) = (None, 1.0f64);
    // The loop's pace over the run's second half: udamon's start-up (seconds of eBPF
    // verification in an emulated guest) is over, and the tools' steady work is left.
    let mut second_half = None;
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(250));
        hot_kept = hot_kept.min(work.resident(work.hot)?);
        if four_fifths_at.is_none() && work.resident(work.cold)? <= 0.2 {
            four_fifths_at = Some(started.elapsed());
        }
        if second_half.is_none() && started.elapsed() >= Duration::from_secs(seconds) / 2 {
            second_half = Some((work.sweeps(), Instant::now()));
        }
    }
    let (before, from) = second_half.context("a run shorter than a sleep")?;
    let during = (work.sweeps() - before) as f64 / from.elapsed().as_secs_f64();
    let cold_out = 1.0 - work.resident(work.cold)?;
    let cpu = stop()?;
    Ok(Outcome { cold_out, four_fifths_at, hot_kept, loop_ratio: during / alone.max(1e-9), cpu })
}

/// CPU time of a task so far, from schedstat (nanoseconds on a CPU).
fn cpu_of(pid: &str) -> Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let ns: u64 = text.split_whitespace().next().context("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}

fn kernel_scheme(seconds: u64) -> Result<Outcome> {
    let kdamond = std::cell::RefCell::new((String::new(), Duration::ZERO));
    watch(
        seconds,
        |pid| {
            write("kdamonds/nr_kdamonds", "1")?;
            // The `stat` scheme setup writes, made a pageout of what stayed idle MIN_AGE_S.
            damon_admin::setup(0, "vaddr", SAMPLE_US, AGGR_US, Some(pid))?;
            let scheme = "kdamonds/0/contexts/0/schemes/0";
            write(&format!("{scheme}/action"), "pageout")?;
            write(&format!("{scheme}/access_pattern/nr_accesses/max"), "0")?;
            let min_age = MIN_AGE_S * 1_000_000 / AGGR_US;
            write(&format!("{scheme}/access_pattern/age/min"), &min_age.to_string())?;
            write("kdamonds/0/state", "on")?;
            let pid = damon_admin::read("kdamonds/0/pid")?;
            let cpu = cpu_of(&pid)?;
            *kdamond.borrow_mut() = (pid, cpu);
            Ok(())
        },
        || {
            let (pid, before) = kdamond.borrow().clone();
            let cpu = cpu_of(&pid)? - before;
            write("kdamonds/0/state", "off")?;
            Ok(cpu)
        },
    )
}

/// udamon's run, and its start-up (until its first snapshot: loading and verifying its eBPF
/// program, which an emulated guest makes slow), which the kernel's scheme does not have.
fn udamon_scheme(udamon: &str, seconds: u64) -> Result<(Outcome, Duration)> {
    type Lines = std::thread::JoinHandle<(Option<Instant>, Vec<String>)>;
    let run = std::cell::RefCell::new(None::<(std::process::Child, Lines, Instant)>);
    let start_up = std::cell::Cell::new(Duration::ZERO);
    let outcome = watch(
        seconds,
        |pid| {
            let started = Instant::now();
            let mut child = Command::new(udamon)
                .args(["monitor", "--json", &pid.to_string()])
                .args(["--sample", &format!("{SAMPLE_US}us"), "--aggr", &format!("{AGGR_US}us")])
                .args(["--damos_action", "pageout", "--damos_access_rate", "0", "0"])
                .args(["--damos_age", &format!("{MIN_AGE_S}s"), "max"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot run udamon")?;
            let stdout = BufReader::new(child.stdout.take().context("no pipe")?);
            let lines = std::thread::spawn(move || {
                let (mut first, mut lines) = (None, Vec::new());
                for line in stdout.lines().map_while(Result::ok) {
                    first.get_or_insert_with(Instant::now);
                    lines.push(line);
                }
                (first, lines)
            });
            *run.borrow_mut() = Some((child, lines, started));
            Ok(())
        },
        || {
            let (child, lines, started) =
                run.borrow_mut().take().context("udamon never started")?;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!("udamon monitor failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let (first, lines) =
                lines.join().map_err(|_| anyhow::anyhow!("the snapshot reader panicked"))?;
            start_up.set(first.map_or(Duration::ZERO, |t| t - started));
            // Its CPU share per aggregation, start-up (the first snapshot) left out as for the
            // kdamond, which was started before its CPU was first read.
            let cpu_s: f64 = lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|l| l["udamon_cpu_percent"].as_f64())
                .map(|percent| percent / 100.0 * AGGR_US as f64 / 1e6)
                .sum();
            Ok(Duration::from_secs_f64(cpu_s))
        },
    )?;
    Ok((outcome, start_up.get()))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, udamon, seconds] = &args[..] else { bail!("usage: damos_side_by_side UDAMON SECONDS") };
    let seconds: u64 = seconds.parse()?;
    let _swap = Swap::on()?;
    let kernel = kernel_scheme(seconds)?;
    let (ours, start_up) = udamon_scheme(udamon, seconds)?;
    println!(
        "UDAMON-VM-DAMOS: kernel {} | udamon {} start_up={:.1}s",
        kernel.line(),
        ours.line(),
        start_up.as_secs_f64()
    );
    if ours.cold_out < MIN_COLD_OUT {
        bail!("udamon paged out {:.0} % of the cold memory (< 80 %)", ours.cold_out * 100.0);
    }
    // Hot memory paged out is harm; TCG's one CPU can make a hot loop look idle for a while,
    // which the kernel's scheme then sees too, so udamon is held to what the kernel keeps.
    if ours.hot_kept < kernel.hot_kept.min(0.9) {
        bail!(
            "udamon paged out hot memory: {:.0} % kept (kernel: {:.0} %)",
            ours.hot_kept * 100.0,
            kernel.hot_kept * 100.0
        );
    }
    Ok(())
}
