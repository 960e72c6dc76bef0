//! DAMOS schemes on real workloads (root; under CI=true these must run): a process with hot
//! and cold anonymous and file-backed memory, the anonymous part over swap on zram (set up and
//! torn down here). Pageout reclaims the cold memory and spares the hot, quotas hold, collapse
//! makes huge pages of 4 KiB-backed hot memory, and bad schemes are refused with one line.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::FileExt as _,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

/// Hot and cold areas of anonymous memory and of a file (its first `hot` bytes hot), each 2 MiB
/// aligned; prints their bounds, then reads every hot page in a loop, printing its passes every
/// 100 ms. With a fourth argument, `huge`, the cold anonymous area is advised MADV_HUGEPAGE.
const HOT_COLD: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define HUGE (2UL << 20)

static char *area(size_t len, int fd) {
    char *p = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *a = (char *)(((unsigned long)p + HUGE - 1) & ~(HUGE - 1));
    if (fd >= 0) a = mmap(a, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    if (a == MAP_FAILED) exit(1);
    return a;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    size_t hot = strtoul(argv[1], 0, 10) << 20, cold = strtoul(argv[2], 0, 10) << 20;
    int fd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, hot + cold)) return 1;
    char *ah = area(hot, -1), *ac = area(cold, -1), *f = area(hot + cold, fd);
    if (argc > 4) madvise(ac, cold, MADV_HUGEPAGE);
    memset(ah, 1, hot);
    memset(ac, 1, cold);
    memset(f, 1, hot + cold);
    fsync(fd);
    printf("%lu %lu %lu %lu %lu %lu %lu %lu\n", (unsigned long)ah, (unsigned long)(ah + hot),
           (unsigned long)ac, (unsigned long)(ac + cold), (unsigned long)f,
           (unsigned long)(f + hot), (unsigned long)(f + hot), (unsigned long)(f + hot + cold));
    fflush(stdout);
    volatile unsigned long sum = 0;
    unsigned long passes = 0;
    double last = now();
    for (;;) {
        for (size_t i = 0; i < hot; i += 4096) sum += ah[i] + f[i];
        passes++;
        if (now() - last >= 0.1) {
            last = now();
            printf("%lu\n", passes);
            fflush(stdout);
        }
    }
}
"#;

/// Pageout of memory idle for a second: most tests' scheme.
const IDLE_PAGEOUT: [&str; 8] =
    ["--damos_action", "pageout", "--damos_access_rate", "0", "0", "--damos_age", "1s", "max"];

/// One at a time: the tests share the swap device and the THP setting.
fn begin(name: &str) -> Option<MutexGuard<'static, ()>> {
    static SERIAL: Mutex<()> = Mutex::new(());
    damon_user::test_support::privileged(name)
        .then(|| SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// Swap on a zram device of its own for the length of a test (a new one from zram-control, so
/// a zram0 the system uses is left alone): swapped off and removed when dropped, on a failure
/// too.
struct ZramSwap(String);

impl ZramSwap {
    fn on() -> Self {
        let id = std::fs::read_to_string("/sys/class/zram-control/hot_add")
            .expect("zram with zram-control (modprobe zram)");
        let swap = Self(id.trim().to_owned());
        std::fs::write(format!("/sys/block/zram{}/disksize", swap.0), "512M").unwrap();
        let device = swap.device();
        for tool in ["mkswap", "swapon"] {
            let out = Command::new(tool).arg(&device).output().unwrap();
            assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        }
        swap
    }

    fn device(&self) -> String {
        format!("/dev/zram{}", self.0)
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(self.device()).output();
        let _ = std::fs::write(format!("/sys/block/zram{}/reset", self.0), "1");
        let _ = std::fs::write("/sys/class/zram-control/hot_remove", &self.0);
    }
}

/// A cgroup made for a test, removed when dropped (after the processes in it: declare it
/// before them).
struct Group(std::path::PathBuf);

impl Group {
    fn new(name: &str) -> Self {
        let root = damon_user::sys::cgroup::root().expect("a cgroup v2 hierarchy");
        let dir = root.join(format!("udamon-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        Self(dir)
    }
}

impl Group {
    /// A group whose memory is limited to `limit` bytes: cgroup v2's `memory.max` where the v2
    /// hierarchy controls memory, else cgroup v1's `memory.limit_in_bytes` (a hybrid system).
    fn limited(name: &str, limit: u64) -> Self {
        let v2 = Self::new(name);
        if std::fs::write(v2.0.join("memory.max"), limit.to_string()).is_ok() {
            return v2;
        }
        drop(v2);
        let dir = std::path::Path::new("/sys/fs/cgroup/memory")
            .join(format!("udamon-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("a memory controller, v2 or v1");
        let v1 = Self(dir);
        std::fs::write(v1.0.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        v1
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A sysfs setting changed for a test, restored when dropped.
struct Knob(&'static str, String);

impl Knob {
    fn set(path: &'static str, value: &str) -> Self {
        let text = std::fs::read_to_string(path).unwrap();
        let before = match (text.find('['), text.find(']')) {
            (Some(open), Some(close)) => text[open + 1..close].to_owned(),
            _ => text.trim().to_owned(),
        };
        std::fs::write(path, value).unwrap();
        Self(path, before)
    }
}

impl Drop for Knob {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// The workload: its areas (anon hot, anon cold, file hot, file cold) and its hot passes as
/// (when, total).
struct Workload {
    child: Child,
    areas: [(u64, u64); 4],
    passes: Arc<Mutex<Vec<(Instant, u64)>>>,
    file: std::path::PathBuf,
}

impl Workload {
    fn start(hot_mib: u64, cold_mib: u64) -> Self {
        Self::start_in(hot_mib, cold_mib, None)
    }

    /// Started in cgroup `group` (a directory of the hierarchy), so that its memory is charged
    /// there from the first page.
    fn start_in(hot_mib: u64, cold_mib: u64, group: Option<&std::path::Path>) -> Self {
        Self::spawn(hot_mib, cold_mib, group, false)
    }

    fn spawn(hot_mib: u64, cold_mib: u64, group: Option<&std::path::Path>, huge: bool) -> Self {
        use std::os::unix::process::CommandExt as _;
        let binary = damon_user::test_support::build_c("hot_cold", HOT_COLD);
        static FILES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!("udamon-schemes-{}-{n}", std::process::id()));
        let mut command = Command::new(binary);
        command.args([hot_mib.to_string(), cold_mib.to_string()]).arg(&file);
        if huge {
            command.arg("huge");
        }
        if let Some(group) = group {
            let procs = std::ffi::CString::new(
                group.join("cgroup.procs").into_os_string().into_encoded_bytes(),
            )
            .unwrap();
            // SAFETY: between fork and exec only open, write and close, on memory made before.
            unsafe {
                command.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    let moved = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                    libc::close(fd);
                    if moved { Ok(()) } else { Err(std::io::Error::last_os_error()) }
                });
            }
        }
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let n: Vec<u64> = first.split_whitespace().map(|w| w.parse().unwrap()).collect();
        let areas = [(n[0], n[1]), (n[2], n[3]), (n[4], n[5]), (n[6], n[7])];
        let passes = Arc::new(Mutex::new(Vec::new()));
        let feed = passes.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let Ok(total) = line.trim().parse() else { continue };
                feed.lock().unwrap().push((Instant::now(), total));
            }
        });
        Self { child, areas, passes, file }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The share of `area`'s pages mapped now.
    fn resident(&self, (start, end): (u64, u64)) -> f64 {
        let pagemap = std::fs::File::open(format!("/proc/{}/pagemap", self.pid())).unwrap();
        let mut bytes = vec![0u8; ((end - start) / PAGE * 8) as usize];
        pagemap.read_exact_at(&mut bytes, start / PAGE * 8).unwrap();
        let present = bytes
            .chunks_exact(8)
            .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) & (1 << 63) != 0)
            .count();
        present as f64 / (bytes.len() / 8) as f64
    }

    /// Hot passes per second between `from` and `to`.
    fn rate(&self, from: Instant, to: Instant) -> f64 {
        let passes = self.passes.lock().unwrap();
        let inside: Vec<&(Instant, u64)> =
            passes.iter().filter(|(t, _)| (from..to).contains(t)).collect();
        let (first, last) = (inside.first().unwrap(), inside.last().unwrap());
        (last.1 - first.1) as f64 / (last.0 - first.0).as_secs_f64()
    }

    /// KiB of this process's anonymous memory in huge pages.
    fn anon_huge_kib(&self) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid())).unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("AnonHugePages:")?.trim().strip_suffix("kB")?.trim().parse().ok()
            })
            .unwrap()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// `udamon monitor --json` of the workload with `scheme` options, for `seconds`.
fn monitor(pid: u32, seconds: u64, scheme: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["monitor", &pid.to_string(), "--json", "--duration", &format!("{seconds}s")])
        .args(scheme)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The scheme stats of the last aggregation `udamon monitor --json` printed.
fn last_stats(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.contains("\"schemes\"")).expect("scheme stats");
    serde_json::from_str::<Value>(last).unwrap()["schemes"][0].clone()
}

#[test]
fn pageout_reclaims_cold_memory_and_spares_the_hot() {
    let Some(_serial) = begin("pageout_reclaims_cold_memory_and_spares_the_hot") else { return };
    let _swap = ZramSwap::on();
    let work = Workload::start(16, 64);
    let [anon_hot, anon_cold, file_hot, file_cold] = work.areas;
    let min_age = 2;
    // The hot loop's rate without udamon is the baseline.
    let alone = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let baseline = (alone + Duration::from_millis(300), Instant::now());
    let started = Instant::now();
    let run = monitor(
        work.pid(),
        3 * min_age + 2,
        &["--damos_action", "pageout", "--damos_access_rate", "0", "0", "--damos_age", "2s", "max"],
    );
    let mut hot_low = 1.0f64;
    let mut reclaimed_at = None;
    while started.elapsed() < Duration::from_secs(3 * min_age) {
        std::thread::sleep(Duration::from_millis(200));
        hot_low = hot_low.min(work.resident(anon_hot)).min(work.resident(file_hot));
        let cold = (work.resident(anon_cold) + work.resident(file_cold)) / 2.0;
        if cold <= 0.2 && reclaimed_at.is_none() {
            reclaimed_at = Some(started.elapsed());
        }
    }
    let during = (started + Duration::from_secs(2 * min_age), Instant::now());
    // Once the cold memory is out, udamon goes on monitoring and applying the scheme.
    std::thread::sleep(Duration::from_millis(1500));
    let settled = started + reclaimed_at.unwrap_or_default() + Duration::from_secs(1);
    let after = (settled, Instant::now());
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (anon, file) = (work.resident(anon_cold), work.resident(file_cold));
    println!(
        "cold anon {:.0} % and file {:.0} % resident; reclaimed by {reclaimed_at:?}",
        anon * 100.0,
        file * 100.0
    );
    assert!(
        reclaimed_at.is_some(),
        "≥ 80 % of the cold bytes paged out within 3 × min age: anon {anon:.2}, file {file:.2} resident"
    );
    assert!(hot_low >= 0.99, "the hot areas stayed resident: {hot_low:.3} at worst");
    let alone = work.rate(baseline.0, baseline.1);
    let (reclaiming, ratio) =
        (work.rate(during.0, during.1) / alone, work.rate(after.0, after.1) / alone);
    println!("hot loop rate ÷ without udamon: {reclaiming:.3} while reclaiming, {ratio:.3} after");
    // While 128 MiB go to zram on the other of two vCPUs the loop ran at 0.81-1.0 of its rate
    // (2026-12-07); once the cold memory is out, with udamon still monitoring and applying the
    // scheme, 0.99-1.02 in most runs, 0.89 in one clean-clone CI rehearsal (a shared machine's
    // noise: the hot areas stayed resident). The ≤ 5 % goal is a measured figure
    // (docs/benchmarks.md); this gate catches gross harm, such as hot pages paged out and
    // faulted back in: a fifth of the rate lost.
    assert!(ratio >= 0.80, "the hot loop slowed by {:.1} %", (1.0 - ratio) * 100.0);
    let stats = last_stats(&out);
    let applied = stats["stats"]["sz_applied"].as_u64().unwrap();
    assert!(applied >= 64 * MIB * 8 / 10, "{stats}");
}

#[test]
fn a_size_quota_holds_per_interval_and_goes_on_where_it_stopped() {
    let Some(_serial) = begin("a_size_quota_holds_per_interval_and_goes_on_where_it_stopped")
    else {
        return;
    };
    let _swap = ZramSwap::on();
    let work = Workload::start(8, 64);
    let anon_cold = work.areas[1];
    let run = monitor(
        work.pid(),
        9,
        &[
            IDLE_PAGEOUT.as_slice(),
            &[
                "--damos_quota_space",
                "8MiB",
                "--damos_quota_interval",
                "1s",
                "--damos_filter",
                "allow",
                "anon",
                "--damos_filter",
                "reject",
                "none",
                "anon",
            ],
        ]
        .concat(),
    );
    let started = Instant::now();
    let mut over = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(250));
        let paged = (1.0 - work.resident(anon_cold)) * 64.0;
        // The first application comes at 1 s; each quota interval adds at most 8 MiB.
        let allowed = 8.0 * (started.elapsed().as_secs_f64().ceil());
        if paged > allowed + 1.0 {
            over.push((started.elapsed(), paged, allowed));
        }
    }
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(over.is_empty(), "paged out past the quota: {over:?}");
    let paged = (1.0 - work.resident(anon_cold)) * 64.0;
    assert!(paged >= 32.0, "the quota's intervals went on through the cold area: {paged:.1} MiB");
    let stats = last_stats(&out);
    assert!(stats["stats"]["qt_exceeds"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["effective_quota"].as_u64(), Some(8 * MIB));
    assert!(work.resident(work.areas[3]) > 0.99, "file memory is filtered out: {stats}");
}

#[test]
fn collapse_makes_huge_pages_of_hot_small_pages() {
    let Some(_serial) = begin("collapse_makes_huge_pages_of_hot_small_pages") else { return };
    // In `madvise` mode the workload's hot area, not advised MADV_HUGEPAGE, faults in as 4 KiB
    // pages, and khugepaged leaves it alone: only MADV_COLLAPSE makes huge pages of it.
    let _thp = Knob::set("/sys/kernel/mm/transparent_hugepage/enabled", "madvise");
    let work = Workload::start(8, 8);
    assert_eq!(work.anon_huge_kib(), 0, "the hot area starts as 4 KiB pages");
    let run = monitor(
        work.pid(),
        4,
        &[
            "--damos_action",
            "collapse",
            "--damos_access_rate",
            "50%",
            "max",
            "--damos_age",
            "500ms",
            "max",
        ],
    );
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let huge = work.anon_huge_kib();
    println!("{huge} KiB of huge pages");
    assert!(huge >= 4096, "{huge} KiB of huge pages: {}", last_stats(&out));
}

#[test]
fn bad_schemes_exit_2_with_one_line() {
    for args in [
        &["--damos_action", "hugepage"][..],
        &["--damos_action", "pageout", "--damos_quotas", "10", "lots"],
        &["--damos_age", "1s", "max"],
        &["--schemes", "[{\"action\": \"cold\", \"access_pattern\": 3}]"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_udamon"))
            .args(["monitor", "1", "--duration", "1s"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

/// `udamon reclaim` over a cgroup, with the reclaim unit's own options: the group's cold memory
/// is paged out; the unit grants what the monitor's unit grants, nothing more.
#[test]
fn reclaim_pages_out_a_groups_cold_memory_as_the_unit_runs_it() {
    let unit = |name: &str| {
        std::fs::read_to_string(format!("{}/../packaging/{name}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
    };
    let (reclaim, monitor) = (unit("udamon-reclaim@.service"), unit("udamon.service"));
    for key in ["AmbientCapabilities=", "CapabilityBoundingSet="] {
        let line = |text: &str| text.lines().find(|l| l.starts_with(key)).map(str::to_owned);
        assert_eq!(line(&reclaim), line(&monitor), "{key}");
    }
    let Some(_serial) = begin("reclaim_pages_out_a_groups_cold_memory_as_the_unit_runs_it") else {
        return;
    };
    let exec = reclaim.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let unit_options: Vec<&str> = exec
        .split_whitespace()
        .skip_while(|w| *w != "%I")
        .skip(1)
        .filter(|w| !w.starts_with('$'))
        .collect();
    assert_eq!(unit_options, ["--report-every", "10min"]);
    let _swap = ZramSwap::on();
    let group = Group::new("reclaim");
    let work = Workload::start_in(8, 32, Some(&group.0));
    let started = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["reclaim", "--cgroup", group.0.to_str().unwrap()])
        .args(&unit_options)
        // A generous time quota: the quota's own test is above; this is the command's.
        .args(["--min-age", "1s", "--no-wmarks", "--quota-time", "1s", "--duration", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the cold memory is out (regions need a few aggregations to find the boundary between
    // the hot and the cold part of the file mapping; a loaded machine takes longer), then SIGTERM,
    // as systemd stops the unit.
    let left = || (work.resident(work.areas[1]), work.resident(work.areas[3]));
    while started.elapsed() < Duration::from_secs(15) && {
        let (a, f) = left();
        a >= 0.2 || f >= 0.2
    } {
        std::thread::sleep(Duration::from_millis(250));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let out = run.wait_with_output().unwrap();
    let (anon, file) = left();
    drop(work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("cold memory out after {:.1} s", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("scheme 0 (pageout): tried"), "the totals at the end: {stdout}");
    assert!(anon < 0.2 && file < 0.2, "cold memory left: anon {anon:.2}, file {file:.2}; {stdout}");
}

/// A pressure goal moves the effective quota with real memory stalls: up while nothing stalls,
/// down to the minimum while a process thrashes in a small cgroup (over zram swap), up again
/// once it stops.
#[test]
fn a_pressure_goal_lowers_the_quota_under_stalls_and_raises_it_after() {
    let Some(_serial) = begin("a_pressure_goal_lowers_the_quota_under_stalls_and_raises_it_after")
    else {
        return;
    };
    let _swap = ZramSwap::on();
    let work = Workload::start(4, 32);
    let mut run = monitor(
        work.pid(),
        16,
        &[
            IDLE_PAGEOUT.as_slice(),
            &[
                "--damos_quotas",
                "0",
                "64MiB",
                "100",
                "--damos_quota_goal",
                "some_mem_psi_us",
                "2ms",
            ],
        ]
        .concat(),
    );
    // Each aggregation's effective quota, as it comes.
    let quotas = Arc::new(Mutex::new(Vec::<(Instant, u64)>::new()));
    let feed = quotas.clone();
    let stdout = BufReader::new(run.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            if let Some(q) = v["schemes"][0]["effective_quota"].as_u64() {
                feed.lock().unwrap().push((Instant::now(), q));
            }
        }
    });
    let phase = |seconds| {
        let from = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        (from, Instant::now())
    };
    let calm = phase(5);
    // A process touching 48 MiB in a group allowed 16 MiB: it stalls on memory all the time.
    let group = Group::limited("pressure", 16 * MIB);
    let thrasher = Workload::start_in(48, 0, Some(&group.0));
    let pressure = phase(5);
    drop(thrasher);
    drop(group);
    let after = phase(5);
    let out = run.wait_with_output().unwrap();
    reader.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let quotas = quotas.lock().unwrap();
    let within = |(from, to): (Instant, Instant), skip: Duration| -> Vec<u64> {
        quotas.iter().filter(|(t, _)| *t >= from + skip && *t < to).map(|q| q.1).collect()
    };
    let (calm, pressure, after) = (
        within(calm, Duration::ZERO),
        within(pressure, Duration::from_secs(2)),
        within(after, Duration::from_secs(2)),
    );
    println!(
        "quota max calm {:?}, min under pressure {:?}, max after {:?}",
        calm.iter().max(),
        pressure.iter().min(),
        after.iter().max()
    );
    let calm_max = *calm.iter().max().expect("quotas while calm");
    let pressure_min = *pressure.iter().min().expect("quotas under pressure");
    let after_max = *after.iter().max().expect("quotas after");
    assert!(calm_max >= MIB, "the quota rose while nothing stalled: {calm:?}");
    assert!(pressure_min <= calm_max / 64, "the quota fell under stalls: {pressure:?}");
    assert!(after_max >= 16 * pressure_min.max(1), "and rose again: {after:?}");
}

/// A scheme's range that ends inside a huge page leaves that huge page alone: pageout of
/// 1 MiB..7 MiB of 8 MiB of idle huge pages pages out the two whole ones inside and neither of
/// the two across its ends (advising part of one would split it).
#[test]
fn a_range_ending_inside_a_huge_page_does_not_split_it() {
    let Some(_serial) = begin("a_range_ending_inside_a_huge_page_does_not_split_it") else {
        return;
    };
    let _thp = Knob::set("/sys/kernel/mm/transparent_hugepage/enabled", "madvise");
    let _swap = ZramSwap::on();
    let work = Workload::spawn(4, 8, None, true);
    let (start, end) = work.areas[1];
    assert!(work.anon_huge_kib() >= 8192, "the cold area is huge pages");
    let (from, to) = (start + MIB, end - MIB);
    let run = monitor(
        work.pid(),
        4,
        &[
            IDLE_PAGEOUT.as_slice(),
            &["--damos_filter", "allow", "addr", &from.to_string(), &to.to_string()],
        ]
        .concat(),
    );
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let huge = 2 * MIB;
    let (first, last) = ((start, start + huge), (end - huge, end));
    assert_eq!(work.resident(first), 1.0, "the huge page across the start was left alone");
    assert_eq!(work.resident(last), 1.0, "the huge page across the end was left alone");
    assert_eq!(work.anon_huge_kib() % 2048, 0);
    assert!(work.anon_huge_kib() >= 4096, "both still huge: {} KiB", work.anon_huge_kib());
    assert!(
        work.resident((start + huge, end - huge)) < 0.5,
        "the two inside were paged out: {}",
        last_stats(&out)
    );
}

/// A `hugepage_size` filter rejecting 2 MiB folios keeps an idle area of huge pages whole and in
/// memory, while the idle small pages beside it (the cold file area) are paged out.
#[test]
fn a_hugepage_size_filter_keeps_huge_pages_and_pages_out_small_ones() {
    let Some(_serial) = begin("a_hugepage_size_filter_keeps_huge_pages_and_pages_out_small_ones")
    else {
        return;
    };
    let _thp = Knob::set("/sys/kernel/mm/transparent_hugepage/enabled", "madvise");
    let _swap = ZramSwap::on();
    let work = Workload::spawn(4, 8, None, true);
    let (huge, small) = (work.areas[1], work.areas[3]);
    assert!(work.anon_huge_kib() >= 8192, "the cold anon area is huge pages");
    let filter = ["--damos_filter", "reject", "hugepage_size", "2MiB", "2MiB"];
    let run = monitor(work.pid(), 30, &[IDLE_PAGEOUT.as_slice(), &filter].concat());
    // Until the small pages are out (the regions first find where the hot part of their file
    // mapping ends; a loaded machine takes longer), watching that no huge page goes meanwhile.
    let (started, mut huge_kept) = (Instant::now(), 1.0f64);
    while started.elapsed() < Duration::from_secs(20) && work.resident(small) >= 0.5 {
        std::thread::sleep(Duration::from_millis(250));
        huge_kept = huge_kept.min(work.resident(huge));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let small_left = work.resident(small);
    eprintln!("small pages out after {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(huge_kept.min(work.resident(huge)), 1.0, "huge pages kept: {}", last_stats(&out));
    assert!(work.anon_huge_kib() >= 8192, "and whole: {} KiB", work.anon_huge_kib());
    assert!(small_left < 0.5, "small pages paged out: {}", last_stats(&out));
}

/// Watermarks that hold the scheme off (free memory above HIGH) pause sampling: the run says
/// so, pages nothing out, and costs next to no CPU.
#[test]
fn reclaim_held_off_by_its_watermarks_pauses_and_pages_nothing_out() {
    let Some(_serial) = begin("reclaim_held_off_by_its_watermarks_pauses_and_pages_nothing_out")
    else {
        return;
    };
    let _swap = ZramSwap::on();
    let work = Workload::start(4, 16);
    // Free memory is always above 1 permil: never active.
    let out = Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["reclaim", &work.pid().to_string(), "--min-age", "1s", "--wmarks", "1", "1", "0"])
        .args(["--wmarks-interval", "500ms", "--duration", "4s"])
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("held off by the watermarks"), "{stderr}");
    assert!(work.resident(work.areas[1]) > 0.99, "nothing paged out: {stdout}");
}
