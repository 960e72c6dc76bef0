//! udamon's integration tests: the real eBPF object in the running kernel. The tests live in
//! `tests/`; privileged ones call `damon_user::test_support::privileged` first. This library
//! holds what they share: a child process with a known memory layout.

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

fn map(len: usize, flags: i32) -> usize {
    // SAFETY: a fresh anonymous mapping.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap failed");
    addr as usize
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
