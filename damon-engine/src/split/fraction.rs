//! Upstream 7.3 (the merged Jiayuan Chen series): above `max_nr_regions / 2`, split one region in
//! every `max / (max - nr)`, counted across targets, from a rotating offset, each in two.

use super::{Policy, SplitEnv, cut};
use crate::region::Target;

#[derive(Default)]
pub(crate) struct Fraction {
    /// The kernel's function-static `rotation`; here per context.
    rotation: u64,
}

impl Policy for Fraction {
    fn split_above_half(&mut self, targets: &mut [Target], budget: usize, env: &mut SplitEnv) {
        let step = env.max_nr_regions / budget;
        let offset = (self.rotation % step as u64) as usize;
        self.rotation = self.rotation.wrapping_add(1);
        let min = env.min_region_sz;
        let mut plan = Vec::new();
        for (i, r) in cut::regions(targets).enumerate().skip(offset).step_by(step) {
            if r.size() >= 2 * min
                && let Some(cut) = env.random_cut(r.size())
            {
                plan.push((i, cut));
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
    fn splits_one_in_step_and_never_overshoots() {
        // max 100, nr 60: step = 100 / 40 = 2 -> every other region, at most 40 new.
        let mut t = [target(&[100 * P; 60])];
        let (mut policy, mut classic) = (Fraction::default(), Classic::default());
        let c = split_once(&mut t, &mut policy, 100, 42, &mut classic);
        assert_eq!(c.splits, 30);
        assert_eq!((policy.rotation, classic.last_nr_regions), (1, 60));
        // The rotating offset picks the other half next time.
        let mut t2 = [target(&[100 * P; 60])];
        split_once(&mut t2, &mut policy, 100, 42, &mut classic);
        assert_eq!(t2[0].regions[0].size(), 100 * P, "offset 1 skips region 0");
        // A full context is not split at all.
        let mut full = [target(&[100 * P; 100])];
        let c = split_once(&mut full, &mut Fraction::default(), 100, 42, &mut Classic::default());
        assert_eq!(c.splits, 0);
    }

    #[test]
    fn splits_two_page_regions_but_not_smaller() {
        // `>= 2 * min` here, unlike the classic path's `>`: 8192 bytes are splittable.
        let mut t = [target(&[2 * P; 60])];
        let c = split_once(&mut t, &mut Fraction::default(), 100, 42, &mut Classic::default());
        // rand 5..9 gives a one-page cut; rand 1..4 aligns down to 0 and is skipped.
        assert!(c.splits > 0 && c.splits <= 30);
    }
}
