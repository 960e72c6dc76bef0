//! `cargo xtask bench` (reclaim part): what udamon's clears cost the kernel's reclaim.
//! `MADV_COLD` deactivates each page it clears, so a page touched before a sample and idle since
//! is reclaimed sooner than without udamon. A workload whose working set is a little larger than
//! its cgroup's memory limit shows that as refaults, major faults and lost throughput; it runs
//! with and without `udamon monitor` (default attributes), alternating, in one run. Anonymous
//! memory swaps to a zram device the bench sets up and tears down. Needs root.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use support::{Load, build_c, remove_cgroup};

const UDAMON: &str = env!("CARGO_BIN_EXE_udamon");
const LOAD_SOURCE: &str = include_str!("reclaim_load.c");
/// The working set, and the cgroup limit it exceeds by a quarter.
const WORKING_SET_MIB: u64 = 320;
const LIMIT_MIB: u64 = 256;
const WARM_UP: Duration = Duration::from_secs(8);
const MEASURED_SECONDS: usize = 15;
const ROUNDS: usize = 2;
const STATS: [&str; 3] = ["workingset_refault_anon", "workingset_refault_file", "pgmajfault"];

/// A memory cgroup of our own (v2 if its memory controller is there, else v1), removed on drop.
struct MemCgroup(PathBuf);

impl MemCgroup {
    fn create(limit: u64) -> Result<Self, String> {
        let v2 = damon_user::sys::cgroup::root().ok().filter(|root| {
            std::fs::read_to_string(root.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        let (dir, limit_file) = match v2 {
            Some(root) => (root.join("udamon-bench-reclaim"), "memory.max"),
            None => (
                PathBuf::from("/sys/fs/cgroup/memory/udamon-bench-reclaim"),
                "memory.limit_in_bytes",
            ),
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cgroup = Self(dir);
        std::fs::write(cgroup.0.join(limit_file), limit.to_string())
            .map_err(|e| format!("cannot set {limit_file}: {e}"))?;
        Ok(cgroup)
    }

    fn procs(&self) -> PathBuf {
        self.0.join("cgroup.procs")
    }

    fn stats(&self) -> [u64; 3] {
        let text = std::fs::read_to_string(self.0.join("memory.stat")).unwrap_or_default();
        STATS.map(|key| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0)
        })
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // The loads were killed and reaped before.
        remove_cgroup(&self.0);
    }
}

/// Swap on the (unused) zram device, switched off and reset on drop.
struct ZramSwap;

const ZRAM: &str = "/dev/zram0";

impl ZramSwap {
    fn setup() -> Result<Self, String> {
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        if swaps.lines().count() > 1 {
            return Err("swap is already on: the figures would not be ours".into());
        }
        let size = std::fs::read_to_string("/sys/block/zram0/disksize")
            .map_err(|_| "no zram0 device".to_string())?;
        if size.trim() != "0" {
            return Err("zram0 is in use".into());
        }
        std::fs::write("/sys/block/zram0/disksize", "1G")
            .map_err(|e| format!("cannot size zram0: {e}"))?;
        let swap = Self;
        for (tool, args) in [("mkswap", vec![ZRAM]), ("swapon", vec![ZRAM])] {
            let ok = Command::new(tool).args(&args).stdout(Stdio::null()).status();
            if !ok.is_ok_and(|s| s.success()) {
                return Err(format!("{tool} {ZRAM} failed"));
            }
        }
        Ok(swap)
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(ZRAM).status();
        let _ = std::fs::write("/sys/block/zram0/reset", "1");
    }
}

/// What one phase measured: accesses per second and the cgroup's counters per second.
#[derive(Default, Clone, Copy)]
struct Phase {
    rate: f64,
    stats: [f64; 3],
    /// PSI "some avg10" of memory at the phase's end, in percent.
    pressure: f64,
}

/// One phase: a fresh load, monitored as `monitor` says (None: not at all).
fn phase(binary: &Path, cgroup: &MemCgroup, args: &[&str], monitor: Option<&[&str]>) -> Phase {
    let procs = cgroup.procs();
    let procs = procs.to_str().unwrap();
    let mut load_args = vec![args[0], args[1], procs];
    load_args.extend(&args[2..]);
    let load = Load::start(binary, &load_args);
    let pid = load.pid().to_string();
    let mut udamon = monitor.map(|extra| {
        Command::new(UDAMON)
            .args(["monitor", "--quiet"])
            .args(extra)
            .arg(&pid)
            .stdout(Stdio::null())
            .spawn()
            .expect("udamon monitor")
    });
    thread::sleep(WARM_UP);
    while load.counts.try_recv().is_ok() {}
    let before = cgroup.stats();
    let counts: Vec<u64> = (0..MEASURED_SECONDS)
        .filter_map(|_| load.counts.recv_timeout(Duration::from_secs(5)).ok())
        .collect();
    let after = cgroup.stats();
    let pressure = damon_user::sys::pressure::source(load.pid())
        .and_then(|source| damon_user::sys::pressure::some_avg10(&source))
        .unwrap_or(f64::NAN);
    if let Some(udamon) = &mut udamon {
        let _ = udamon.kill();
        let _ = udamon.wait();
    }
    let seconds = counts.len().max(1) as f64;
    Phase {
        rate: counts.iter().sum::<u64>() as f64 / seconds,
        stats: std::array::from_fn(|i| (after[i] - before[i]) as f64 / seconds),
        pressure,
    }
}

/// Every mode once per round, in the opposite order the next round, so drift cancels; each
/// mode's figures averaged over the rounds. Refaults and major faults are counted per access:
/// how often reclaim's choice was wrong, whatever the speed of the phase.
fn compare(name: &str, binary: &Path, cgroup: &MemCgroup, args: &[&str]) {
    let modes: [(&str, Option<&[&str]>); 4] = [
        ("without udamon", None),
        ("udamon (defaults)", Some(&[])),
        ("  --reclaim-backoff off", Some(&["--reclaim-backoff", "off"])),
        ("  and --sampling every", Some(&["--reclaim-backoff", "off", "--sampling", "every"])),
    ];
    let mut sums = [Phase::default(); 4];
    for round in 0..ROUNDS {
        let order: Vec<usize> = match round % 2 {
            0 => (0..modes.len()).collect(),
            _ => (0..modes.len()).rev().collect(),
        };
        for i in order {
            let p = phase(binary, cgroup, args, modes[i].1);
            let sum = &mut sums[i];
            sum.rate += p.rate / ROUNDS as f64;
            sum.pressure += p.pressure / ROUNDS as f64;
            for (s, v) in sum.stats.iter_mut().zip(p.stats) {
                *s += v / ROUNDS as f64;
            }
        }
    }
    println!(
        "reclaim, {name}: {WORKING_SET_MIB} MiB working set (90 % of accesses to 30 %) in a cgroup limited to {LIMIT_MIB} MiB; mean of {ROUNDS} phases of {MEASURED_SECONDS} s per mode"
    );
    let per_1000 = |p: &Phase, i: usize| 1000.0 * p.stats[i] / p.rate.max(1.0);
    let off = sums[0];
    for ((what, _), p) in modes.iter().zip(&sums) {
        let ratio = |v: f64, base: f64| match base > 0.0 {
            true => format!("{:.2}×", v / base),
            false => "-".into(),
        };
        let refaults = per_1000(p, 0) + per_1000(p, 1);
        let off_refaults = per_1000(&off, 0) + per_1000(&off, 1);
        println!(
            "  {what:<26} accesses/s {:>9.0} ({})   refaults per 1000 accesses {refaults:>7.2} ({})   major faults per 1000 {:>7.2} ({})   memory pressure {:.0} %",
            p.rate,
            ratio(p.rate, off.rate),
            ratio(refaults, off_refaults),
            per_1000(p, 2),
            ratio(per_1000(p, 2), per_1000(&off, 2)),
            p.pressure,
        );
    }
}

fn main() {
    if let Err(why) = damon_user::check::require_monitoring() {
        println!("reclaim bench skipped: {why:#}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("udamon-bench-reclaim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let result = (|| -> Result<(), String> {
        let binary = build_c(&dir, "reclaim_load", LOAD_SOURCE)?;
        let cgroup = MemCgroup::create(LIMIT_MIB << 20)?;
        let mib = WORKING_SET_MIB.to_string();
        // The data file on a disk-backed file system (not tmpfs, whose pages swap).
        let data = PathBuf::from("/var/tmp/udamon-bench-reclaim.data");
        let file_args = ["file", mib.as_str(), data.to_str().unwrap()];
        compare("file-backed (ext4 page cache)", &binary, &cgroup, &file_args);
        let _ = std::fs::remove_file(&data);
        match ZramSwap::setup() {
            Ok(_swap) => compare("anonymous over zram swap", &binary, &cgroup, &["anon", &mib]),
            Err(why) => println!("reclaim, anonymous: skipped ({why})"),
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(why) = result {
        println!("reclaim bench skipped: {why}");
    }
}
