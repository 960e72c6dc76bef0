//! The page-table walker. When the sampler thread calls `process_madvise` on a target, the kernel
//! takes the target's mmap lock in the sampler's context, before touching any page-table entry:
//! this tp_btf program fires there, with the target's `mm`, and walks its page tables for the
//! requested addresses, which it reads from the sampler's own memory. One result per address
//! goes to the ring buffer; for a page about to be cleared it also looks up the page's folio,
//! so that a clear of a large folio covers all of it (part of one would split it).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_task, bpf_ktime_get_ns, bpf_loop, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use damon_common::{
    FOLIO_INDEX_MASK, FOLIO_INDEX_SHIFT, FOLIO_LOOKED_UP, FOLIO_ORDER_MASK, FOLIO_WHOLE_OK,
    FolioLayout, LEAF_FAULT, LEAF_NONE, LEAF_PMD, LEAF_PTE, LEAF_PUD, MAX_WALK, REQUEST_ADDRS,
    REQUEST_COUNT, REQUEST_PREPARED_FROM, WALK_BATCH, WalkConfig, WalkRecord, WalkResult,
    WalkStats,
    x86::{ADDRESS, HUGE, LEVEL_BITS, PAGE_SHIFT, PRESENT},
};

#[map]
static WALK_CONFIG: Array<WalkConfig> = Array::with_max_entries(1, 0);

/// Two walks of a full request fit, with room to spare.
#[map]
static WALK_RESULTS: RingBuf = RingBuf::with_byte_size(1 << 17, 0);

#[map]
static WALK_STATS: PerCpuArray<WalkStats> = PerCpuArray::with_max_entries(1, 0);

/// The batch being walked: off the stack, which 6.1's verifier allows 512 bytes for the program
/// and its `bpf_loop` callbacks together.
#[map]
static WALK_SCRATCH: PerCpuArray<WalkRecord> = PerCpuArray::with_max_entries(1, 0);

/// Where each PTE of the batch being walked sits (0: not a PTE), for the folio pass.
#[map]
static WALK_PTES: PerCpuArray<[u64; WALK_BATCH]> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn walk_on_lock(ctx: BtfTracePointContext) -> i32 {
    handle(&ctx);
    0
}

/// What every iteration of the walk needs, and the path of the last walk: consecutive addresses
/// (regions are in address order) mostly share their upper tables, so a walk starts from the
/// deepest table still valid for its address. The mmap lock is held throughout one request.
#[repr(C)]
struct Walk {
    pgd: u64,
    page_offset_base: u64,
    levels: u32,
    count: u32,
    /// Addresses from here on are cleared next: their folios are looked up.
    prepared_from: u32,
    /// `path[l]`: the address prefix served by the table at level `l` (1: a PTE table) and that
    /// table; prefix `u64::MAX` is unset. Slot 0 is unused; 8 slots so that an index masked
    /// with 7 is in bounds for every verifier (6.1's loses a `min(5)` bound on some paths).
    path: [(u64, u64); 8],
}

/// A word of the request in the sampler's memory (it is `current`, so user reads are its own).
fn request_word(config: &WalkConfig, offset: u64) -> Option<u64> {
    // SAFETY: a checked read of user memory.
    unsafe { bpf_probe_read_user((config.request_addr + offset) as *const u64) }.ok()
}

fn handle(ctx: &BtfTracePointContext) {
    let Some(config) = WALK_CONFIG.get_ptr_mut(0) else { return };
    // SAFETY: a valid map value pointer; only the sampler (single writer) triggers this path.
    let config = unsafe { &mut *config };
    if crate::current_tid() != config.sampler_tid || config.sampler_tid == 0 {
        return;
    }
    let Some(seq) = request_word(config, 0) else { return };
    // One walk per request, even if the call takes the lock again.
    if seq == config.done_seq {
        return;
    }
    // SAFETY: slot 0 of the context is `struct mm_struct *mm`; read it as a plain word, since
    // arithmetic on the typed pointer is refused.
    let Ok(mm) = (unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const u64) }) else { return };
    // The sampler's own memory (a page fault while it fills the request) is never the target.
    // SAFETY: returns a pointer value; nothing is dereferenced here.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: checked reads of kernel memory.
    let own_mm = unsafe { bpf_probe_read_kernel((task + config.task_mm_offset) as *const u64) };
    if own_mm == Ok(mm) {
        return;
    }
    // SAFETY: a checked read of `mm->pgd`.
    let Ok(pgd) = (unsafe { bpf_probe_read_kernel((mm + config.mm_pgd_offset) as *const u64) })
    else {
        return;
    };
    let (Some(count), Some(prepared_from)) =
        (request_word(config, REQUEST_COUNT), request_word(config, REQUEST_PREPARED_FROM))
    else {
        return;
    };
    config.done_seq = seq;
    let count = count.min(MAX_WALK as u64) as u32;
    let mut walk = Walk {
        pgd,
        page_offset_base: config.page_offset_base,
        levels: config.levels,
        count,
        prepared_from: prepared_from.min(MAX_WALK as u64) as u32,
        path: [(u64::MAX, 0); 8],
    };
    let batches = count.div_ceil(WALK_BATCH as u32);
    // SAFETY: a helper without arguments.
    let started = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the callback matches bpf_loop's signature; `walk` outlives the call.
    unsafe {
        bpf_loop(batches, walk_batch as *mut c_void, &mut walk as *mut Walk as *mut c_void, 0)
    };
    // SAFETY: as above.
    let took = unsafe { bpf_ktime_get_ns() } - started;
    if let Some(stats) = WALK_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        let stats = unsafe { &mut *stats };
        stats.walks += 1;
        stats.addresses += count as u64;
        stats.nanoseconds += took;
    }
}

/// `bpf_loop` callback: walks the addresses of batch `batch`, then looks up the folios of those
/// to be cleared (a second pass), and reports them in one record.
/// Each address is walked by another `bpf_loop` callback rather than an inline loop, so the
/// verifier checks the walk once instead of once per unrolled iteration (7.2's gives up at a
/// million instructions on the inline form).
extern "C" fn walk_batch(batch: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `handle`'s stack.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let first = batch as usize * WALK_BATCH;
    let remaining = (walk.count as usize).saturating_sub(first);
    let n = remaining.min(WALK_BATCH) as u32;
    let Some(scratch) = WALK_SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's slot; the program runs to completion on this CPU.
    unsafe {
        (*scratch).first = first as u32;
        (*scratch).count = 0;
    }
    // SAFETY: the callbacks match bpf_loop's signature; `walk` outlives the calls; the folio
    // pass covers what the walk filled (it stops early on an unreadable address).
    unsafe {
        bpf_loop(n, walk_one as *mut c_void, ctx, 0);
        bpf_loop((*scratch).count, folio_one as *mut c_void, ctx, 0);
    }
    let Some(mut record) = WALK_RESULTS.reserve::<WalkRecord>(0) else {
        if let Some(stats) = WALK_STATS.get_ptr_mut(0) {
            // SAFETY: this CPU's slot. The rest of the walk is lost with this batch.
            unsafe { (*stats).lost += remaining as u64 };
        }
        return 1;
    };
    // SAFETY: as above; results past `count` are stale and ignored by the reader.
    record.write(unsafe { *scratch });
    // The sampler reads the results as soon as its syscall returns, never waiting on the ring:
    // a wakeup would only cost an irq_work self-IPI (a VM exit on virtual machines).
    record.submit(BPF_RB_NO_WAKEUP as u64);
    0
}

/// `bpf_loop` callback: walks address `j` of the batch into its record.
extern "C" fn walk_one(j: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `handle`'s stack.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let (Some(config), Some(record), Some(ptes)) =
        (WALK_CONFIG.get(0), WALK_SCRATCH.get_ptr_mut(0), WALK_PTES.get_ptr_mut(0))
    else {
        return 1;
    };
    // SAFETY: this CPU's slots, filled by `walk_batch` above us.
    let (record, ptes) = unsafe { (&mut *record, &mut *ptes) };
    let index = (record.first as usize + j as usize) & (MAX_WALK - 1);
    let Some(addr) = request_word(config, REQUEST_ADDRS + 8 * index as u64) else { return 1 };
    let found = translate(walk, addr);
    let slot = j as usize & (WALK_BATCH - 1);
    record.results[slot] = WalkResult { leaf: found.leaf, folio: 0, entry: found.entry };
    ptes[slot] = found.pte;
    record.count += 1;
    0
}

/// `bpf_loop` callback: looks up the folio of address `j` of the batch if it is to be cleared.
/// A pass of its own, reading the walk's results back from the map, so that the verifier checks
/// the lookup once rather than once for every way a walk can end (6.18's gave up at a million
/// instructions with the two in one callback).
extern "C" fn folio_one(j: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `handle`'s stack.
    let walk = unsafe { &*(ctx as *const Walk) };
    let (Some(config), Some(record), Some(ptes)) =
        (WALK_CONFIG.get(0), WALK_SCRATCH.get_ptr_mut(0), WALK_PTES.get(0))
    else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled by `walk_one`.
    let record = unsafe { &mut *record };
    let slot = j as usize & (WALK_BATCH - 1);
    let result = &mut record.results[slot];
    if result.leaf == LEAF_PTE && record.first + j as u32 >= walk.prepared_from {
        result.folio = folio_of(&config.folio, result.entry, ptes[slot]);
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
        // SAFETY: a checked read of kernel memory.
        let Ok(entry) = (unsafe { bpf_probe_read_kernel((table + index * 8) as *const u64) })
        else {
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
