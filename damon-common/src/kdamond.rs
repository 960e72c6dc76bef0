//! Observing the kernel's own DAMON: what the `damon:damon_aggregated` program sums per kdamond
//! target in kernel maps, and the region records it streams when recording.

/// Byte-weighted idle-age histogram buckets: ages 0..8 exactly, then four per power of two, so a
/// bucket's lower bound is within 25 % of any age in it, up to `u32::MAX`.
pub const AGE_BUCKETS: usize = 128;

/// The bucket of an age in aggregation intervals.
pub const fn age_bucket(age: u32) -> usize {
    if age < 8 {
        return age as usize;
    }
    let log = 31 - age.leading_zeros();
    8 + (log as usize - 3) * 4 + ((age >> (log - 2)) & 3) as usize
}

/// The smallest age in a bucket.
pub const fn bucket_floor(bucket: usize) -> u32 {
    if bucket < 8 {
        return bucket as u32;
    }
    let log = (bucket - 8) / 4 + 3;
    ((4 | ((bucket - 8) % 4)) as u32) << (log - 2)
}

/// The kernels' `damon:damon_aggregated` record, the same from 5.15 to 7.3; checked against
/// tracefs at load.
pub mod damon_aggregated {
    pub const CATEGORY: &str = "damon";
    pub const NAME: &str = "damon_aggregated";
    pub const TARGET_ID_OFFSET: usize = 8;
    pub const NR_REGIONS_OFFSET: usize = 16;
    pub const START_OFFSET: usize = 24;
    pub const END_OFFSET: usize = 32;
    pub const NR_ACCESSES_OFFSET: usize = 40;
    pub const AGE_OFFSET: usize = 44;
    /// Field names and their offsets, in the order above.
    pub const FIELDS: [(&str, usize); 6] = [
        ("target_id", TARGET_ID_OFFSET),
        ("nr_regions", NR_REGIONS_OFFSET),
        ("start", START_OFFSET),
        ("end", END_OFFSET),
        ("nr_accesses", NR_ACCESSES_OFFSET),
        ("age", AGE_OFFSET),
    ];
}

/// `damon:damos_before_apply` (6.7+): a region handed to a scheme's action. The record is the same
/// in every version that has it (7.3 changed the arguments, not the record).
pub mod damos_before_apply {
    pub const NAME: &str = "damos_before_apply";
    pub const SCHEME_OFFSET: usize = 12;
    pub const START_OFFSET: usize = 24;
    pub const END_OFFSET: usize = 32;
    pub const FIELDS: [(&str, usize); 3] =
        [("scheme_idx", SCHEME_OFFSET), ("start", START_OFFSET), ("end", END_OFFSET)];
}

/// `damon:damos_esz` (6.17+): a scheme's effective size quota changed.
pub mod damos_esz {
    pub const NAME: &str = "damos_esz";
    pub const SCHEME_OFFSET: usize = 12;
    pub const ESZ_OFFSET: usize = 16;
    pub const FIELDS: [(&str, usize); 2] = [("scheme_idx", SCHEME_OFFSET), ("esz", ESZ_OFFSET)];
}

/// A scheme of a kdamond: its thread id and the scheme's index in the context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SchemeKey {
    pub pid: u32,
    pub scheme: u32,
}

/// What a scheme was tried on so far (DAMOS's `nr_tried`, `sz_tried`), and its effective quota.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchemeSums {
    pub tried_regions: u64,
    pub tried_bytes: u64,
    /// The last effective size quota in bytes; valid when `esz_seen` is 1.
    pub esz: u64,
    pub esz_seen: u64,
}

/// Set by userspace before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KdamondConfig {
    /// Only this kdamond thread (0: every kdamond).
    pub pid: u32,
    /// Stream every region to `KDAMOND_REGIONS` too.
    pub record: u32,
    /// Where the kdamond's `damon_ctx` is found from its task, to read the live (auto-tuned)
    /// intervals: `task_struct.worker_private`, `kthread.data`, `damon_ctx.kdamond`; 0 when the
    /// kernel's BTF lacks one of them.
    pub task_worker_private: u64,
    pub kthread_data: u64,
    pub ctx_kdamond: u64,
}

/// A target of a kdamond: its thread id and DAMON's index of the target in its context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KdamondKey {
    pub pid: u32,
    pub target: u32,
}

/// One aggregation of one target, summed over its regions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aggregate {
    pub nr_regions: u32,
    /// Regions seen so far; the aggregation is complete when it reaches `nr_regions`.
    pub seen: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at its first region: when the window ended.
    pub ended_ns: u64,
    /// The context's intervals then, in µs (0: unknown).
    pub sample_us: u64,
    pub aggr_us: u64,
    pub update_us: u64,
    pub total_bytes: u64,
    /// Bytes of regions with at least one access.
    pub working_set_bytes: u64,
    /// Σ size × nr_accesses.
    pub accessed_bytes: u64,
    /// The largest nr_accesses of a region.
    pub max_nr_accesses: u32,
    pub _pad: u32,
    /// Bytes of regions without access, by `age_bucket(age)`.
    pub idle_bytes: [u64; AGE_BUCKETS],
}

/// What the program keeps per target: two aggregates, one being summed and the last complete
/// one, so that a reader copying the value never sees a half-summed aggregation as complete.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdamondTarget {
    /// Complete aggregations so far; the last is `slots[(complete - 1) % 2]`.
    pub complete: u64,
    /// Aggregations begun (an incomplete one is dropped when the next begins: attached midway).
    pub begun: u64,
    /// Start of the last region seen: regions come in ascending order, so one at or below it
    /// begins a new aggregation.
    pub last_start: u64,
    pub slots: [Aggregate; 2],
}

/// One region of one aggregation, streamed when recording.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KdamondRegion {
    /// The aggregation's `Aggregate::ended_ns` and its number (`KdamondTarget::begun`).
    pub ended_ns: u64,
    pub aggregation: u64,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
    pub target: u32,
    pub nr_regions: u32,
    pub nr_accesses: u32,
    pub age: u32,
    pub _pad: u32,
}

/// The region stream, in bytes: 10,000 regions of one aggregation fit six times over.
pub const KDAMOND_RING_BYTES: u32 = 1 << 22;
/// Targets of kdamonds followed at once.
pub const MAX_KDAMOND_TARGETS: u32 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_buckets_are_ordered_and_floors_are_their_first_ages() {
        let mut last = 0;
        for age in (0..5000).chain([u32::MAX / 2, u32::MAX]) {
            let b = age_bucket(age);
            assert!(b >= last && b < AGE_BUCKETS, "age {age}: bucket {b}");
            last = b;
            let floor = bucket_floor(b);
            assert!(floor <= age && age as f64 <= floor as f64 * 1.25 + 1.0, "{age} in {floor}");
            assert_eq!(age_bucket(floor), b);
        }
    }
}
