//! Regions streamed from the kernel's aggregations, put back together: a target's aggregation
//! is complete when it holds `nr_regions` regions; one left incomplete (attached midway, or
//! regions lost to a full ring) is dropped when the next begins.

use std::collections::BTreeMap;

use damon_common::kdamond::{KdamondKey, KdamondRegion};

use crate::{output::record::RecordedSnapshot, snapshot::Region};

struct Open {
    aggregation: u64,
    ended_ns: u64,
    nr_regions: u32,
    regions: Vec<Region>,
}

pub struct Recorder {
    open: BTreeMap<KdamondKey, Open>,
    /// When each target's last recorded aggregation ended: the next one's start.
    last_end: BTreeMap<KdamondKey, u64>,
    /// Record times count from here (CLOCK_MONOTONIC ns).
    origin_ns: u64,
    /// Aggregation interval for the first snapshot's start, in µs.
    aggr_us: u64,
    /// Aggregations dropped incomplete.
    pub incomplete: u64,
}

impl Recorder {
    pub fn new(origin_ns: u64, aggr_us: u64) -> Self {
        Self { open: BTreeMap::new(), last_end: BTreeMap::new(), origin_ns, aggr_us, incomplete: 0 }
    }

    /// Takes a region; returns its target's aggregation when this completes it.
    pub fn push(&mut self, r: KdamondRegion) -> Option<(KdamondKey, RecordedSnapshot)> {
        let key = KdamondKey { pid: r.pid, target: r.target };
        let open = self.open.entry(key).or_insert_with(|| Open {
            aggregation: r.aggregation,
            ended_ns: r.ended_ns,
            nr_regions: r.nr_regions,
            regions: Vec::new(),
        });
        if open.aggregation != r.aggregation {
            self.incomplete += 1;
            *open = Open {
                aggregation: r.aggregation,
                ended_ns: r.ended_ns,
                nr_regions: r.nr_regions,
                regions: Vec::new(),
            };
        }
        open.regions.push(Region::new(r.start, r.end, r.nr_accesses, r.age));
        if open.regions.len() < open.nr_regions as usize {
            return None;
        }
        let open = self.open.remove(&key)?;
        let end_ns = open.ended_ns.saturating_sub(self.origin_ns);
        let start_ns = self
            .last_end
            .insert(key, end_ns)
            .unwrap_or_else(|| end_ns.saturating_sub(self.aggr_us * 1000));
        Some((
            key,
            RecordedSnapshot {
                start_ns,
                end_ns,
                regions: open.regions,
                sample_us: None,
                schemes: Vec::new(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(aggregation: u64, start: u64, nr_regions: u32) -> KdamondRegion {
        KdamondRegion {
            ended_ns: 1_000_000_000 * aggregation,
            aggregation,
            start,
            end: start + 4096,
            pid: 7,
            target: 0,
            nr_regions,
            nr_accesses: 1,
            age: 2,
            _pad: 0,
        }
    }

    #[test]
    fn aggregations_complete_at_nr_regions_and_a_partial_one_is_dropped() {
        let mut r = Recorder::new(0, 100_000);
        // Attached midway: the last region of aggregation 1 only.
        assert!(r.push(region(1, 8192, 3)).is_none());
        assert!(r.push(region(2, 0, 3)).is_none());
        assert!(r.push(region(2, 4096, 3)).is_none());
        let (key, s) = r.push(region(2, 8192, 3)).unwrap();
        assert_eq!((key.pid, key.target, s.regions.len()), (7, 0, 3));
        assert_eq!((s.start_ns, s.end_ns), (1_900_000_000, 2_000_000_000));
        assert_eq!(r.incomplete, 1);
        // The next starts where the last ended.
        assert!(r.push(region(3, 0, 2)).is_none());
        let (_, s) = r.push(region(3, 4096, 2)).unwrap();
        assert_eq!((s.start_ns, s.end_ns), (2_000_000_000, 3_000_000_000));
    }
}
