//! The kernel's own DAMON, observed: `damon:damon_aggregated` fires in a kdamond once per region
//! per aggregation, and this program sums each target's aggregation in a map (regions, bytes,
//! working set, an idle-age histogram) that userspace reads once per aggregation; no event leaves
//! the kernel unless recording, when every region also goes to a ring buffer.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use damon_common::kdamond::{
    AGE_BUCKETS, Aggregate, KdamondConfig, KdamondKey, KdamondRegion, KdamondTarget, SchemeKey,
    SchemeSums, age_bucket, damon_aggregated as tp, damos_before_apply, damos_esz,
};

#[map]
static KDAMOND_CONFIG: Array<KdamondConfig> = Array::with_max_entries(1, 0);

/// Sized by the loader (`MAX_KDAMOND_TARGETS`); one entry in objects that do not observe.
#[map]
static KDAMOND_TARGETS: HashMap<KdamondKey, KdamondTarget> = HashMap::with_max_entries(1, 0);

/// A zeroed value to insert from: the value is too big for the stack.
#[map]
static KDAMOND_ZERO: Array<KdamondTarget> = Array::with_max_entries(1, 0);

/// Sized by the loader when recording (`KDAMOND_RING_BYTES`).
#[map]
static KDAMOND_REGIONS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Region records dropped because the ring buffer was full.
#[map]
static KDAMOND_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per scheme: what it was tried on, its effective quota. Sized by the loader.
#[map]
static KDAMOND_SCHEMES: HashMap<SchemeKey, SchemeSums> = HashMap::with_max_entries(1, 0);

#[tracepoint(category = "damon", name = "damon_aggregated")]
pub fn damon_aggregated(ctx: TracePointContext) -> u32 {
    handle(&ctx);
    0
}

fn handle(ctx: &TracePointContext) -> Option<()> {
    let config = KDAMOND_CONFIG.get(0)?;
    let pid = crate::current_tid();
    if config.pid != 0 && config.pid != pid {
        return None;
    }
    // SAFETY: the record's fields at offsets the loader checked against tracefs.
    let (target, nr_regions, start, end, nr_accesses, age) = unsafe {
        (
            ctx.read_at::<u64>(tp::TARGET_ID_OFFSET).ok()?,
            ctx.read_at::<u32>(tp::NR_REGIONS_OFFSET).ok()?,
            ctx.read_at::<u64>(tp::START_OFFSET).ok()?,
            ctx.read_at::<u64>(tp::END_OFFSET).ok()?,
            ctx.read_at::<u32>(tp::NR_ACCESSES_OFFSET).ok()?,
            ctx.read_at::<u32>(tp::AGE_OFFSET).ok()?,
        )
    };
    let key = KdamondKey { pid, target: target as u32 };
    let target = match KDAMOND_TARGETS.get_ptr_mut(key) {
        Some(t) => t,
        None => {
            let zero = KDAMOND_ZERO.get(0)?;
            KDAMOND_TARGETS.insert(key, zero, BPF_NOEXIST as u64).ok()?;
            KDAMOND_TARGETS.get_ptr_mut(key)?
        }
    };
    // SAFETY: a map value; a kdamond is one thread, so its targets' values have one writer.
    let t = unsafe { &mut *target };
    let slot = &mut t.slots[(t.complete & 1) as usize];
    if t.begun == t.complete || start <= t.last_start {
        begin(slot, config);
        t.begun += 1;
    }
    t.last_start = start;
    let size = end.saturating_sub(start);
    slot.nr_regions = nr_regions;
    slot.seen += 1;
    slot.total_bytes += size;
    slot.accessed_bytes += size * nr_accesses as u64;
    if nr_accesses > 0 {
        slot.working_set_bytes += size;
        slot.max_nr_accesses = slot.max_nr_accesses.max(nr_accesses);
    } else {
        // The mask must reach the verifier: hidden from the optimiser, which knows it is a no-op.
        let bucket = core::hint::black_box(age_bucket(age)) & (AGE_BUCKETS - 1);
        slot.idle_bytes[bucket] += size;
    }
    if config.record != 0 {
        let region = KdamondRegion {
            ended_ns: slot.ended_ns,
            aggregation: t.begun,
            start,
            end,
            pid,
            target: key.target,
            nr_regions,
            nr_accesses,
            age,
            _pad: 0,
        };
        if KDAMOND_REGIONS.output::<KdamondRegion>(&region, 0).is_err()
            && let Some(lost) = KDAMOND_LOST.get_ptr_mut(0)
        {
            // SAFETY: this CPU's slot; BPF programs do not migrate while running.
            unsafe { *lost += 1 };
        }
    }
    if slot.seen >= slot.nr_regions {
        t.complete += 1;
    }
    Some(())
}

/// Starts an aggregation in `slot`: its time and the context's intervals now.
fn begin(slot: &mut Aggregate, config: &KdamondConfig) {
    slot.seen = 0;
    slot.total_bytes = 0;
    slot.working_set_bytes = 0;
    slot.accessed_bytes = 0;
    slot.max_nr_accesses = 0;
    for bytes in slot.idle_bytes.iter_mut() {
        *bytes = 0;
    }
    // SAFETY: a helper without arguments.
    slot.ended_ns = unsafe { bpf_ktime_get_ns() };
    let [sample, aggr, update] = intervals(config).unwrap_or([0; 3]);
    (slot.sample_us, slot.aggr_us, slot.update_us) = (sample, aggr, update);
}

/// The kdamond's live intervals in µs: `damon_ctx` is its kthread's data, and `attrs` (sample,
/// aggregation, update intervals first) is at the context's start in every version.
fn intervals(config: &KdamondConfig) -> Option<[u64; 3]> {
    if config.task_worker_private == 0 {
        return None;
    }
    // SAFETY: returns a pointer value; every dereference below is a checked read.
    let task = unsafe { bpf_get_current_task() };
    let read = |addr: u64| unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok();
    let kthread = read(task + config.task_worker_private)?;
    let ctx = read(kthread + config.kthread_data)?;
    // Only a context whose kdamond is this task is one (another kthread's data is not).
    if read(ctx + config.ctx_kdamond)? != task {
        return None;
    }
    Some([read(ctx)?, read(ctx + 8)?, read(ctx + 16)?])
}

/// This kdamond's sums for the scheme the record names, created at its first event.
fn scheme(ctx: &TracePointContext, offset: usize) -> Option<&'static mut SchemeSums> {
    let config = KDAMOND_CONFIG.get(0)?;
    let pid = crate::current_tid();
    if config.pid != 0 && config.pid != pid {
        return None;
    }
    // SAFETY: a field at an offset the loader checked against tracefs.
    let scheme = unsafe { ctx.read_at::<u32>(offset) }.ok()?;
    let key = SchemeKey { pid, scheme };
    if KDAMOND_SCHEMES.get_ptr_mut(key).is_none() {
        KDAMOND_SCHEMES.insert(key, SchemeSums::default(), BPF_NOEXIST as u64).ok()?;
    }
    // SAFETY: a map value; a kdamond is one thread, so its schemes' values have one writer.
    Some(unsafe { &mut *KDAMOND_SCHEMES.get_ptr_mut(key)? })
}

#[tracepoint(category = "damon", name = "damos_before_apply")]
pub fn damos_before_apply(ctx: TracePointContext) -> u32 {
    let Some(sums) = scheme(&ctx, damos_before_apply::SCHEME_OFFSET) else { return 0 };
    // SAFETY: fields at offsets the loader checked against tracefs.
    let (start, end) = unsafe {
        (
            ctx.read_at::<u64>(damos_before_apply::START_OFFSET),
            ctx.read_at::<u64>(damos_before_apply::END_OFFSET),
        )
    };
    let (Ok(start), Ok(end)) = (start, end) else { return 0 };
    sums.tried_regions += 1;
    sums.tried_bytes += end.saturating_sub(start);
    0
}

#[tracepoint(category = "damon", name = "damos_esz")]
pub fn damos_esz(ctx: TracePointContext) -> u32 {
    let Some(sums) = scheme(&ctx, damos_esz::SCHEME_OFFSET) else { return 0 };
    // SAFETY: a field at an offset the loader checked against tracefs.
    if let Ok(esz) = unsafe { ctx.read_at::<u64>(damos_esz::ESZ_OFFSET) } {
        (sums.esz, sums.esz_seen) = (esz, 1);
    }
    0
}
