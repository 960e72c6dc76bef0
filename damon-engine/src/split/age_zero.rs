//! The first upstream proposal: above `max_nr_regions / 2`, split regions of age 0 in two, until
//! the budget `max - nr` is spent.

use super::{Policy, SplitEnv, cut};
use crate::region::Target;

pub(crate) struct AgeZero;

impl Policy for AgeZero {
    fn split_above_half(&mut self, targets: &mut [Target], mut budget: usize, env: &mut SplitEnv) {
        let min = env.min_region_sz;
        let mut plan = Vec::new();
        for (i, r) in cut::regions(targets).enumerate() {
            if budget == 0 {
                break;
            }
            if r.age == 0
                && r.size() >= 2 * min
                && let Some(cut) = env.random_cut(r.size())
            {
                plan.push((i, cut));
                budget -= 1;
            }
        }
        cut::apply_cuts(targets, env, plan);
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, *};
    use crate::split::Classic;

    #[test]
    fn splits_only_young_regions_within_budget() {
        let mut t = [target(&[100 * P; 90])];
        for (i, r) in t[0].regions.iter_mut().enumerate() {
            r.age = if i % 3 == 0 { 0 } else { 5 };
        }
        // 30 young regions but a budget of 100 - 90 = 10.
        let (c, recent) = split_once_noting(&mut t, &mut AgeZero, 100, 42, &mut Classic::default());
        assert_eq!(c.splits, 10);
        assert!(t[0].regions.iter().filter(|r| recent.contains(0, r.start)).all(|r| r.age == 0));
    }
}
