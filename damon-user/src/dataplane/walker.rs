//! Drives the eBPF walker: fills a request, makes the sampler's `process_madvise` call that fires
//! it, and reads the records back from the ring buffer; and clears accessed bits.

use std::{
    cell::Cell,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};
use bytes::Buf as _;
use damon_common::{MAX_WALK, WalkConfig, WalkRecord, WalkRequest, WalkResult, WalkStats, names};

use super::{
    DataPlaneError,
    layout::Layout,
    leaf::Leaf,
    object::{KernelTypes, take_map},
};
use crate::sys::pidfd::PidFd;

/// A range `process_madvise` can take without effect: page 0 is never mapped (mmap_min_addr),
/// so the call takes the mmap lock, fires the walk, and fails harmlessly with ENOMEM.
const NOTHING: libc::iovec = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 4096 };

/// Ranges of the target's address space for `process_madvise`. The pointers are the target's
/// addresses, never dereferenced here, so the buffer may move to the sampler thread.
struct Iovecs(Vec<libc::iovec>);

// SAFETY: see above; the pointers are plain numbers in this process.
unsafe impl Send for Iovecs {}

/// Where the sampler's time in system calls goes.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CallTimes {
    /// Filling walk requests and the walk-only calls (the kernel's walk included).
    pub walking: Duration,
    /// The clearing calls.
    pub clearing: Duration,
    pub cleared_pages: u64,
}

/// A range the kernel refused to clear, and its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub addr: u64,
    pub len: u64,
    pub errno: i32,
}

impl From<Refusal> for DataPlaneError {
    fn from(r: Refusal) -> Self {
        Self::Refused { addr: r.addr, len: r.len, errno: r.errno }
    }
}

pub struct Walker {
    times: CallTimes,
    config: Array<MapData, WalkConfig>,
    results: RingBuf<MapData>,
    stats: PerCpuArray<MapData, WalkStats>,
    current: WalkConfig,
    /// Read by the walker straight from our memory: it must not move (a box's contents do not).
    request: Box<WalkRequest>,
    iovecs: Iovecs,
    layout: Layout,
    /// Keeps the programs attached.
    _object: Arc<Ebpf>,
}

thread_local! {
    /// This thread's id: the walker answers the thread that calls (a syscall saved per walk).
    static TID: Cell<u32> = const { Cell::new(0) };
}

fn current_tid() -> u32 {
    TID.with(|tid| {
        if tid.get() == 0 {
            // SAFETY: gettid cannot fail.
            tid.set(unsafe { libc::gettid() } as u32);
        }
        tid.get()
    })
}

/// Attaches the walk program; its maps go to the walker built by `finish`.
pub(crate) fn attach(bpf: &mut Ebpf, types: &KernelTypes) -> Result<()> {
    let program: &mut BtfTracePoint =
        bpf.program_mut(names::WALK_ON_LOCK).context("eBPF object has no walker")?.try_into()?;
    super::refused::load(
        program.load(names::MMAP_LOCK_TRACEPOINT, &types.btf),
        names::WALK_ON_LOCK,
        &format!("the page-table walker (tp_btf {})", names::MMAP_LOCK_TRACEPOINT),
    )?;
    program.attach().context("cannot attach the page-table walker")?;
    Ok(())
}

/// The walker's maps, taken from the object before it is shared.
pub(crate) struct WalkMaps {
    config: Array<MapData, WalkConfig>,
    results: RingBuf<MapData>,
    stats: PerCpuArray<MapData, WalkStats>,
}

impl WalkMaps {
    pub fn take(bpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            config: Array::try_from(take_map(bpf, names::WALK_CONFIG)?)?,
            results: RingBuf::try_from(take_map(bpf, names::WALK_RESULTS)?)?,
            stats: PerCpuArray::try_from(take_map(bpf, names::WALK_STATS)?)?,
        })
    }

    pub fn into_walker(self, layout: Layout, object: Arc<Ebpf>) -> Walker {
        let request =
            Box::new(WalkRequest { seq: 0, count: 0, prepared_from: 0, addrs: [0; MAX_WALK] });
        // Resident, so the walker's reads of it never fault (best effort: a lost walk reads
        // unknown and is reported).
        // SAFETY: locking our own allocation, which lives as long as the walker.
        unsafe {
            libc::mlock((&raw const *request).cast(), size_of::<WalkRequest>());
        }
        let current = WalkConfig {
            sampler_tid: 0,
            levels: layout.levels,
            page_offset_base: layout.page_offset_base,
            mm_pgd_offset: layout.offsets.mm_pgd,
            task_mm_offset: layout.offsets.task_mm,
            request_addr: &raw const *request as u64,
            done_seq: 0,
            folio: layout.folio.unwrap_or_default(),
        };
        Walker {
            times: CallTimes::default(),
            config: self.config,
            results: self.results,
            stats: self.stats,
            current,
            request,
            iovecs: Iovecs(Vec::with_capacity(MAX_WALK)),
            layout,
            _object: object,
        }
    }
}

impl Walker {
    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn call_times(&self) -> CallTimes {
        self.times
    }

    /// Walk totals since start.
    pub fn stats(&self) -> Result<WalkStats, DataPlaneError> {
        let per_cpu = self.stats.get(&0, 0).map_err(|err| map_error(names::WALK_STATS, err))?;
        Ok(per_cpu.iter().fold(WalkStats::default(), |a, s| WalkStats {
            walks: a.walks + s.walks,
            addresses: a.addresses + s.addresses,
            nanoseconds: a.nanoseconds + s.nanoseconds,
            lost: a.lost + s.lost,
        }))
    }

    /// Reads the page-table leaves of `addrs` in the target, into `out` (same order), changing
    /// nothing: the lock is taken by a call on an empty range. The folios of the pages from
    /// `prepared_from` on (those to be cleared) are looked up too.
    pub fn walk(
        &mut self,
        target: &PidFd,
        addrs: &[u64],
        prepared_from: usize,
        out: &mut Vec<Leaf>,
    ) -> Result<(), DataPlaneError> {
        out.clear();
        out.resize(addrs.len(), Leaf::Missing);
        for (k, (chunk, leaves)) in addrs.chunks(MAX_WALK).zip(out.chunks_mut(MAX_WALK)).enumerate()
        {
            let started = Instant::now();
            self.request(chunk, prepared_from.saturating_sub(k * MAX_WALK))?;
            match target.madvise_cold(&[NOTHING]) {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOMEM) => {}
                Err(err) => return Err(DataPlaneError::syscall("process_madvise", &err)),
            }
            self.times.walking += started.elapsed();
            self.collect(leaves);
        }
        Ok(())
    }

    /// Clears the accessed bits of `pages` (`(address, page size)`): the whole page is advised,
    /// so a huge page is never split. Ranges the kernel refuses are skipped and added to
    /// `refused`; the others are cleared all the same.
    pub fn clear(
        &mut self,
        target: &PidFd,
        pages: &[(u64, u64)],
        refused: &mut Vec<Refusal>,
    ) -> Result<(), DataPlaneError> {
        for chunk in pages.chunks(MAX_WALK) {
            self.iovecs.0.clear();
            self.iovecs.0.extend(chunk.iter().map(|&(addr, size)| libc::iovec {
                iov_base: (addr / size * size) as *mut libc::c_void,
                iov_len: size as usize,
            }));
            let started = Instant::now();
            let result = advise(target, &self.iovecs.0, refused);
            self.times.clearing += started.elapsed();
            self.times.cleared_pages += chunk.len() as u64;
            result?;
        }
        Ok(())
    }

    /// Hands `addrs` to the walker for the next lock this thread takes on another process: in
    /// our own memory, which the walker reads (no system call).
    fn request(&mut self, addrs: &[u64], prepared_from: usize) -> Result<(), DataPlaneError> {
        let tid = current_tid();
        if self.current.sampler_tid != tid {
            self.current.sampler_tid = tid;
            self.config
                .set(0, self.current, 0)
                .map_err(|err| map_error(names::WALK_CONFIG, err))?;
        }
        let request = &mut *self.request;
        request.seq += 1;
        request.count = addrs.len() as u64;
        request.prepared_from = prepared_from.min(addrs.len()) as u64;
        request.addrs[..addrs.len()].copy_from_slice(addrs);
        // The kernel reads the request during the coming system call: the stores come first.
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn collect(&mut self, leaves: &mut [Leaf]) {
        while let Some(item) = self.results.next() {
            let Some(record) = parse_record(&item) else { continue };
            let first = record.first as usize;
            let count = (record.count as usize).min(record.results.len());
            if let Some(slots) = leaves.get_mut(first..first + count) {
                for (slot, result) in slots.iter_mut().zip(&record.results) {
                    *slot = Leaf::from_result(result);
                }
            }
        }
    }
}

fn map_error(map: &'static str, err: aya::maps::MapError) -> DataPlaneError {
    DataPlaneError::Map { map, error: err.to_string() }
}

/// A `WalkRecord` from a ring item (native byte order, the eBPF side's layout); `None` if short.
fn parse_record(mut bytes: &[u8]) -> Option<WalkRecord> {
    if bytes.len() < size_of::<WalkRecord>() {
        return None;
    }
    let (first, count) = (bytes.get_u32_ne(), bytes.get_u32_ne());
    let results = std::array::from_fn(|_| {
        let (leaf, folio) = (bytes.get_u32_ne(), bytes.get_u32_ne());
        WalkResult { leaf, folio, entry: bytes.get_u64_ne() }
    });
    Some(WalkRecord { first, count, results })
}

/// `process_madvise(MADV_COLD)` over all of `iovecs`. A call stops at the first range it cannot
/// advise; the rest are advised by the next call. A range unmapped since it was chosen is
/// skipped (ENOMEM), one the kernel refuses is skipped and recorded; an exit or any other
/// failure ends the clear.
fn advise(
    target: &PidFd,
    iovecs: &[libc::iovec],
    refused: &mut Vec<Refusal>,
) -> Result<(), DataPlaneError> {
    let mut remaining = iovecs;
    while let Some(first) = remaining.first() {
        match target.madvise_cold(remaining) {
            Ok(advised) => {
                let mut done = 0;
                let failed = remaining.iter().position(|v| {
                    done += v.iov_len;
                    done > advised
                });
                // The next call starts at the failed range, to learn why it failed.
                remaining = failed.map_or(&[], |i| &remaining[i..]);
            }
            Err(err) => match err.raw_os_error() {
                Some(libc::ENOMEM) => remaining = &remaining[1..],
                Some(errno @ (libc::EINVAL | libc::EPERM | libc::EACCES)) => {
                    let (addr, len) = (first.iov_base as u64, first.iov_len as u64);
                    refused.push(Refusal { addr, len, errno });
                    remaining = &remaining[1..];
                }
                _ => return Err(DataPlaneError::syscall("process_madvise", &err)),
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_from_their_bytes() {
        let results = [WalkResult::default(); damon_common::WALK_BATCH];
        let mut record = WalkRecord { first: 32, count: 2, results };
        record.results[1] = WalkResult { leaf: 2, folio: 1 << 31 | 4, entry: 0x1234_5067 };
        // SAFETY: a plain-data record viewed as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const record).cast::<u8>(), size_of::<WalkRecord>())
        };
        let parsed = parse_record(bytes).unwrap();
        assert_eq!((parsed.first, parsed.count), (32, 2));
        assert_eq!(parsed.results[1], record.results[1]);
        assert!(parse_record(&bytes[..20]).is_none());
    }
}
