//! Intervals auto-tuning (`intervals_goal`): steer the sample interval so that one aggregation
//! observes `access_bp` of the accesses it could observe at most.

use crate::{attrs::Attrs, region::Target};

const BP: u128 = 10_000;

/// `mult_frac(x, n, d)`: `x * n / d` without overflowing the product.
fn mult_frac(x: u128, n: u128, d: u128) -> u128 {
    (x / d) * n + (x % d) * n / d
}

/// The sample interval the next aggregations should use, or `None` to keep the current one.
/// Reads the just-finished window's `nr_accesses`; `aggr_samples` stays fixed across tunings.
pub(crate) fn tuned_sample_us(targets: &[Target], attrs: &Attrs, aggr_samples: u64) -> Option<u64> {
    let goal = &attrs.intervals_goal;
    let regions = targets.iter().flat_map(|t| &t.regions);
    let max_events: u128 = regions.clone().map(|r| r.size() as u128 * aggr_samples as u128).sum();
    let events: u128 = regions.map(|r| r.size() as u128 * r.nr_accesses as u128).sum();
    let target = (max_events * goal.access_bp as u128 / BP).max(1);
    let score_bp = mult_frac(events, BP, target);
    let mut adapt_bp = feedback(score_bp) / BP;
    if adapt_bp <= BP {
        adapt_bp = 5_000 + adapt_bp / 2; // shrink at most by half
    }
    if adapt_bp == BP {
        return None;
    }
    let scaled = (attrs.sample_us as u128 * adapt_bp / BP).min(goal.max_sample_us as u128) as u64;
    Some(scaled.max(goal.min_sample_us))
}

/// `damon_feed_loop_next_input(100_000_000, score)` with goal 10000 and minimum input 10000.
fn feedback(score_bp: u128) -> u128 {
    const LAST: u128 = 100_000_000;
    if score_bp == BP {
        return LAST;
    }
    if score_bp >= 2 * BP {
        return BP;
    }
    let compensation = LAST * score_bp.abs_diff(BP) / BP;
    if score_bp > BP { (LAST - compensation).max(BP) } else { LAST + compensation }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IntervalsGoal, Region};

    fn setup(nr_accesses: u32) -> (Vec<Target>, Attrs) {
        let mut target = Target::with_ranges(0, &[(0, 1 << 20)]);
        target.regions[0].nr_accesses = nr_accesses;
        let attrs = Attrs {
            intervals_goal: IntervalsGoal {
                access_bp: 400,
                aggrs: 3,
                min_sample_us: 1_000,
                max_sample_us: 50_000,
            },
            ..Attrs::default()
        };
        (vec![target], attrs)
    }

    #[test]
    fn feedback_matches_the_closed_forms() {
        assert_eq!(feedback(10_000) / BP, 10_000);
        for score in [0u128, 2_500, 9_999, 15_000, 19_999] {
            assert_eq!(feedback(score) / BP, 20_000 - score, "score {score}");
        }
        assert_eq!(feedback(20_000) / BP, 1);
        assert_eq!(feedback(90_000) / BP, 1);
    }

    #[test]
    fn too_few_accesses_lengthen_the_sample_interval() {
        // 0 of 20 samples: score 0 -> adapt 2x.
        let (targets, attrs) = setup(0);
        assert_eq!(tuned_sample_us(&targets, &attrs, 20), Some(10_000));
    }

    #[test]
    fn too_many_accesses_shorten_it_by_at_most_half() {
        // 20 of 20 samples at a 4 % goal: score far above 2x -> adapt_bp 1 -> 5000: halve.
        let (targets, attrs) = setup(20);
        assert_eq!(tuned_sample_us(&targets, &attrs, 20), Some(2_500));
    }

    #[test]
    fn on_target_keeps_and_bounds_clamp() {
        // 4 % of 20 samples = 0.8 accesses: a region-size-weighted mix gets exactly there.
        let mut target = Target::with_ranges(0, &[(0, 5 << 20)]);
        target.regions = vec![
            Region { nr_accesses: 4, ..Region::new(0, 1 << 20) },
            Region::new(1 << 20, 5 << 20),
        ];
        let (_, attrs) = setup(0);
        assert_eq!(tuned_sample_us(&[target], &attrs, 20), None);
        let (targets, mut attrs) = setup(0);
        attrs.intervals_goal.max_sample_us = 7_000;
        assert_eq!(tuned_sample_us(&targets, &attrs, 20), Some(7_000));
        let (targets, mut attrs) = setup(20);
        attrs.intervals_goal.min_sample_us = 4_000;
        assert_eq!(tuned_sample_us(&targets, &attrs, 20), Some(4_000));
    }
}
