//! udamon's integration tests: the real eBPF object in the running kernel. The tests live in
//! `tests/`; privileged ones call `damon_user::test_support::privileged` first. This library
//! holds what they share: a child process with a known memory layout, and kernel DAMON's sysfs
//! for the guest programs.

pub mod damon_admin;

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

pub const PAGE: usize = 4096;
pub const HUGE: usize = 2 << 20;
pub const LOCKED_PAGES: usize = 16;

/// A forked child that keeps writing its hot pages and leaves its idle pages alone. Its areas are
/// mapped before the fork and touched only by the child, so every page is the child's own.
pub struct Child {
    pub pid: u32,
    /// `pages` small pages: even-numbered ones hot, odd ones touched once, then idle.
    pub small: usize,
    pub pages: usize,
    /// Two 2 MiB-aligned huge pages (if THP gives them), both hot.
    pub huge: usize,
    /// `LOCKED_PAGES` pages the child mlocks and keeps writing: memory `MADV_COLD` refuses.
    pub locked: usize,
    control: *mut AtomicU32,
}

const RUN: u32 = 0;
const READY: u32 = 1;
const STOP: u32 = 2;

pub use damon_user::test_support::map;

/// Kills our own forked child `pid` and reaps it.
pub fn kill_and_reap(pid: u32) {
    // SAFETY: signalling and waiting for a child of ours.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
        libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
    }
}

impl Child {
    pub fn spawn(pages: usize) -> Self {
        let small = map(pages * PAGE, libc::MAP_PRIVATE);
        // They must stay small pages: where THP is `always` (Debian's kernels) the area may share
        // a VMA with a 2 MiB-aligned range and come back as one huge page.
        // SAFETY: advising our own fresh mapping.
        unsafe { libc::madvise(small as *mut libc::c_void, pages * PAGE, libc::MADV_NOHUGEPAGE) };
        // 6 MiB, to find two aligned huge pages inside.
        let raw = map(3 * HUGE, libc::MAP_PRIVATE);
        let huge = raw.next_multiple_of(HUGE);
        // SAFETY: advising our own fresh mapping.
        unsafe { libc::madvise(huge as *mut libc::c_void, 2 * HUGE, libc::MADV_HUGEPAGE) };
        let locked = map(LOCKED_PAGES * PAGE, libc::MAP_PRIVATE);
        let control = map(PAGE, libc::MAP_SHARED) as *mut AtomicU32;
        // SAFETY: the child only touches memory and atomics, then _exits: fork-safe in a
        // multi-threaded parent.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: the child's own mappings; see above.
            unsafe { run_child(small, pages, huge, locked, &*control) }
        }
        let child = Self { pid: pid as u32, small, pages, huge, locked, control };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.control().load(Ordering::Acquire) != READY {
            assert!(Instant::now() < deadline, "child never got ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        child
    }

    fn control(&self) -> &AtomicU32 {
        // SAFETY: a shared page that lives as long as `self`.
        unsafe { &*self.control }
    }

    /// Completed sweeps over the hot pages; in the control page, after the state word.
    fn sweeps(&self) -> &AtomicU64 {
        // SAFETY: the shared control page, 8-byte aligned at offset 8.
        unsafe { &*(self.control as *const u8).add(8).cast::<AtomicU64>() }
    }

    /// Waits until the child has swept its hot pages `n` more times: however slow the machine
    /// (an emulated guest shares one CPU), every hot page has been written since the call.
    pub fn wait_sweeps(&self, n: u64) {
        let target = self.sweeps().load(Ordering::Acquire) + n;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.sweeps().load(Ordering::Acquire) < target {
            assert!(Instant::now() < deadline, "the child stopped sweeping");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn page(&self, index: usize) -> u64 {
        (self.small + index * PAGE) as u64
    }

    pub fn is_hot(index: usize) -> bool {
        index.is_multiple_of(2)
    }

    /// Kilobytes of transparent huge pages the child has, from its smaps_rollup.
    pub fn anon_huge_kib(&self) -> u64 {
        let text =
            std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("AnonHugePages:")?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Asks the child to exit and reaps it.
    pub fn stop(&self) {
        self.control().store(STOP, Ordering::Release);
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0) };
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.control().load(Ordering::Acquire) != STOP {
            // SAFETY: killing and reaping our own child.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            self.stop();
        }
    }
}

/// A forked child that, once told to go, writes each page of a fresh `pages`-page area once and
/// exits: every one of those writes is a user-mode fault of the child at a known address.
pub struct OneShotWriter {
    pub pid: u32,
    pub area: usize,
    pub pages: usize,
    go: i32,
}

impl OneShotWriter {
    pub fn spawn(pages: usize) -> Self {
        // Mapped before the fork but first written by the child, so the faults are its own.
        let area = map(pages * PAGE, libc::MAP_PRIVATE);
        let mut fds = [0; 2];
        // SAFETY: a fresh pipe.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
        // SAFETY: the child only reads, writes its own memory and _exits: fork-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: blocking on our pipe, then writing the area mapped above.
            unsafe {
                libc::read(fds[0], (&raw mut byte).cast(), 1);
                (0..pages).for_each(|i| ((area + i * PAGE) as *mut u8).write_volatile(1));
                libc::_exit(0)
            }
        }
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(fds[0]) };
        Self { pid: pid as u32, area, pages, go: fds[1] }
    }

    /// Lets the child write its pages and waits for it to exit; true when it exited cleanly.
    pub fn run(self) -> bool {
        let mut status = 0;
        // SAFETY: our pipe's write end and our own child.
        unsafe {
            libc::write(self.go, b"g".as_ptr().cast(), 1);
            libc::close(self.go);
            libc::waitpid(self.pid as i32, &mut status, 0);
            libc::munmap(self.area as *mut libc::c_void, self.pages * PAGE);
        }
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}

unsafe fn run_child(
    small: usize,
    pages: usize,
    huge: usize,
    locked: usize,
    control: &AtomicU32,
) -> ! {
    // SAFETY: the control page is shared and 8-byte aligned at offset 8 (see `Child::sweeps`).
    let sweeps = unsafe { &*(control as *const AtomicU32 as *const u8).add(8).cast::<AtomicU64>() };
    let write = |addr: usize| unsafe { (addr as *mut u8).write_volatile(1) };
    (0..pages).for_each(|i| write(small + i * PAGE));
    (0..2 * HUGE).step_by(PAGE).for_each(|off| write(huge + off));
    // Locks are not inherited across fork: the child takes its own. Failing (RLIMIT_MEMLOCK)
    // shows as an unlocked area in /proc/PID/smaps, which the tests check.
    // SAFETY: locking our own mapping.
    unsafe { libc::mlock(locked as *const libc::c_void, LOCKED_PAGES * PAGE) };
    control.store(READY, Ordering::Release);
    while control.load(Ordering::Acquire) == RUN || control.load(Ordering::Acquire) == READY {
        for i in (0..pages).step_by(2) {
            write(small + i * PAGE);
        }
        write(huge);
        write(huge + HUGE);
        (0..LOCKED_PAGES).for_each(|i| write(locked + i * PAGE));
        sweeps.fetch_add(1, Ordering::Release);
    }
    unsafe { libc::_exit(0) }
}

/// The kinds of memory a target may have beside plain anonymous memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct Odd {
    /// An mlocked area, written all the time.
    pub locked: bool,
    /// A hugetlb area (needs free huge pages: see `HugePages`), written all the time.
    pub hugetlb: bool,
    /// An area touched once, then made PROT_NONE.
    pub prot_none: bool,
    /// Lock the hot area (`mlock`) this long after the start.
    pub lock_hot_after: Option<Duration>,
    /// Then also `mlockall(MCL_CURRENT | MCL_FUTURE)` and map and write a fresh area.
    pub lock_all: bool,
    /// A file on disk mapped read-only and read all the time: page cache the clear leaves alone.
    pub read_only_file: bool,
}

/// A forked child with hot and cold anonymous memory and, as asked, memory the clear refuses.
/// Every area is 4 MiB, apart from the others by an unmapped 4 MiB gap. Every process also has
/// `[vvar]`, PFN-mapped memory.
pub struct OddChild {
    pub pid: u32,
    pub hot: (u64, u64),
    pub cold: (u64, u64),
    pub locked: Option<(u64, u64)>,
    pub hugetlb: Option<(u64, u64)>,
    pub prot_none: Option<(u64, u64)>,
    /// Mapped by the child after `mlockall`, if asked.
    pub late: Option<(u64, u64)>,
    pub read_only_file: Option<(u64, u64)>,
}

const AREA: usize = 4 << 20;

impl OddChild {
    pub fn spawn(odd: Odd) -> Self {
        // One reservation, carved into areas with gaps, so each is its own mapping.
        let len = 7 * 2 * AREA + HUGE;
        let raw = map(len, libc::MAP_PRIVATE);
        let base = raw.next_multiple_of(HUGE);
        // SAFETY: unmapping our own fresh reservation: only its addresses are wanted.
        unsafe { libc::munmap(raw as *mut libc::c_void, len) };
        let area = |slot: usize| base + slot * 2 * AREA;
        let fixed = |slot: usize, extra: i32| {
            // SAFETY: mapping over our own unmapped reservation.
            let at = unsafe {
                libc::mmap(
                    area(slot) as *mut libc::c_void,
                    AREA,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE | extra,
                    -1,
                    0,
                )
            };
            (at != libc::MAP_FAILED).then_some(at as usize)
        };
        let range = |a: usize| (a as u64, (a + AREA) as u64);
        let hot = fixed(0, 0).expect("the hot area");
        let cold = fixed(1, 0).expect("the cold area");
        let locked = odd.locked.then(|| fixed(2, 0).expect("the locked area"));
        // Mapped by the child: a private hugetlb mapping's reservation stays with its mapper.
        let hugetlb = odd.hugetlb.then(|| area(3));
        let prot_none = odd.prot_none.then(|| fixed(4, 0).expect("the PROT_NONE area"));
        let late = odd.lock_all.then(|| area(5));
        let read_only_file = odd.read_only_file.then(|| map_read_only_file(area(6)));
        for a in [hot, cold] {
            // Small pages: a THP would make a hot area's cold pages read hot (see `Child`).
            // SAFETY: advising our own mapping.
            unsafe { libc::madvise(a as *mut libc::c_void, AREA, libc::MADV_NOHUGEPAGE) };
        }
        let control = map(PAGE, libc::MAP_SHARED) as *mut AtomicU32;
        // SAFETY: the child touches memory, makes memory syscalls and _exits: fork-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let areas = OddAreas { hot, cold, locked, hugetlb, prot_none, late, read_only_file };
            // SAFETY: the child's own mappings.
            unsafe { run_odd_child(areas, odd, &*control) }
        }
        // SAFETY: a shared page that outlives the wait.
        let control = unsafe { &*control };
        let deadline = Instant::now() + Duration::from_secs(10);
        while control.load(Ordering::Acquire) != READY {
            assert!(Instant::now() < deadline, "child never got ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        Self {
            pid: pid as u32,
            hot: range(hot),
            cold: range(cold),
            locked: locked.map(range),
            hugetlb: hugetlb.map(range),
            prot_none: prot_none.map(range),
            late: late.map(range),
            read_only_file: read_only_file.map(range),
        }
    }
}

/// A fresh file of `AREA` bytes on disk (/var/tmp: not tmpfs), mapped read-only at `at`, and
/// unlinked: the mapping keeps it.
fn map_read_only_file(at: usize) -> usize {
    let dir = Some(std::path::PathBuf::from("/var/tmp")).filter(|d| d.is_dir());
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("udamon-odd-{}-{at:x}", std::process::id()));
    std::fs::write(&path, vec![1u8; AREA]).expect("the read-only file");
    let file = std::fs::File::open(&path).expect("the read-only file");
    let _ = std::fs::remove_file(&path);
    // SAFETY: mapping a file over our own unmapped reservation.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            AREA,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "cannot map the read-only file");
    p as usize
}

impl Drop for OddChild {
    fn drop(&mut self) {
        kill_and_reap(self.pid);
    }
}

struct OddAreas {
    hot: usize,
    cold: usize,
    locked: Option<usize>,
    hugetlb: Option<usize>,
    prot_none: Option<usize>,
    late: Option<usize>,
    read_only_file: Option<usize>,
}

unsafe fn run_odd_child(a: OddAreas, odd: Odd, control: &AtomicU32) -> ! {
    if let Some(at) = a.hugetlb {
        // SAFETY: mapping over the reservation's unmapped slot.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                AREA,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_FIXED_NOREPLACE
                    | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            // SAFETY: ending the child; the parent sees it never got ready.
            unsafe { libc::_exit(1) };
        }
    }
    let write = |area: usize| {
        for off in (0..AREA).step_by(PAGE) {
            // SAFETY: within one of the child's writable areas.
            unsafe { ((area + off) as *mut u8).write_volatile(1) };
        }
    };
    let started = Instant::now();
    let always: Vec<usize> = [Some(a.hot), a.locked, a.hugetlb].into_iter().flatten().collect();
    always.iter().chain([&a.cold]).chain(&a.prot_none).for_each(|&area| write(area));
    // SAFETY: locking and protecting the child's own areas.
    unsafe {
        if let Some(locked) = a.locked {
            libc::mlock(locked as *const libc::c_void, AREA);
        }
        if let Some(p) = a.prot_none {
            libc::mprotect(p as *mut libc::c_void, AREA, libc::PROT_NONE);
        }
    }
    let read = |area: usize| {
        for off in (0..AREA).step_by(PAGE) {
            // SAFETY: within the child's readable file mapping.
            unsafe { ((area + off) as *const u8).read_volatile() };
        }
    };
    a.read_only_file.into_iter().for_each(read);
    control.store(READY, Ordering::Release);
    let (mut locked_hot, mut late) = (false, None);
    loop {
        always.iter().for_each(|&area| write(area));
        a.read_only_file.into_iter().for_each(read);
        late.into_iter().for_each(write);
        if !locked_hot && odd.lock_hot_after.is_some_and(|after| started.elapsed() >= after) {
            locked_hot = true;
            // SAFETY: locking the child's own memory, and mapping a fresh area over a gap.
            unsafe {
                libc::mlock(a.hot as *const libc::c_void, AREA);
                if let Some(at) = a.late {
                    libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE);
                    let p = libc::mmap(
                        at as *mut libc::c_void,
                        AREA,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                        -1,
                        0,
                    );
                    late = (p != libc::MAP_FAILED).then_some(at);
                }
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Free 2 MiB huge pages for a test, the previous count restored when dropped (on failure too).
pub struct HugePages {
    before: String,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    /// `count` free huge pages, or None if the kernel cannot give them.
    pub fn reserve(count: u64) -> Option<Self> {
        let before = std::fs::read_to_string(NR_HUGEPAGES).ok()?.trim().to_owned();
        let wanted = before.parse::<u64>().ok()? + count;
        std::fs::write(NR_HUGEPAGES, wanted.to_string()).ok()?;
        let guard = Self { before };
        let free = std::fs::read_to_string("/proc/meminfo")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:")?.trim().parse::<u64>().ok())?;
        (free >= count).then_some(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.before);
    }
}

/// A sysfs or procfs setting changed for a test, put back when dropped (on failure too).
pub struct Knob {
    path: String,
    before: String,
}

impl Knob {
    /// Sets `path` to `value`; None if it cannot be read or written here.
    pub fn set(path: &str, value: &str) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        // A choice file reads `always [madvise] never`: the bracketed word is the setting.
        let before = match (text.find('['), text.find(']')) {
            (Some(open), Some(close)) if open < close => text[open + 1..close].to_owned(),
            _ => text.trim().to_owned(),
        };
        std::fs::write(path, value).ok()?;
        Some(Self { path: path.to_owned(), before })
    }
}

impl Drop for Knob {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.before);
    }
}

/// A forked child with a `len`-byte private anonymous area advised MADV_HUGEPAGE (so mTHP
/// sizes that are `madvise` fill it with large folios) and, if given, a shared mapping of
/// `file` (`len` bytes) placed `file_shift` bytes past a 2 MiB boundary: the first half of each
/// is written all the time, the second half once.
pub struct FolioChild {
    pub pid: u32,
    pub anon: (u64, u64),
    pub file: Option<(u64, u64)>,
}

impl FolioChild {
    pub fn spawn(len: usize, file: Option<(&std::fs::File, usize)>) -> Self {
        use std::os::fd::AsRawFd as _;
        let anon = map(len + HUGE, libc::MAP_PRIVATE).next_multiple_of(HUGE);
        // SAFETY: advising our own fresh mapping.
        unsafe { libc::madvise(anon as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        let file = file.map(|(file, shift)| {
            let at = map(len + 2 * HUGE, libc::MAP_PRIVATE).next_multiple_of(HUGE) + shift;
            // SAFETY: mapping the file over part of our own fresh reservation.
            let p = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED, "cannot map the file");
            at
        });
        let control = map(PAGE, libc::MAP_SHARED) as *mut AtomicU32;
        // SAFETY: the child only writes memory and sleeps, then is killed: fork-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let areas: Vec<usize> = std::iter::once(anon).chain(file).collect();
            let write = |from: usize, to: usize| {
                for at in (from..to).step_by(PAGE) {
                    // SAFETY: within the child's writable areas.
                    unsafe { (at as *mut u8).write_volatile(1) };
                }
            };
            areas.iter().for_each(|&a| write(a, a + len));
            // SAFETY: the shared control page.
            unsafe { (*control).store(READY, Ordering::Release) };
            loop {
                areas.iter().for_each(|&a| write(a, a + len / 2));
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        // SAFETY: a shared page that outlives the wait.
        let control = unsafe { &*control };
        let deadline = Instant::now() + Duration::from_secs(10);
        while control.load(Ordering::Acquire) != READY {
            assert!(Instant::now() < deadline, "child never got ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        let range = |a: usize| (a as u64, (a + len) as u64);
        Self { pid: pid as u32, anon: range(anon), file: file.map(range) }
    }
}

impl Drop for FolioChild {
    fn drop(&mut self) {
        kill_and_reap(self.pid);
    }
}
