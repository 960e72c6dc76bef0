//! The page-table walker, run on demand by the sampler (`BPF_PROG_TEST_RUN` of a raw_tp
//! program, so one system call walks every target): for each segment of the mmap-able request
//! (an `mm` and a run of addresses) it walks that address space's page tables for each address
//! and writes the leaf into the mmap-able result array. For a page about to be cleared it also looks up the page's folio, so that a
//! clear of a large folio covers all of it (part of one would split it).
//!
//! No lock of the target is taken: the walk reads the tables locklessly, as GUP-fast does, but
//! without GUP-fast's disabled interrupts. Where x86 frees page tables after an RCU grace
//! period (paravirt TLB flushes, and every kernel since RCU table freeing became unconditional)
//! the test run's RCU read lock keeps a table freed meanwhile from reuse; elsewhere (6.1 and
//! 6.12 on bare metal) a table freed during the walk (munmap, a THP collapse) may be reused
//! before it is read. Every read is a checked one, so nothing can fault: such a race reads one
//! sample wrong, and at worst gives one clear a wrong size (pages that were not sampled
//! deactivated, or part of a large folio, which the kernel then splits). Re-reading the PMD
//! entry after the PTE, as GUP-fast does, would narrow this; it is not done yet.
//! Each `mm` is kept allocated by the pagemap
//! file the sampler holds open on it; its users are checked first: with none left (an exit, or
//! an exec that replaced it) its tables are gone, and so is every address in it.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_ktime_get_ns, bpf_loop, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{Array, PerCpuArray},
    programs::RawTracePointContext,
};
use damon_common::{
    FOLIO_INDEX_MASK, FOLIO_INDEX_SHIFT, FOLIO_LOOKED_UP, FOLIO_ORDER_MASK, FOLIO_WHOLE_OK,
    FolioLayout, LEAF_FAULT, LEAF_GONE, LEAF_NONE, LEAF_PMD, LEAF_PTE, LEAF_PUD, WALK_BATCH,
    WALK_CAPACITY, WALK_FOLIO, WalkConfig, WalkResult, WalkSegment, WalkStats,
    x86::{ACCESSED, ADDRESS, HUGE, LEVEL_BITS, PAGE_SHIFT, PRESENT},
};

#[map]
static WALK_CONFIG: Array<WalkConfig> = Array::with_max_entries(1, 0);

/// The address spaces to walk, each with its run of addresses, written by the sampler through
/// its mapping of this array.
#[map]
static WALK_SEGMENTS: Array<WalkSegment> =
    Array::with_max_entries(WALK_CAPACITY as u32, BPF_F_MMAPABLE);

/// The pages to walk (`WALK_FOLIO` in their low bits), likewise.
#[map]
static WALK_ADDRS: Array<u64> = Array::with_max_entries(WALK_CAPACITY as u32, BPF_F_MMAPABLE);

/// One result per address, read by the sampler through its mapping once the run returns.
#[map]
static WALK_OUT: Array<WalkResult> = Array::with_max_entries(WALK_CAPACITY as u32, BPF_F_MMAPABLE);

#[map]
static WALK_STATS: PerCpuArray<WalkStats> = PerCpuArray::with_max_entries(1, 0);

/// Where each PTE of the batch being walked sits (0: not a PTE), for the folio pass.
#[map]
static WALK_PTES: PerCpuArray<[u64; WALK_BATCH]> = PerCpuArray::with_max_entries(1, 0);

/// Argument 0: how many segments of the request to walk; argument 1: how many addresses they
/// hold, for the statistics.
#[raw_tracepoint]
pub fn walk(ctx: RawTracePointContext) -> i32 {
    let (segments, addresses): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    let Some(config) = WALK_CONFIG.get(0) else { return 1 };
    let mut walk = Walk {
        pgd: 0,
        page_offset_base: config.page_offset_base,
        levels: config.levels,
        start: 0,
        end: 0,
        first: 0,
        path: [(u64::MAX, 0); 8],
    };
    // SAFETY: a helper without arguments.
    let started = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the callback matches bpf_loop's signature; `walk` outlives the call.
    unsafe {
        bpf_loop(
            segments.min(WALK_CAPACITY as u64) as u32,
            walk_segment as *mut c_void,
            &mut walk as *mut Walk as *mut c_void,
            0,
        )
    };
    // SAFETY: as above.
    let took = unsafe { bpf_ktime_get_ns() } - started;
    if let Some(stats) = WALK_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        let stats = unsafe { &mut *stats };
        stats.walks += 1;
        stats.addresses += addresses;
        stats.nanoseconds += took;
    }
    0
}

/// What every iteration of the walk needs, and the path of the last walk: consecutive addresses
/// of one address space (regions are in address order) mostly share their upper tables, so a
/// walk starts from the deepest table still valid for its address.
#[repr(C)]
struct Walk {
    /// The root table of the address space being walked.
    pgd: u64,
    page_offset_base: u64,
    levels: u32,
    /// The segment being walked (indexes of the request), and the first address of the batch
    /// being walked.
    start: u32,
    end: u32,
    first: u32,
    /// `path[l]`: the address prefix served by the table at level `l` (1: a PTE table) and that
    /// table; prefix `u64::MAX` is unset. Slot 0 is unused; 8 slots so that an index masked
    /// with 7 is in bounds for every verifier (6.1's loses a `min(5)` bound on some paths).
    path: [(u64, u64); 8],
}

/// `bpf_loop` callback: walks segment `s`: its address space's root table, unless the space has
/// no users left (then every address in it is gone), then its addresses in batches.
extern "C" fn walk_segment(s: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `walk`'s stack.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let (Some(config), Some(segment)) = (WALK_CONFIG.get(0), WALK_SEGMENTS.get(s as u32)) else {
        return 1;
    };
    let (first, count) = (segment.first.min(WALK_CAPACITY as u32), segment.count);
    let count = count.min(WALK_CAPACITY as u32 - first);
    walk.path = [(u64::MAX, 0); 8];
    (walk.start, walk.end) = (first, first + count);
    // SAFETY: a checked read of `mm->mm_users` (an atomic_t).
    let users =
        unsafe { bpf_probe_read_kernel((segment.mm + config.mm_users_offset) as *const i32) };
    walk.pgd = match users {
        Ok(users) if users > 0 => read(segment.mm + config.mm_pgd_offset).unwrap_or(0),
        _ => 0,
    };
    walk.first = first;
    if walk.pgd == 0 {
        // SAFETY: the callback matches bpf_loop's signature; `walk` outlives the call.
        unsafe { bpf_loop(count, gone_one as *mut c_void, ctx, 0) };
        return 0;
    }
    // SAFETY: as above.
    unsafe { bpf_loop(count.div_ceil(WALK_BATCH as u32), walk_batch as *mut c_void, ctx, 0) };
    0
}

/// `bpf_loop` callback: address `j` of the segment lies in an address space that is gone.
extern "C" fn gone_one(j: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `walk`'s stack.
    let walk = unsafe { &*(ctx as *const Walk) };
    let index = (walk.first + j as u32) & (WALK_CAPACITY as u32 - 1);
    if let Some(out) = WALK_OUT.get_ptr_mut(index) {
        // SAFETY: a slot of the result array.
        unsafe { *out = WalkResult { leaf: LEAF_GONE, folio: 0, entry: 0 } };
    }
    0
}

/// `bpf_loop` callback: walks the addresses of batch `batch` of the segment, then looks up the
/// folios of those to be cleared (a second pass). Each address is walked by another `bpf_loop`
/// callback rather than an inline loop, so the verifier checks the walk once instead of once
/// per unrolled iteration; and the folio lookup is a pass of its own, reading the walk's
/// results back, so it is checked once rather than once for every way a walk can end (6.18's
/// verifier gave up at a million instructions with the two in one callback).
extern "C" fn walk_batch(batch: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `walk`'s stack.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    walk.first = walk.start + batch as u32 * WALK_BATCH as u32;
    let n = walk.end.saturating_sub(walk.first).min(WALK_BATCH as u32);
    // SAFETY: the callbacks match bpf_loop's signature; `walk` outlives the calls.
    unsafe {
        bpf_loop(n, walk_one as *mut c_void, ctx, 0);
        bpf_loop(n, folio_one as *mut c_void, ctx, 0);
    }
    0
}

/// `bpf_loop` callback: walks address `j` of the batch into its result slot.
extern "C" fn walk_one(j: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `walk`'s stack.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let index = (walk.first + j as u32) & (WALK_CAPACITY as u32 - 1);
    let (Some(&page), Some(out), Some(ptes)) =
        (WALK_ADDRS.get(index), WALK_OUT.get_ptr_mut(index), WALK_PTES.get_ptr_mut(0))
    else {
        return 1;
    };
    let found = translate(walk, page);
    // SAFETY: a slot of the result array and this CPU's PTE slots.
    unsafe {
        *out = WalkResult { leaf: found.leaf, folio: 0, entry: found.entry };
        (*ptes)[j as usize & (WALK_BATCH - 1)] = found.pte;
    }
    0
}

/// `bpf_loop` callback: looks up the folio of address `j` of the batch if it is to be cleared.
extern "C" fn folio_one(j: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `walk`'s stack.
    let walk = unsafe { &*(ctx as *const Walk) };
    let index = (walk.first + j as u32) & (WALK_CAPACITY as u32 - 1);
    let (Some(config), Some(&page), Some(out), Some(ptes)) =
        (WALK_CONFIG.get(0), WALK_ADDRS.get(index), WALK_OUT.get_ptr_mut(index), WALK_PTES.get(0))
    else {
        return 1;
    };
    // SAFETY: a slot of the result array, written by `walk_one`.
    let out = unsafe { &mut *out };
    // Only an accessed page is cleared, so only its folio matters.
    if out.leaf == LEAF_PTE && page & WALK_FOLIO != 0 && out.entry & ACCESSED != 0 {
        out.folio = folio_of(&config.folio, out.entry, ptes[j as usize & (WALK_BATCH - 1)]);
    }
    0
}

/// What a walk found, and for a PTE, where it sits.
struct Found {
    leaf: u32,
    entry: u64,
    pte: u64,
}

fn read(address: u64) -> Option<u64> {
    // SAFETY: a checked read of kernel memory.
    unsafe { bpf_probe_read_kernel(address as *const u64) }.ok()
}

/// The folio of the page that `entry`, the PTE at `pte`, maps (`FOLIO_*`): its order, the
/// page's index in it, and whether it is mapped whole, once, page after page in this one PTE
/// table, so that clearing its naturally aligned range covers it exactly.
fn folio_of(layout: &FolioLayout, entry: u64, pte: u64) -> u32 {
    if layout.vmemmap_base == 0 {
        return 0;
    }
    // PTE tables are pages: the entry's table and index follow from its address.
    let (table, pte_index) = (pte & !((1 << PAGE_SHIFT) - 1), (pte >> 3) & 511);
    let pfn = (entry & ADDRESS) >> PAGE_SHIFT;
    let page = layout.vmemmap_base + pfn * layout.page_size;
    let Some(info) = read(page + layout.compound_offset) else { return 0 };
    // A tail page's word holds its head, as a pointer | 1, or (7.2+) as a mask | 1.
    let head = match info & 1 {
        0 => page,
        _ if info & !1 >= page => page & info,
        _ => info - 1,
    };
    let Some(flags) = read(head) else { return 0 };
    if flags & (1 << (layout.head_bit & 63)) == 0 {
        // A small folio; a tail whose head says otherwise is in flux: not to be cleared.
        return FOLIO_LOOKED_UP | if head == page { 0 } else { FOLIO_ORDER_MASK };
    }
    let Some(order) = read(head + layout.order_offset).map(|w| (w & 0xff) as u32) else {
        return 0;
    };
    // PTE-mapped folios are at most a PMD's worth.
    if order == 0 || order > LEVEL_BITS {
        return FOLIO_LOOKED_UP | FOLIO_ORDER_MASK;
    }
    let nr = 1u64 << order;
    let index = (page - head) / layout.page_size.max(1);
    if index >= nr {
        return FOLIO_LOOKED_UP | FOLIO_ORDER_MASK;
    }
    let mut found =
        FOLIO_LOOKED_UP | order | ((index as u32 & FOLIO_INDEX_MASK) << FOLIO_INDEX_SHIFT);
    // Whole here: its first and last pages in this table at the right frames, and mapped as
    // many times as it has pages.
    if index <= pte_index && pte_index - index + nr <= 512 {
        let first = table + (pte_index - index) * 8;
        let head_pfn = pfn - index;
        let frame = |entry: Option<u64>| {
            entry.filter(|e| e & PRESENT != 0).map(|e| (e & ADDRESS) >> PAGE_SHIFT)
        };
        let mapcount = (layout.mapcount_offset != u64::MAX)
            .then(|| read(head + layout.mapcount_offset))
            .flatten()
            .map(|w| (w as u32 as i32) as i64 + 1);
        if frame(read(first)) == Some(head_pfn)
            && frame(read(first + (nr - 1) * 8)) == Some(head_pfn + nr - 1)
            && mapcount == Some(nr as i64)
        {
            found |= FOLIO_WHOLE_OK;
        }
    }
    found
}

/// Walks from the deepest table on the last path that still covers `addr` down to its leaf.
fn translate(walk: &mut Walk, addr: u64) -> Found {
    let leaf = |leaf, entry| Found { leaf, entry, pte: 0 };
    let mut level = walk.levels;
    let mut table = walk.pgd;
    for l in 1..5u32 {
        if l >= walk.levels {
            break;
        }
        let (prefix, cached) = walk.path[l as usize & 7];
        if prefix == addr >> (PAGE_SHIFT + LEVEL_BITS * l) {
            level = l;
            table = cached;
            break;
        }
    }
    for _ in 0..5 {
        walk.path[level as usize & 7] = (addr >> (PAGE_SHIFT + LEVEL_BITS * level), table);
        let index = (addr >> (PAGE_SHIFT + LEVEL_BITS * (level - 1))) & 511;
        let Some(entry) = read(table + index * 8) else {
            return leaf(LEAF_FAULT, 0);
        };
        if entry & PRESENT == 0 {
            return leaf(LEAF_NONE, entry);
        }
        match level {
            1 => return Found { leaf: LEAF_PTE, entry, pte: table + index * 8 },
            2 if entry & HUGE != 0 => return leaf(LEAF_PMD, entry),
            3 if entry & HUGE != 0 => return leaf(LEAF_PUD, entry),
            _ => {}
        }
        table = walk.page_offset_base + (entry & ADDRESS);
        level -= 1;
        if level == 0 {
            break;
        }
    }
    leaf(LEAF_FAULT, 0)
}
