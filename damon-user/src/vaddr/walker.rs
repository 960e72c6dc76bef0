//! Drives the eBPF walker: fills a request, makes the sampler's `process_madvise` call that fires
//! it, and reads the records back from the ring buffer; and clears accessed bits.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};
use damon_common::{MAX_WALK, WalkConfig, WalkRecord, WalkRequest, WalkStats};

use super::{
    layout::{self, Layout},
    leaf::Leaf,
};
use crate::{ebpf, pidfd::PidFd};

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

pub struct Walker {
    times: CallTimes,
    config: Array<MapData, WalkConfig>,
    request_map: Array<MapData, WalkRequest>,
    results: RingBuf<MapData>,
    stats: PerCpuArray<MapData, WalkStats>,
    current: WalkConfig,
    request: Box<WalkRequest>,
    iovecs: Iovecs,
    layout: Layout,
    /// Keeps the programs attached.
    _bpf: Ebpf,
}

impl Walker {
    pub fn new() -> Result<Self> {
        let btf = ebpf::kernel_btf()?;
        let mut bpf = ebpf::load(Some(&btf))?;
        let layout = layout::discover(&mut bpf)?;
        let program: &mut BtfTracePoint =
            bpf.program_mut("walk_on_lock").context("eBPF object has no walker")?.try_into()?;
        program
            .load("mmap_lock_acquire_returned", &btf)
            .context("cannot load the page-table walker (tp_btf mmap_lock_acquire_returned)")?;
        program.attach().context("cannot attach the page-table walker")?;
        let mut take = |name: &str| ebpf::take_map(&mut bpf, name);
        let (config, request_map, results, stats) = (
            take("WALK_CONFIG")?,
            take("WALK_REQUEST")?,
            take("WALK_RESULTS")?,
            take("WALK_STATS")?,
        );
        let current = WalkConfig {
            sampler_tid: 0,
            levels: layout.levels,
            page_offset_base: layout.page_offset_base,
            mm_pgd_offset: layout.mm_pgd_offset,
            task_mm_offset: layout.task_mm_offset,
        };
        Ok(Self {
            times: CallTimes::default(),
            config: Array::try_from(config)?,
            request_map: Array::try_from(request_map)?,
            results: RingBuf::try_from(results)?,
            stats: PerCpuArray::try_from(stats)?,
            current,
            request: Box::new(WalkRequest { seq: 0, done: 0, count: 0, addrs: [0; MAX_WALK] }),
            iovecs: Iovecs(Vec::with_capacity(MAX_WALK)),
            layout,
            _bpf: bpf,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn call_times(&self) -> CallTimes {
        self.times
    }

    /// Walk totals since start.
    pub fn stats(&self) -> Result<WalkStats> {
        let per_cpu = self.stats.get(&0, 0).context("cannot read the walk statistics")?;
        Ok(per_cpu.iter().fold(WalkStats::default(), |a, s| WalkStats {
            walks: a.walks + s.walks,
            addresses: a.addresses + s.addresses,
            nanoseconds: a.nanoseconds + s.nanoseconds,
            lost: a.lost + s.lost,
        }))
    }

    /// Reads the page-table leaves of `addrs` in the target, into `out` (same order), changing
    /// nothing: the lock is taken by a call on an empty range.
    pub fn walk(&mut self, target: &PidFd, addrs: &[u64], out: &mut Vec<Leaf>) -> Result<()> {
        out.clear();
        out.resize(addrs.len(), Leaf::Missing);
        for (chunk, leaves) in addrs.chunks(MAX_WALK).zip(out.chunks_mut(MAX_WALK)) {
            let started = Instant::now();
            self.request(chunk)?;
            self.iovecs.0.clear();
            self.iovecs.0.push(NOTHING);
            advise(target, &self.iovecs.0)?;
            self.times.walking += started.elapsed();
            self.collect(leaves);
        }
        Ok(())
    }

    /// Clears the accessed bits of `pages` (`(address, page size)`): the whole page is advised,
    /// so a huge page is never split.
    pub fn clear(&mut self, target: &PidFd, pages: &[(u64, u64)]) -> Result<()> {
        for chunk in pages.chunks(MAX_WALK) {
            self.iovecs.0.clear();
            self.iovecs.0.extend(chunk.iter().map(|&(addr, size)| libc::iovec {
                iov_base: (addr / size * size) as *mut libc::c_void,
                iov_len: size as usize,
            }));
            let started = Instant::now();
            advise(target, &self.iovecs.0)?;
            self.times.clearing += started.elapsed();
            self.times.cleared_pages += chunk.len() as u64;
        }
        Ok(())
    }

    /// Hands `addrs` to the walker for the next lock this thread takes on another process.
    fn request(&mut self, addrs: &[u64]) -> Result<()> {
        // The walker answers one thread: whichever calls.
        // SAFETY: gettid cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        if self.current.sampler_tid != tid {
            self.current.sampler_tid = tid;
            self.config.set(0, self.current, 0).context("cannot configure the walker")?;
        }
        let request = &mut *self.request;
        request.seq += 1;
        request.done = 0;
        request.count = addrs.len() as u64;
        request.addrs[..addrs.len()].copy_from_slice(addrs);
        self.request_map.set(0, *request, 0).context("cannot send the walk request")
    }

    fn collect(&mut self, leaves: &mut [Leaf]) {
        while let Some(item) = self.results.next() {
            if item.len() < size_of::<WalkRecord>() {
                continue;
            }
            // SAFETY: the walker wrote a whole record; ring items are only 8-byte aligned.
            let record = unsafe { item.as_ptr().cast::<WalkRecord>().read_unaligned() };
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

/// `process_madvise(MADV_COLD)` over all of `iovecs`. A call stops at the first range it cannot
/// advise (unmapped since it was chosen): that one is skipped and the rest advised.
fn advise(target: &PidFd, iovecs: &[libc::iovec]) -> Result<()> {
    let mut remaining = iovecs;
    while !remaining.is_empty() {
        match target.madvise_cold(remaining) {
            Ok(advised) => {
                let mut done = 0;
                let failed = remaining.iter().position(|v| {
                    done += v.iov_len;
                    done > advised
                });
                remaining = failed.map_or(&[], |i| &remaining[i + 1..]);
            }
            Err(err) if err.raw_os_error() == Some(libc::ENOMEM) => remaining = &remaining[1..],
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => bail!("the process has exited"),
            Err(err) => return Err(err).context("process_madvise failed"),
        }
    }
    Ok(())
}
