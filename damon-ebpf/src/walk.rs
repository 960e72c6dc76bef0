//! The page-table walker. When the sampler thread calls `process_madvise` on a target, the kernel
//! takes the target's mmap lock in the sampler's context, before touching any page-table entry:
//! this tp_btf program fires there, with the target's `mm`, and walks its page tables for the
//! requested addresses. One record per address goes to the ring buffer.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_task, bpf_ktime_get_ns, bpf_loop, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use damon_common::{
    LEAF_FAULT, LEAF_NONE, LEAF_PMD, LEAF_PTE, LEAF_PUD, MAX_WALK, WALK_BATCH, WalkConfig,
    WalkRecord, WalkRequest, WalkResult, WalkStats,
    x86::{ADDRESS, HUGE, LEVEL_BITS, PAGE_SHIFT, PRESENT},
};

#[map]
static WALK_CONFIG: Array<WalkConfig> = Array::with_max_entries(1, 0);

#[map]
static WALK_REQUEST: Array<WalkRequest> = Array::with_max_entries(1, 0);

/// Two walks of a full request fit, with room to spare.
#[map]
static WALK_RESULTS: RingBuf = RingBuf::with_byte_size(1 << 17, 0);

#[map]
static WALK_STATS: PerCpuArray<WalkStats> = PerCpuArray::with_max_entries(1, 0);

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
    /// `path[l]`: the address prefix served by the table at level `l` (1: a PTE table) and that
    /// table; prefix `u64::MAX` is unset. Slot 0 is unused; 8 slots so that an index masked
    /// with 7 is in bounds for every verifier (6.1's loses a `min(5)` bound on some paths).
    path: [(u64, u64); 8],
}

fn handle(ctx: &BtfTracePointContext) {
    let Some(config) = WALK_CONFIG.get(0) else { return };
    if crate::current_tid() != config.sampler_tid || config.sampler_tid == 0 {
        return;
    }
    let Some(request) = WALK_REQUEST.get_ptr_mut(0) else { return };
    // SAFETY: a valid map value pointer; only the sampler (single writer) triggers this path.
    let request = unsafe { &mut *request };
    // One walk per request, even if the call takes the lock again.
    if request.done == request.seq {
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
    request.done = request.seq;
    let count = (request.count as usize).min(MAX_WALK) as u32;
    let mut walk = Walk {
        pgd,
        page_offset_base: config.page_offset_base,
        levels: config.levels,
        count,
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

/// One batch being walked: the shared walk state and the batch's record, on `walk_batch`'s stack.
#[repr(C)]
struct Batch {
    walk: *mut Walk,
    record: WalkRecord,
}

/// `bpf_loop` callback: walks the addresses of batch `batch` and reports them in one record.
/// Each address is walked by another `bpf_loop` callback rather than an inline loop, so the
/// verifier checks the walk once instead of once per unrolled iteration (7.2's gives up at a
/// million instructions on the inline form).
extern "C" fn walk_batch(batch: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `handle`'s stack.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let first = batch as usize * WALK_BATCH;
    let remaining = (walk.count as usize).saturating_sub(first);
    let n = remaining.min(WALK_BATCH) as u32;
    let mut b = Batch {
        walk,
        record: WalkRecord {
            first: first as u32,
            count: 0,
            results: [WalkResult::default(); WALK_BATCH],
        },
    };
    // SAFETY: the callback matches bpf_loop's signature; `b` outlives the call.
    unsafe { bpf_loop(n, walk_one as *mut c_void, &mut b as *mut Batch as *mut c_void, 0) };
    let Some(mut record) = WALK_RESULTS.reserve::<WalkRecord>(0) else {
        if let Some(stats) = WALK_STATS.get_ptr_mut(0) {
            // SAFETY: this CPU's slot. The rest of the walk is lost with this batch.
            unsafe { (*stats).lost += remaining as u64 };
        }
        return 1;
    };
    record.write(b.record);
    // The sampler reads the results as soon as its syscall returns, never waiting on the ring:
    // a wakeup would only cost an irq_work self-IPI (a VM exit on virtual machines).
    record.submit(BPF_RB_NO_WAKEUP as u64);
    0
}

/// `bpf_loop` callback: walks address `j` of the batch into its record.
extern "C" fn walk_one(j: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Batch` on `walk_batch`'s stack; its `walk` is on `handle`'s.
    let b = unsafe { &mut *(ctx as *mut Batch) };
    let walk = unsafe { &mut *b.walk };
    let Some(request) = WALK_REQUEST.get(0) else { return 1 };
    let index = (b.record.first as usize + j as usize) & (MAX_WALK - 1);
    let (leaf, entry) = translate(walk, request.addrs[index]);
    b.record.results[j as usize & (WALK_BATCH - 1)] = WalkResult { leaf, _pad: 0, entry };
    b.record.count += 1;
    0
}

/// Walks from the deepest table on the last path that still covers `addr` down to its leaf.
fn translate(walk: &mut Walk, addr: u64) -> (u32, u64) {
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
            return (LEAF_FAULT, 0);
        };
        if entry & PRESENT == 0 {
            return (LEAF_NONE, entry);
        }
        match level {
            1 => return (LEAF_PTE, entry),
            2 if entry & HUGE != 0 => return (LEAF_PMD, entry),
            3 if entry & HUGE != 0 => return (LEAF_PUD, entry),
            _ => {}
        }
        table = walk.page_offset_base + (entry & ADDRESS);
        level -= 1;
        if level == 0 {
            break;
        }
    }
    (LEAF_FAULT, 0)
}
