//! What the monitor reports after every aggregation, and the region type every output shares
//! (live views, records, reports, metrics).

use std::time::Duration;

use damon_engine::{Context, Counters, schemes::SchemeStatus};
use serde::{Deserialize, Serialize};

/// One region of one aggregation, in DAMON's units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// Samples of the aggregation that found an access.
    pub nr_accesses: u32,
    /// Aggregation intervals the access pattern has held.
    pub age: u32,
    /// Page faults in the region during the aggregation (0 where unknown, as in damo's records).
    #[serde(default)]
    pub faults: u32,
    /// No sample of the aggregation could tell accessed from idle (memory the clear cannot
    /// reset: locked, hugetlb, PFN-mapped, shared): neither idle nor hot; `nr_accesses` is 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
}

impl Region {
    pub fn new(start: u64, end: u64, nr_accesses: u32, age: u32) -> Self {
        Self { start, end, nr_accesses, age, faults: 0, unknown: false }
    }

    pub fn size(&self) -> u64 {
        self.end - self.start
    }
}

/// The sampler's running totals when a snapshot was taken.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SamplerStats {
    pub counters: Counters,
    pub ticks: u64,
    /// Ticks that started late.
    pub late_ticks: u64,
    /// CPU time of the sampler thread so far.
    pub cpu_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetSnapshot {
    pub pid: u32,
    pub regions: Vec<Region>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// 0 for the first aggregation.
    pub aggregation: u64,
    /// When the aggregation's window began and ended, since monitoring started: real times,
    /// longer than the aggregation interval when sample ticks were late.
    pub started: Duration,
    pub elapsed: Duration,
    pub sample_us: u64,
    pub aggr_us: u64,
    /// Samples per aggregation: the most `nr_accesses` can be.
    pub samples: u32,
    pub targets: Vec<TargetSnapshot>,
    pub stats: SamplerStats,
    /// Each DAMOS scheme's stats so far, in order.
    pub schemes: Vec<SchemeStatus>,
}

impl Snapshot {
    /// The context's regions at an aggregation whose window ran from `started` to `elapsed`.
    pub fn of(ctx: &Context, started: Duration, elapsed: Duration, stats: SamplerStats) -> Self {
        let attrs = ctx.window_attrs();
        let samples = attrs.samples_per_aggr();
        let region = |r: &damon_engine::Region| Region {
            start: r.start,
            end: r.end,
            nr_accesses: r.nr_accesses,
            age: r.age,
            faults: r.faults.into(),
            unknown: r.all_unknown(samples),
        };
        Self {
            aggregation: ctx.counters().aggregations,
            started,
            elapsed,
            sample_us: attrs.sample_us,
            aggr_us: attrs.aggr_us,
            samples: attrs.samples_per_aggr(),
            targets: ctx
                .targets()
                .iter()
                .map(|t| TargetSnapshot {
                    pid: t.id as u32,
                    regions: t.regions.iter().map(region).collect(),
                })
                .collect(),
            stats,
            schemes: ctx.scheme_status(),
        }
    }

    pub fn nr_regions(&self) -> usize {
        self.targets.iter().map(|t| t.regions.len()).sum()
    }
}
