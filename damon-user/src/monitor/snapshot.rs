//! What the monitor reports after every aggregation.

use std::time::Duration;

use serde::Serialize;

use crate::engine::{Context, Counters};

/// The sampler's running totals when a snapshot was taken.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SamplerStats {
    pub counters: Counters,
    pub ticks: u64,
    /// Ticks that started late.
    pub late_ticks: u64,
    /// CPU time of the sampler thread so far.
    pub cpu_seconds: f64,
    /// Walk results the eBPF side could not deliver (ring buffer full).
    pub walk_lost: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegionSnapshot {
    pub start: u64,
    pub end: u64,
    /// Samples of the aggregation that found an access.
    pub nr_accesses: u32,
    /// Aggregations the pattern has stayed the same.
    pub age: u32,
    /// Page faults in the region during the aggregation.
    pub faults: u16,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetSnapshot {
    pub pid: u32,
    pub regions: Vec<RegionSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// 0 for the first aggregation.
    pub aggregation: u64,
    /// Since monitoring started.
    pub elapsed: Duration,
    pub sample_us: u64,
    pub aggr_us: u64,
    /// Samples per aggregation: the most `nr_accesses` can be.
    pub samples: u32,
    pub targets: Vec<TargetSnapshot>,
    pub stats: SamplerStats,
}

impl Snapshot {
    pub fn of(ctx: &Context, elapsed: Duration) -> Self {
        let attrs = ctx.attrs();
        Self {
            aggregation: ctx.counters().aggregations,
            elapsed,
            sample_us: attrs.sample_us,
            aggr_us: attrs.aggr_us,
            samples: attrs.samples_per_aggr(),
            targets: ctx
                .targets()
                .iter()
                .map(|t| TargetSnapshot {
                    pid: t.id as u32,
                    regions: t
                        .regions
                        .iter()
                        .map(|r| RegionSnapshot {
                            start: r.start,
                            end: r.end,
                            nr_accesses: r.nr_accesses,
                            age: r.age,
                            faults: r.faults,
                        })
                        .collect(),
                })
                .collect(),
            stats: SamplerStats::default(),
        }
    }

    pub fn nr_regions(&self) -> usize {
        self.targets.iter().map(|t| t.regions.len()).sum()
    }
}
