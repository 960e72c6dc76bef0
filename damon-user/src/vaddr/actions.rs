//! DAMOS actions on a process's memory: `process_madvise` with the action's advice, or
//! `move_pages` for migrations, over the parts of a region the action may touch.
//!
//! Without harm to the process: mappings the advice refuses (locked, hugetlb, PFN-mapped
//! memory for COLD and PAGEOUT) are left out rather than failing the call; a range's ends are
//! moved inwards off any large folio or huge page that straddles them, since advising part of
//! one splits it (COLLAPSE works on whole 2 MiB-aligned ranges, which it is given). Filters on
//! pages (anon, unmapped, memcg, active, hugepage_size) are read from pagemap and, for the
//! frames it names, `/proc/kpagecgroup` and `/proc/kpageflags`.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    sync::OnceLock,
};

use damon_common::{FOLIO_LOOKED_UP, x86::PMD_SIZE};
use damon_engine::schemes::{Action, Applied, Filter, FilterKind, Scheme, passes};

use crate::{
    dataplane::{
        AddressSpace, Walker,
        leaf::{Folio, Leaf},
        walker::Request,
    },
    sys::{pagemap::Entry, pidfd::PidFd, proc_maps::Mapping},
};

const PAGE: u64 = 4096;
/// Pagemap entries read per call: 512 KiB of entries cover 256 MiB.
const ENTRIES_PER_READ: usize = 64 << 10;
/// `process_madvise` takes at most this many ranges per call.
const IOV_MAX: usize = 1024;
/// `move_pages`: move the pages mapped by this process only (not shared ones).
const MPOL_MF_MOVE: libc::c_int = 1 << 1;

/// How an action is performed on another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Nothing to do (`stat`).
    Nothing,
    Advise(libc::c_int),
    /// `move_pages` to the scheme's node.
    Migrate,
}

/// How udamon performs `action`; `Err`: why it cannot.
pub fn how(action: Action) -> Result<How, &'static str> {
    match action {
        Action::Stat => Ok(How::Nothing),
        Action::Cold => Ok(How::Advise(libc::MADV_COLD)),
        Action::Pageout => Ok(How::Advise(libc::MADV_PAGEOUT)),
        Action::Willneed => Ok(How::Advise(libc::MADV_WILLNEED)),
        Action::Collapse => Ok(How::Advise(libc::MADV_COLLAPSE)),
        Action::MigrateHot | Action::MigrateCold => Ok(How::Migrate),
        Action::Hugepage | Action::Nohugepage => Err(
            "process_madvise does not take MADV_HUGEPAGE or MADV_NOHUGEPAGE: only the process itself can set them (`collapse` makes huge pages from outside)",
        ),
        Action::LruPrio => Err("no system call activates another process's pages"),
        Action::LruDeprio => {
            Err("use `cold`: MADV_COLD deactivates the pages, which is what lru_deprio does")
        }
    }
}

/// Whether `action` may be asked for in `m` at all: the advice would fail there (COLD and
/// PAGEOUT refuse locked, hugetlb and PFN-mapped memory; COLLAPSE hugetlb and PFN maps).
fn allowed(action: Action, m: &Mapping) -> bool {
    match action {
        Action::Cold | Action::Pageout => m.clearable(),
        _ => !(m.flags.hugetlb || m.flags.pfnmap),
    }
}

/// Buffers kept between applications, and cgroup inodes looked up once.
#[derive(Default)]
pub struct Scratch {
    request: Request,
    leaves: Vec<Leaf>,
    entries: Vec<Entry>,
    runs: Vec<(u64, u64)>,
    memcgs: HashMap<String, Option<u64>>,
}

/// What one application did, and what went wrong on the way.
pub struct Outcome {
    pub applied: Applied,
    /// Ranges the kernel refused, as (address, errno).
    pub refused: Vec<(u64, i32)>,
}

/// The process the action is applied to.
pub struct Process<'a> {
    pub pid: u32,
    pub pidfd: &'a PidFd,
    pub space: &'a AddressSpace,
    pub mappings: &'a [Mapping],
}

/// Applies `action` to `range` of the process, where `filters` (the operations' own) let it.
pub fn apply(
    walker: &mut Walker,
    scratch: &mut Scratch,
    process: &Process,
    range: (u64, u64),
    scheme: &Scheme,
    filters: &[&Filter],
) -> io::Result<Outcome> {
    let action = scheme.action;
    let mut outcome = Outcome { applied: Applied::default(), refused: Vec::new() };
    let Ok(how) = how(action) else { return Ok(outcome) };
    scratch.runs.clear();
    let first = process.mappings.partition_point(|m| m.end <= range.0);
    let overlapping = process.mappings[first..].iter().take_while(|m| m.start < range.1);
    for m in overlapping.filter(|m| allowed(action, m)) {
        scratch.runs.push((range.0.max(m.start), range.1.min(m.end)));
    }
    outcome.applied.tried = scratch.runs.iter().map(|r| r.1 - r.0).sum();
    if !filters.is_empty() {
        filter_pages(scratch, process.space, filters)?;
    }
    outcome.applied.passed = scratch.runs.iter().map(|r| r.1 - r.0).sum();
    let advice = match (how, scheme.target_nid) {
        (How::Advise(advice), _) => advice,
        // A whole folio moves whatever page of it is named: nothing to trim.
        (How::Migrate, Some(node)) => {
            outcome.applied.applied = migrate(scratch, process, node)?;
            return Ok(outcome);
        }
        (How::Migrate, None) | (How::Nothing, _) => return Ok(outcome),
    };
    if action == Action::Collapse || walker.layout().folio.is_err() {
        // Whole 2 MiB ranges only: no folio (at most a huge page) straddles their ends.
        for run in &mut scratch.runs {
            *run = (run.0.next_multiple_of(PMD_SIZE), run.1 / PMD_SIZE * PMD_SIZE);
        }
    } else {
        trim_to_folios(walker, scratch, process.space);
    }
    scratch.runs.retain(|r| r.0 < r.1);
    let iovecs: Vec<libc::iovec> = scratch
        .runs
        .iter()
        .map(|&(start, end)| libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: (end - start) as usize,
        })
        .collect();
    for chunk in iovecs.chunks(IOV_MAX) {
        let refuse = |v: &libc::iovec, errno| outcome.refused.push((v.iov_base as u64, errno));
        outcome.applied.applied += process.pidfd.advise_all(chunk, advice, refuse)?;
    }
    Ok(outcome)
}

/// Moves each run's ends inwards off a large folio or huge page that lies across them.
fn trim_to_folios(walker: &mut Walker, scratch: &mut Scratch, space: &AddressSpace) {
    scratch.request.clear();
    scratch.request.space(space);
    for &(start, end) in &scratch.runs {
        scratch.request.push(start, true);
        scratch.request.push(end - PAGE, true);
    }
    if walker.walk(&scratch.request, &mut scratch.leaves).is_err() {
        scratch.leaves.clear();
    }
    for (k, run) in scratch.runs.iter_mut().enumerate() {
        let (start, end) = *run;
        let first = scratch.leaves.get(2 * k).copied().unwrap_or_default();
        let last = scratch.leaves.get(2 * k + 1).copied().unwrap_or_default();
        let new_start = match folio(first, start) {
            Edge::Clear => start,
            Edge::Folio(s, len) if s < start => s + len,
            Edge::Folio(..) => start,
            Edge::Unknown => start.next_multiple_of(PMD_SIZE),
        };
        let new_end = match folio(last, end - PAGE) {
            Edge::Clear => end,
            Edge::Folio(s, len) if s + len > end => s,
            Edge::Folio(..) => end,
            Edge::Unknown => end / PMD_SIZE * PMD_SIZE,
        };
        *run = (new_start, new_end);
    }
}

/// What lies at a range's end.
enum Edge {
    /// Nothing mapped: no folio to split.
    Clear,
    /// The folio (or huge page) there: its start and size.
    Folio(u64, u64),
    /// Not known: treated as if a folio up to 2 MiB could lie across it.
    Unknown,
}

fn folio(leaf: Leaf, addr: u64) -> Edge {
    match leaf {
        Leaf::None => Edge::Clear,
        // The walker looks a page's folio up only when its accessed bit is set (a clear's
        // case); for the others kpageflags says whether the frame is part of a large folio.
        Leaf::Pte(_, Folio(bits)) if bits & FOLIO_LOOKED_UP == 0 => {
            match leaf.physical(addr).and_then(|at| compound(at / PAGE)) {
                Some(false) => Edge::Folio(addr / PAGE * PAGE, PAGE),
                _ => Edge::Unknown,
            }
        }
        Leaf::Pte(..) | Leaf::Pmd(_) | Leaf::Pud(_) => {
            leaf.clear_range(addr).map_or(Edge::Unknown, |(s, len)| Edge::Folio(s, len))
        }
        Leaf::Missing | Leaf::Gone | Leaf::Fault => Edge::Unknown,
    }
}

/// Moves the present pages of the runs to NUMA `node` (`move_pages`, as many calls as it takes);
/// returns the bytes that are on `node` after.
fn migrate(scratch: &mut Scratch, process: &Process, node: u32) -> io::Result<u64> {
    const BATCH: usize = 4096;
    let mut pages: Vec<*mut libc::c_void> = Vec::new();
    for &(start, end) in &scratch.runs {
        let mut addr = start;
        while addr < end {
            let n = (((end - addr) / PAGE) as usize).min(ENTRIES_PER_READ);
            process.space.pagemap().entries(addr, n, &mut scratch.entries)?;
            let present = scratch.entries.iter().enumerate().filter(|(_, e)| e.present());
            pages.extend(present.map(|(k, _)| (addr + k as u64 * PAGE) as *mut libc::c_void));
            addr += n as u64 * PAGE;
        }
    }
    let mut moved = 0;
    for chunk in pages.chunks(BATCH) {
        let nodes = vec![node as libc::c_int; chunk.len()];
        let mut status = vec![0 as libc::c_int; chunk.len()];
        // SAFETY: the arrays are as long as `chunk.len()`; the kernel writes only `status`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_pages,
                process.pid as libc::c_int,
                chunk.len() as libc::c_ulong,
                chunk.as_ptr(),
                nodes.as_ptr(),
                status.as_mut_ptr(),
                MPOL_MF_MOVE,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        moved += status.iter().filter(|&&s| s == node as libc::c_int).count() as u64 * PAGE;
    }
    Ok(moved)
}

/// `/proc/kpageflags`' bits: `KPF_ACTIVE`, `KPF_COMPOUND_HEAD`, `KPF_COMPOUND_TAIL`.
const ACTIVE: u64 = 1 << 6;
const HEAD: u64 = 1 << 15;
const TAIL: u64 = 1 << 16;

fn kpageflags() -> Option<&'static File> {
    static FILE: OnceLock<Option<File>> = OnceLock::new();
    FILE.get_or_init(|| File::open("/proc/kpageflags").ok()).as_ref()
}

fn kpagecgroup() -> Option<&'static File> {
    static FILE: OnceLock<Option<File>> = OnceLock::new();
    FILE.get_or_init(|| File::open("/proc/kpagecgroup").ok()).as_ref()
}

/// Whether frame `pfn` is part of a compound page (a large folio), from `/proc/kpageflags`;
/// `None` where it cannot be read.
fn compound(pfn: u64) -> Option<bool> {
    let mut flags = [0u8; 8];
    kpageflags()?.read_exact_at(&mut flags, pfn * 8).ok()?;
    Some(u64::from_le_bytes(flags) & (HEAD | TAIL) != 0)
}

/// The 2 MiB-aligned block of frames a compound page lies in, with its kpageflags: folios are
/// naturally aligned runs of a head and its tails, so the block tells a folio's size (one
/// larger than the block, a gigantic hugetlb page, reads as the block). Kept across the frames
/// of one filter pass: neighbouring pages share their block.
struct FolioBlock {
    first: u64,
    flags: Vec<u64>,
}

impl FolioBlock {
    const FRAMES: u64 = PMD_SIZE / PAGE;

    /// The bytes of the folio frame `pfn` (with `flags`) belongs to.
    fn folio_bytes(block: &mut Option<Self>, pfn: u64, flags: u64) -> u64 {
        if flags & (HEAD | TAIL) == 0 {
            return PAGE;
        }
        let first = pfn & !(Self::FRAMES - 1);
        if block.as_ref().is_none_or(|b| b.first != first) {
            let frames: Vec<Option<u64>> = (first..first + Self::FRAMES).map(Some).collect();
            let flags = per_frame(kpageflags(), &frames).into_iter().map(|f| f.unwrap_or(0));
            *block = Some(Self { first, flags: flags.collect() });
        }
        let Some(b) = block.as_ref() else { return PAGE };
        folio_frames(&b.flags, (pfn - first) as usize) as u64 * PAGE
    }
}

/// Frames of the compound page holding frame `at` of a block's `flags`: its head, the last
/// head at or before it, and the tails after (the whole block when the head lies before it).
fn folio_frames(flags: &[u64], at: usize) -> usize {
    let Some(head) = (0..=at).rev().find(|&i| flags[i] & HEAD != 0) else { return flags.len() };
    1 + flags[head + 1..].iter().take_while(|&&f| f & TAIL != 0).count()
}

/// Narrows the runs to the pages `filters` let through, by their pagemap entries.
fn filter_pages(
    scratch: &mut Scratch,
    space: &AddressSpace,
    filters: &[&Filter],
) -> io::Result<()> {
    let memcg_ids: Vec<Option<u64>> = filters
        .iter()
        .map(|f| match &f.kind {
            FilterKind::Memcg(path) => *scratch.memcgs.entry(path.clone()).or_insert_with(|| {
                let root = crate::sys::cgroup::root().ok()?;
                std::fs::metadata(root.join(path.trim_start_matches('/'))).ok().map(|m| m.ino())
            }),
            _ => None,
        })
        .collect();
    let needs_flags =
        filters.iter().any(|f| matches!(f.kind, FilterKind::Active | FilterKind::HugepageSize(..)));
    let mut block = None;
    let runs = std::mem::take(&mut scratch.runs);
    let mut passing = Vec::new();
    let mut frames = Vec::new();
    for (start, end) in runs {
        let mut addr = start;
        while addr < end {
            let pages = (((end - addr) / PAGE) as usize).min(ENTRIES_PER_READ);
            space.pagemap().entries(addr, pages, &mut scratch.entries)?;
            frames.clear();
            frames.extend(scratch.entries.iter().map(|e| e.frame()));
            let cgroups = if memcg_ids.iter().any(Option::is_some) {
                per_frame(kpagecgroup(), &frames)
            } else {
                Vec::new()
            };
            let flags = if needs_flags { per_frame(kpageflags(), &frames) } else { Vec::new() };
            for (k, entry) in scratch.entries.iter().enumerate() {
                let page = addr + k as u64 * PAGE;
                let has = |kind: &FilterKind| match kind {
                    FilterKind::Anon => entry.anon(),
                    FilterKind::Unmapped => !entry.populated(),
                    FilterKind::Memcg(_) => {
                        let i = filters.iter().position(|f| &f.kind == kind).unwrap_or(0);
                        cgroups.get(k).copied().flatten().is_some_and(|c| Some(c) == memcg_ids[i])
                    }
                    FilterKind::Active => {
                        flags.get(k).copied().flatten().is_some_and(|f| f & ACTIVE != 0)
                    }
                    FilterKind::HugepageSize(min, max) => {
                        let (Some(pfn), Some(Some(f))) = (frames[k], flags.get(k)) else {
                            return false;
                        };
                        (min..=max).contains(&&FolioBlock::folio_bytes(&mut block, pfn, *f))
                    }
                    FilterKind::Addr(..) | FilterKind::Target(_) => false,
                };
                if passes(filters, false, has) {
                    match passing.last_mut() {
                        Some((_, e)) if *e == page => *e += PAGE,
                        _ => passing.push((page, page + PAGE)),
                    }
                }
            }
            addr += pages as u64 * PAGE;
        }
    }
    scratch.runs = passing;
    Ok(())
}

/// Each frame's 64-bit word of a `/proc/kpage*` file (its cgroup's inode, its flags), one
/// read per run of consecutive frames; `None` where unknown.
fn per_frame(file: Option<&File>, frames: &[Option<u64>]) -> Vec<Option<u64>> {
    let mut out = vec![None; frames.len()];
    let Some(file) = file else { return out };
    let mut i = 0;
    while i < frames.len() {
        let Some(first) = frames[i] else {
            i += 1;
            continue;
        };
        let mut n = 1;
        while i + n < frames.len() && frames[i + n] == Some(first + n as u64) {
            n += 1;
        }
        let mut bytes = vec![0u8; n * 8];
        if file.read_exact_at(&mut bytes, first * 8).is_ok() {
            for (k, b) in bytes.chunks_exact(8).enumerate() {
                out[i + k] = Some(u64::from_le_bytes(b.try_into().unwrap()));
            }
        }
        i += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folios_size_is_its_head_and_tails() {
        // A small page, a 4-page folio, a small page, then a folio begun before the block.
        let mut flags = vec![0, HEAD, TAIL, TAIL, TAIL, 0];
        assert_eq!(folio_frames(&flags, 1), 4);
        assert_eq!(folio_frames(&flags, 3), 4, "from a tail");
        flags = vec![TAIL, TAIL, HEAD, TAIL];
        assert_eq!(folio_frames(&flags, 0), 4, "no head in the block: the block");
        assert_eq!(folio_frames(&flags, 3), 2);
    }
}
