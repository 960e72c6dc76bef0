//! Drives the eBPF walker: fills the request array, test-runs the walk program (one system call
//! for every target), and reads the results back; and clears accessed bits.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use damon_common::{
    LEAF_UNSET, WALK_CAPACITY, WALK_FOLIO, WalkConfig, WalkResult, WalkSegment, WalkStats, names,
};

use super::{
    DataPlaneError,
    address_space::AddressSpace,
    layout::{Layout, Peek},
    leaf::Leaf,
    object::{KernelTypes, take_map},
    shared::SharedArray,
};
use crate::sys::pidfd::PidFd;

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

/// `process_madvise` takes at most this many ranges per call.
const IOV_MAX: usize = 1024;

/// What one walk is asked: runs of addresses, each in one address space.
#[derive(Default)]
pub struct Request {
    /// Each run's address space (its `mm`) and where its pages start.
    runs: Vec<(u64, usize)>,
    /// Page addresses, with `WALK_FOLIO` in their low bits.
    pages: Vec<u64>,
}

impl Request {
    pub fn clear(&mut self) {
        self.runs.clear();
        self.pages.clear();
    }

    /// Addresses pushed from now on lie in `space`.
    pub fn space(&mut self, space: &AddressSpace) {
        self.runs.push((space.mm(), self.pages.len()));
    }

    /// Adds `addr`, in the last space given; `folio`: it is to be cleared next, so its folio
    /// is looked up too.
    pub fn push(&mut self, addr: u64, folio: bool) {
        debug_assert!(!self.runs.is_empty(), "an address before its space");
        self.pages.push(addr & !0xfff | if folio { WALK_FOLIO } else { 0 });
    }

    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The runs as `(mm, pages)`.
    fn runs(&self) -> impl Iterator<Item = (u64, &[u64])> {
        let ends = self.runs.iter().skip(1).map(|&(_, start)| start).chain([self.pages.len()]);
        self.runs.iter().zip(ends).map(|(&(mm, start), end)| (mm, &self.pages[start..end]))
    }
}

pub struct Walker {
    times: CallTimes,
    stats: PerCpuArray<MapData, WalkStats>,
    segments: SharedArray<WalkSegment>,
    addrs: SharedArray<u64>,
    out: SharedArray<WalkResult>,
    iovecs: Iovecs,
    layout: Layout,
    /// Holds the walk and peek programs.
    object: Arc<Ebpf>,
}

/// Loads the walk program and sets its configuration; its maps go to the walker built by
/// `WalkMaps::into_walker`.
pub(crate) fn load(bpf: &mut Ebpf, types: &KernelTypes, layout: &Layout) -> Result<()> {
    let program: &mut RawTracePoint =
        bpf.program_mut(names::WALK).context("eBPF object has no walker")?.try_into()?;
    super::refused::load(program.load(), names::WALK, "the page-table walker (raw_tp)")?;
    let mut config: Array<_, WalkConfig> = Array::try_from(
        bpf.map_mut(names::WALK_CONFIG).context("eBPF object has no WALK_CONFIG map")?,
    )?;
    let walk = WalkConfig {
        levels: layout.levels,
        _pad: 0,
        page_offset_base: layout.page_offset_base,
        mm_pgd_offset: types.offsets.mm_pgd,
        mm_users_offset: types.offsets.mm_users,
        folio: layout.folio.unwrap_or_default(),
    };
    config.set(0, walk, 0).context("cannot configure the page-table walker")?;
    Ok(())
}

/// The walker's maps, taken from the object before it is shared.
pub(crate) struct WalkMaps {
    stats: PerCpuArray<MapData, WalkStats>,
    segments: SharedArray<WalkSegment>,
    addrs: SharedArray<u64>,
    out: SharedArray<WalkResult>,
}

impl WalkMaps {
    pub fn take(bpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            stats: PerCpuArray::try_from(take_map(bpf, names::WALK_STATS)?)?,
            segments: SharedArray::map(names::WALK_SEGMENTS, take_map(bpf, names::WALK_SEGMENTS)?)?,
            addrs: SharedArray::map(names::WALK_ADDRS, take_map(bpf, names::WALK_ADDRS)?)?,
            out: SharedArray::map(names::WALK_OUT, take_map(bpf, names::WALK_OUT)?)?,
        })
    }

    pub fn into_walker(self, layout: Layout, object: Arc<Ebpf>) -> Walker {
        Walker {
            times: CallTimes::default(),
            stats: self.stats,
            segments: self.segments,
            addrs: self.addrs,
            out: self.out,
            iovecs: Iovecs(Vec::with_capacity(IOV_MAX)),
            layout,
            object,
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
        }))
    }

    /// Process `pid`'s address space, for walks.
    pub fn address_space(&self, pid: u32) -> Result<AddressSpace> {
        AddressSpace::open(pid, &Peek::of(&self.object)?, &self.layout.offsets)
    }

    /// Reads the page-table leaves of the request's addresses into `out` (same order),
    /// changing nothing; the folios of the pages to be cleared are looked up too. One system
    /// call per `WALK_CAPACITY` addresses.
    pub fn walk(&mut self, request: &Request, out: &mut Vec<Leaf>) -> Result<(), DataPlaneError> {
        out.clear();
        let started = Instant::now();
        let result = self.walk_runs(request, out);
        self.times.walking += started.elapsed();
        result
    }

    fn walk_runs(&mut self, request: &Request, out: &mut Vec<Leaf>) -> Result<(), DataPlaneError> {
        let (mut segments, mut pages) = (0, 0);
        for (mm, mut run) in request.runs() {
            while !run.is_empty() {
                let take = run.len().min(WALK_CAPACITY - pages);
                self.segments.as_mut_slice()[segments] =
                    WalkSegment { mm, first: pages as u32, count: take as u32 };
                self.addrs.as_mut_slice()[pages..pages + take].copy_from_slice(&run[..take]);
                (segments, pages, run) = (segments + 1, pages + take, &run[take..]);
                if pages == WALK_CAPACITY || segments == WALK_CAPACITY {
                    self.run(segments, pages, out)?;
                    (segments, pages) = (0, 0);
                }
            }
        }
        if pages > 0 {
            self.run(segments, pages, out)?;
        }
        Ok(())
    }

    /// Walks the first `segments` segments, `pages` addresses in all, and appends their leaves.
    fn run(
        &mut self,
        segments: usize,
        pages: usize,
        out: &mut Vec<Leaf>,
    ) -> Result<(), DataPlaneError> {
        self.out.as_mut_slice()[..pages].iter_mut().for_each(|r| r.leaf = LEAF_UNSET);
        let program: &RawTracePoint = self
            .object
            .program(names::WALK)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataPlaneError::Map { map: names::WALK, error: "no walk program".into() })?;
        let mut options = RawTracePointRunOptions::new();
        options.args[0] = segments as u64;
        options.args[1] = pages as u64;
        if let Err(err) = program.test_run(options) {
            let errno = match err {
                aya::programs::ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
                _ => None,
            };
            return Err(DataPlaneError::Syscall {
                call: "BPF_PROG_TEST_RUN",
                errno: errno.unwrap_or(0),
            });
        }
        out.extend(self.out.as_slice()[..pages].iter().map(Leaf::from_result));
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
        for chunk in pages.chunks(IOV_MAX) {
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
}

fn map_error(map: &'static str, err: aya::maps::MapError) -> DataPlaneError {
    DataPlaneError::Map { map, error: err.to_string() }
}

/// `process_madvise(MADV_COLD)` over all of `iovecs` (see `PidFd::advise_all`): ranges the
/// kernel refuses are recorded; an exit or any other failure ends the clear.
fn advise(
    target: &PidFd,
    iovecs: &[libc::iovec],
    refused: &mut Vec<Refusal>,
) -> Result<(), DataPlaneError> {
    let refuse = |v: &libc::iovec, errno| {
        refused.push(Refusal { addr: v.iov_base as u64, len: v.iov_len as u64, errno });
    };
    target
        .advise_all(iovecs, libc::MADV_COLD, refuse)
        .map(drop)
        .map_err(|err| DataPlaneError::syscall("process_madvise", &err))
}
