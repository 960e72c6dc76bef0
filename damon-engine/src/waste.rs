//! Wasted splits: boundaries a split made, remembered for two aggregations, so that a merge that
//! removes one counts that split as wasted. Kept beside the regions (not in them): only recent
//! splits are remembered, and regions stay small.

use foldhash::HashMap;

/// How many aggregations after a split merging its boundary away wastes it.
const WINDOW: u32 = 2;

#[derive(Clone, Debug, Default)]
pub(crate) struct RecentSplits {
    /// (target id, boundary address) → the aggregation that split there.
    made: HashMap<(u64, u64), u32>,
}

impl RecentSplits {
    pub fn mark(&mut self, target: u64, boundary: u64, aggregation: u32) {
        self.made.insert((target, boundary), aggregation);
    }

    /// Whether merging away `boundary` of `target` in `aggregation` wastes a split.
    pub fn merged(&mut self, target: u64, boundary: u64, aggregation: u32) -> bool {
        self.made
            .remove(&(target, boundary))
            .is_some_and(|at| aggregation.wrapping_sub(at) <= WINDOW)
    }

    /// Forgets splits too old to be wasted any more.
    pub fn expire(&mut self, aggregation: u32) {
        self.made.retain(|_, at| aggregation.wrapping_sub(*at) <= WINDOW);
    }

    #[cfg(test)]
    pub fn contains(&self, target: u64, boundary: u64) -> bool {
        self.made.contains_key(&(target, boundary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boundary_merged_within_two_aggregations_is_wasted_once() {
        let mut recent = RecentSplits::default();
        recent.mark(1, 4096, 9);
        assert!(!recent.merged(2, 4096, 10), "another target's boundary");
        assert!(recent.merged(1, 4096, 11));
        assert!(!recent.merged(1, 4096, 11), "counted once");
        recent.mark(1, 8192, 4);
        recent.expire(10);
        assert!(!recent.merged(1, 8192, 10), "six aggregations later: a useful split");
    }
}
