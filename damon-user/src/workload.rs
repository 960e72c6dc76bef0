//! The demo workload (`udamon workload`, run by `udamon demo`): a process whose memory layout and
//! access pattern are known, so that what udamon reports can be checked against it.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
const HUGE: usize = 2 * MIB;

/// One known area of the workload's memory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Area {
    pub name: String,
    pub start: u64,
    pub end: u64,
    /// Written continuously from the start.
    pub hot: bool,
    /// Written continuously from this many milliseconds after the start (the phase change).
    pub hot_after_ms: Option<u64>,
}

impl Area {
    /// Whether the area is written continuously at `elapsed` since the workload started.
    pub fn hot_at(&self, elapsed: Duration) -> bool {
        self.hot || self.hot_after_ms.is_some_and(|ms| elapsed >= Duration::from_millis(ms))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layout {
    pub pid: u32,
    pub areas: Vec<Area>,
}

impl Layout {
    /// The area holding most of `[start, end)`, if any.
    pub fn label(&self, start: u64, end: u64) -> Option<&str> {
        self.areas
            .iter()
            .map(|a| (a, end.min(a.end).saturating_sub(start.max(a.start))))
            .filter(|&(_, overlap)| overlap > 0)
            .max_by_key(|&(_, overlap)| overlap)
            .map(|(a, _)| a.name.as_str())
    }
}

fn map(len: usize, fd: i32) -> Result<usize> {
    let (flags, fd) =
        if fd < 0 { (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1) } else { (libc::MAP_SHARED, fd) };
    // SAFETY: a fresh mapping; no existing memory is affected.
    let addr = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0)
    };
    if addr == libc::MAP_FAILED {
        bail!("mmap of {} MiB failed: {}", len / MIB, std::io::Error::last_os_error());
    }
    Ok(addr as usize)
}

/// Maps the areas, prints the layout as one JSON line on stdout, then writes the hot areas, with
/// the hole turning hot after `phase_change`. Runs until killed.
pub fn run(phase_change: Duration) -> Result<()> {
    let hot = map(64 * MIB, -1)?;
    let cold = map(64 * MIB, -1)?;
    let thp_raw = map(32 * MIB + HUGE, -1)?;
    let thp = thp_raw.next_multiple_of(HUGE);
    // SAFETY: advising a mapping of our own.
    unsafe { libc::madvise(thp as *mut libc::c_void, 32 * MIB, libc::MADV_HUGEPAGE) };
    let path = std::env::temp_dir().join(format!("udamon-workload-{}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let _ = std::fs::remove_file(&path); // the mapping keeps it alive
    file.set_len(16 * MIB as u64)?;
    let file_area = map(16 * MIB, file.as_raw_fd())?;
    let area = |name: &str, start: usize, len: usize, hot: bool, hot_after_ms: Option<u64>| Area {
        name: name.into(),
        start: start as u64,
        end: (start + len) as u64,
        hot,
        hot_after_ms,
    };
    let after = Some(phase_change.as_millis() as u64);
    let layout = Layout {
        pid: std::process::id(),
        areas: vec![
            area("hot", hot, 16 * MIB, true, None),
            area("hole", hot + 16 * MIB, 16 * MIB, false, after),
            area("hot", hot + 32 * MIB, 32 * MIB, true, None),
            area("cold", cold, 64 * MIB, false, None),
            area("thp", thp, 32 * MIB, true, None),
            area("file", file_area, 16 * MIB, true, None),
        ],
    };
    let write = |start: u64, end: u64| {
        for page in (start..end).step_by(PAGE) {
            // SAFETY: within a writable mapping of our own.
            unsafe { (page as *mut u8).write_volatile(1) };
        }
    };
    // Cold memory is touched once, then left alone; the hole is first touched when it turns hot,
    // so its phase change also shows as page faults.
    layout.areas.iter().filter(|a| a.hot_after_ms.is_none()).for_each(|a| write(a.start, a.end));
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(&layout)?)?;
    stdout.flush()?;
    let started = Instant::now();
    loop {
        let elapsed = started.elapsed();
        layout.areas.iter().filter(|a| a.hot_at(elapsed)).for_each(|a| write(a.start, a.end));
        // A pause leaves the other core to the monitor; every hot page is still written
        // several times per 5 ms sample interval.
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// A memory-bound loop for overhead measurements: sweeps `size` bytes, reading and writing
/// every cache line, and prints the sweeps completed in each second on stdout. Runs until killed.
pub fn memory_loop(size: usize) -> Result<()> {
    let area = map(size, -1)?;
    let mut stdout = std::io::stdout().lock();
    let mut second = Instant::now();
    let mut sweeps = 0u64;
    loop {
        for line in (area..area + size).step_by(64) {
            // SAFETY: within a writable mapping of our own.
            unsafe {
                let p = line as *mut u64;
                p.write_volatile(p.read_volatile().wrapping_add(1));
            }
        }
        sweeps += 1;
        if second.elapsed() >= Duration::from_secs(1) {
            writeln!(stdout, "{sweeps}")?;
            stdout.flush()?;
            sweeps = 0;
            second = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_regions_by_their_biggest_overlap() {
        let a = |name: &str, start, end| Area {
            name: name.into(),
            start,
            end,
            hot: true,
            hot_after_ms: None,
        };
        let layout = Layout { pid: 1, areas: vec![a("hot", 0, 100), a("cold", 100, 200)] };
        assert_eq!(layout.label(90, 150), Some("cold"));
        assert_eq!(layout.label(0, 10), Some("hot"));
        assert_eq!(layout.label(300, 400), None);
        let hole = Area { hot: false, hot_after_ms: Some(4000), ..a("hole", 0, 1) };
        assert!(!hole.hot_at(Duration::from_secs(3)) && hole.hot_at(Duration::from_secs(4)));
    }
}
