//! Gentle on the monitored process: memory the clear refuses (mlocked, hugetlb, PFN-mapped
//! `[vvar]`, memory locked while monitored) reads unknown, never ends the target, and leaves
//! the hot and cold areas beside it classified as well as without it.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use damon_engine::Attrs;
use damon_user::{
    monitor::{Event, Monitor, MonitorConfig},
    snapshot::Snapshot,
    vaddr::VaddrOps,
};
use tests::{FolioChild, HugePages, Knob, Odd, OddChild};

/// Privileged, and one at a time: the tests change THP knobs and count folios system-wide.
fn begin(name: &str) -> Option<MutexGuard<'static, ()>> {
    static SERIAL: Mutex<()> = Mutex::new(());
    damon_user::test_support::privileged(name)
        .then(|| SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// Pages of `pid` in `range` that belong to large folios (`/proc/kpageflags`: compound head
/// or tail), found through `/proc/PID/pagemap`.
fn large_folio_pages(pid: u32, (start, end): (u64, u64)) -> usize {
    use std::os::unix::fs::FileExt as _;
    const PRESENT: u64 = 1 << 63;
    const PFN: u64 = (1 << 55) - 1;
    const COMPOUND: u64 = (1 << 15) | (1 << 16);
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let flags = std::fs::File::open("/proc/kpageflags").unwrap();
    let read = |file: &std::fs::File, index: u64| {
        let mut word = [0; 8];
        file.read_exact_at(&mut word, index * 8).map(|_| u64::from_ne_bytes(word)).unwrap_or(0)
    };
    (start / PAGE..end / PAGE)
        .map(|page| read(&pagemap, page))
        .filter(|&entry| entry & PRESENT != 0 && read(&flags, entry & PFN) & COMPOUND != 0)
        .count()
}

const PAGE: u64 = 4096;

/// KiB of tmpfs huge pages `pid` maps with PMDs (`/proc/PID/smaps_rollup`): a split of one of
/// its huge mappings shows here, where the system-wide counters also count other processes'
/// (this test's own heap, under THP `always`).
fn shmem_pmd_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("ShmemPmdMapped:")?.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .unwrap_or(0)
}

/// The share of `area`'s bytes in regions of `pid` that satisfy `pred` (rate: accesses per
/// sample).
fn share(
    s: &Snapshot,
    pid: u32,
    (start, end): (u64, u64),
    pred: impl Fn(f64, bool) -> bool,
) -> f64 {
    let Some(t) = s.targets.iter().find(|t| t.pid == pid) else { return 0.0 };
    let covered: u64 = t
        .regions
        .iter()
        .filter(|r| pred(r.nr_accesses as f64 / s.samples as f64, r.unknown))
        .map(|r| r.end.min(end).saturating_sub(r.start.max(start)))
        .sum();
    covered as f64 / (end - start) as f64
}

fn hot(rate: f64, unknown: bool) -> bool {
    !unknown && rate >= 0.5
}

fn idle(rate: f64, unknown: bool) -> bool {
    !unknown && rate <= 0.1
}

fn unknown(_: f64, unknown: bool) -> bool {
    unknown
}

fn not_idle(rate: f64, unknown: bool) -> bool {
    unknown || rate >= 0.5
}

fn not_hot(rate: f64, unknown: bool) -> bool {
    unknown || rate <= 0.1
}

/// An expectation: this share of the area's bytes satisfies the predicate.
type Expect = (&'static str, (u64, u64), fn(f64, bool) -> bool);

/// Monitors `child` until every expectation has held for three aggregations in a row (at most
/// 60 s: emulated guests are slow), failing on an exit report or a problem. `from` delays the
/// checks (for memory that changes kind while monitored).
fn watch(child: &OddChild, expect: &[Expect], from: Duration) {
    watch_pid(child.pid, expect, from);
}

fn watch_pid(pid: u32, expect: &[Expect], from: Duration) {
    let attrs = Attrs { ops_update_us: 1_000_000, ..Attrs::default() };
    let config = MonitorConfig { attrs, seed: 1, ..Default::default() };
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let ops = VaddrOps::load().expect("the data plane");
    let monitor = Monitor::start(config, ops, &[pid], tx, false).expect("monitor");
    let (started, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(60));
    let (mut streak, mut last) = (0, String::new());
    while streak < 3 {
        assert!(Instant::now() < deadline, "never classified as expected; last: {last}");
        let Ok(event) = events.try_recv() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        match event {
            Event::Snapshot(s) if started.elapsed() >= from => {
                let shares: Vec<f64> =
                    expect.iter().map(|(_, area, pred)| share(&s, pid, *area, pred)).collect();
                last = expect
                    .iter()
                    .zip(&shares)
                    .map(|((name, ..), share)| format!("{name} {share:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                streak = if shares.iter().all(|&s| s >= 0.75) { streak + 1 } else { 0 };
            }
            Event::Snapshot(_) => {}
            Event::TargetExited(pid) => panic!("pid {pid} reported gone while alive"),
            Event::Problem(problem) => panic!("a problem reported: {problem:?}"),
            Event::TargetAdded(_)
            | Event::TargetLeft(_)
            | Event::TargetRefused(..)
            | Event::Flush
            | Event::Paused => {
                panic!("an unasked target change")
            }
        }
    }
    monitor.join().expect("the sampler");
}

#[test]
fn plain_memory_is_classified() {
    let Some(_serial) = begin("plain_memory_is_classified") else {
        return;
    };
    let child = OddChild::spawn(Odd::default());
    watch(&child, &[("hot", child.hot, hot), ("cold", child.cold, idle)], Duration::ZERO);
}

#[test]
fn memory_the_clear_refuses_reads_unknown_beside_classified_memory() {
    let Some(_serial) = begin("memory_the_clear_refuses_reads_unknown_beside_classified_memory")
    else {
        return;
    };
    let pages = HugePages::reserve(2);
    if pages.is_none() {
        assert!(!damon_user::test_support::in_ci(), "no huge pages for the hugetlb area under CI");
        eprintln!("note: no free huge pages here: testing without a hugetlb area");
    }
    let odd = Odd {
        locked: true,
        hugetlb: pages.is_some(),
        prot_none: true,
        read_only_file: true,
        ..Odd::default()
    };
    let child = OddChild::spawn(odd);
    let mut expect: Vec<Expect> = vec![
        ("hot", child.hot, hot),
        ("cold", child.cold, idle),
        ("locked", child.locked.unwrap(), unknown),
        // Page cache read all the time, never cleared: its set bits say nothing.
        ("read-only file", child.read_only_file.unwrap(), unknown),
        // Nothing can touch it: truly idle, and the clear works there.
        ("PROT_NONE", child.prot_none.unwrap(), idle),
    ];
    if let Some(area) = child.hugetlb {
        expect.push(("hugetlb", area, unknown));
    }
    watch(&child, &expect, Duration::ZERO);
    drop(child);
    drop(pages);
}

#[test]
fn memory_locked_while_monitored_turns_unknown_without_a_problem() {
    let Some(_serial) = begin("memory_locked_while_monitored_turns_unknown_without_a_problem")
    else {
        return;
    };
    let after = Duration::from_secs(1);
    let child = OddChild::spawn(Odd { lock_hot_after: Some(after), ..Odd::default() });
    watch(&child, &[("hot, locked", child.hot, unknown), ("cold", child.cold, idle)], after);
    let child =
        OddChild::spawn(Odd { lock_hot_after: Some(after), lock_all: true, ..Odd::default() });
    let expect: [Expect; 3] = [
        ("hot", child.hot, unknown),
        // Locked: idle where its accessed bits are clear, unknown where locking set them (6.1's
        // mlock populates with FOLL_TOUCH), never hot.
        ("cold, locked by mlockall", child.cold, not_hot),
        ("mapped after mlockall(MCL_FUTURE)", child.late.unwrap(), unknown),
    ];
    watch(&child, &expect, after);
}

const THP: &str = "/sys/kernel/mm/transparent_hugepage";

/// A counter of the per-size THP statistics (`split`, `nr_anon`, ...).
fn thp_stat(size: &str, stat: &str) -> u64 {
    std::fs::read_to_string(format!("{THP}/{size}/stats/{stat}"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// The per-size THP directories (`hugepages-64kB`, ...), smallest first.
fn thp_sizes() -> Vec<(u64, String)> {
    let mut sizes: Vec<(u64, String)> = std::fs::read_dir(THP)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kib = name.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()?;
            // Sizes for file folios only (8 KiB here) have no anonymous `enabled` knob.
            e.path().join("enabled").exists().then_some((kib, name))
        })
        .collect();
    sizes.sort();
    sizes
}

fn halves((start, end): (u64, u64)) -> ((u64, u64), (u64, u64)) {
    let middle = start + (end - start) / 2;
    ((start, middle), (middle, end))
}

/// Every mTHP size the kernel offers, one at a time: the child's memory is in large folios of
/// that size, monitoring classifies its hot and cold halves, and no folio is split.
#[test]
fn every_mthp_size_is_cleared_whole_and_never_split() {
    let Some(_serial) = begin("every_mthp_size_is_cleared_whole_and_never_split") else {
        return;
    };
    let sizes: Vec<(u64, String)> =
        thp_sizes().into_iter().filter(|(kib, _)| *kib < 2048).collect();
    if sizes.is_empty() {
        eprintln!("note: this kernel has no mTHP sizes (before 6.8): nothing to test");
        return;
    }
    // Only the size under test is allowed, so the child's folios are of that size.
    let _off: Vec<Knob> = thp_sizes()
        .iter()
        .filter_map(|(_, name)| Knob::set(&format!("{THP}/{name}/enabled"), "never"))
        .collect();
    for (kib, name) in sizes {
        let _on = Knob::set(&format!("{THP}/{name}/enabled"), "madvise").expect("an mTHP knob");
        let (split, anon) = (thp_stat(&name, "split"), thp_stat(&name, "nr_anon"));
        let child = FolioChild::spawn(8 << 20, None);
        let folios = thp_stat(&name, "nr_anon") - anon;
        let pages = large_folio_pages(child.pid, child.anon);
        if folios == 0 || pages == 0 {
            assert!(!damon_user::test_support::in_ci(), "no {name} folios under CI");
            eprintln!("note: the kernel gave no {name} folios (memory?): skipping that size");
            continue;
        }
        let (hot_half, cold_half) = halves(child.anon);
        watch_pid(child.pid, &[("hot", hot_half, hot), ("cold", cold_half, idle)], Duration::ZERO);
        assert_eq!(thp_stat(&name, "split"), split, "{kib} KiB folios were split");
        let left = large_folio_pages(child.pid, child.anon);
        assert_eq!(left, pages, "{kib} KiB folios: pages left large folios");
    }
}

/// A tmpfs mount of our own with huge pages, unmounted when dropped.
struct HugeTmpfs(std::path::PathBuf);

impl HugeTmpfs {
    fn mount() -> Option<Self> {
        use std::ffi::CString;
        let dir = std::env::temp_dir().join(format!("udamon-huge-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let c = |s: &str| CString::new(s).unwrap();
        let (target, data) = (c(dir.to_str()?), c("huge=always,size=64m"));
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        (rc == 0).then_some(Self(dir))
    }

    fn file(&self, len: u64) -> std::fs::File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.0.join("data"))
            .unwrap();
        file.set_len(len).unwrap();
        file
    }
}

impl Drop for HugeTmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: unmounting what `mount` mounted; lazily, in case a child still maps it.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Large page-cache folios (tmpfs with huge pages): mapped at their alignment they are PMD
/// mapped and cleared whole; mapped 64 KiB past it, no range of them can be cleared without a
/// split, so they read unknown. Nothing is split either way.
#[test]
fn file_backed_large_folios_are_never_split() {
    let Some(_serial) = begin("file_backed_large_folios_are_never_split") else {
        return;
    };
    let Some(tmpfs) = HugeTmpfs::mount() else {
        assert!(!damon_user::test_support::in_ci(), "cannot mount a huge tmpfs under CI");
        eprintln!("note: cannot mount tmpfs with huge=always here: skipping");
        return;
    };
    let len = 8 << 20;
    let file = tmpfs.file(len as u64);
    let aligned = FolioChild::spawn(len, Some((&file, 0)));
    let large = large_folio_pages(aligned.pid, aligned.file.unwrap());
    let pmd = shmem_pmd_kib(aligned.pid);
    assert!(pmd > 0, "the aligned file is not mapped with huge pages");
    let (hot_half, cold_half) = halves(aligned.file.unwrap());
    watch_pid(
        aligned.pid,
        &[("hot file", hot_half, hot), ("cold file", cold_half, idle)],
        Duration::ZERO,
    );
    assert_eq!(large_folio_pages(aligned.pid, aligned.file.unwrap()), large, "aligned: split");
    assert_eq!(shmem_pmd_kib(aligned.pid), pmd, "aligned: a huge page mapping was split");
    drop(aligned);
    let shifted = FolioChild::spawn(len, Some((&file, 64 << 10)));
    let large = large_folio_pages(shifted.pid, shifted.file.unwrap());
    // Unaligned, no large folio is mapped whole: never cleared. The written half reads unknown
    // where its folios are large, hot where tmpfs fell back to small pages, never idle; the
    // other half's bits were set once and may since be cleared by reclaim or a paddr monitor.
    let (hot_half, cold_half) = halves(shifted.file.unwrap());
    watch_pid(
        shifted.pid,
        &[("unaligned hot file", hot_half, not_idle), ("unaligned cold file", cold_half, not_hot)],
        Duration::ZERO,
    );
    assert_eq!(large_folio_pages(shifted.pid, shifted.file.unwrap()), large, "shifted: split");
    assert!(large > 0, "the huge tmpfs gave no large folios");
    drop(shifted);
}
