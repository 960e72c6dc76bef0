//! Kernels up to 7.2: no split at all above `max_nr_regions / 2`.

use super::{Classic, Policy, SplitEnv, cut};
use crate::region::Target;

pub(crate) struct Legacy;

impl Policy for Legacy {
    fn split(&mut self, targets: &mut [Target], classic: &mut Classic, env: &mut SplitEnv) {
        let nr = cut::count(targets);
        // Above max/2 the kernel returns before recording nr: the classic path's stall test then
        // compares with older state.
        if nr <= env.max_nr_regions / 2 {
            classic.split(targets, nr, env);
            classic.last_nr_regions = nr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, *};

    #[test]
    fn above_half_stops_and_keeps_its_stale_count() {
        let mut t = [target(&[100 * P; 60])];
        let mut classic = Classic { last_nr_regions: 5 };
        let c = split_once(&mut t, &mut Legacy, 100, 42, &mut classic);
        assert_eq!((c.splits, classic.last_nr_regions), (0, 5));
    }
}
