//! Monitoring attributes, with the kernel's defaults and `damon_set_attrs` validation.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Intervals auto-tuning: aim for `access_bp` (1/10000) of the maximum observable accesses per
/// aggregation, adjusting the sample interval within `[min_sample_us, max_sample_us]` every
/// `aggrs` aggregations. `aggrs == 0` turns tuning off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntervalsGoal {
    pub access_bp: u32,
    pub aggrs: u32,
    pub min_sample_us: u64,
    pub max_sample_us: u64,
}

/// All times in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Attrs {
    pub sample_us: u64,
    pub aggr_us: u64,
    pub ops_update_us: u64,
    pub min_nr_regions: u32,
    pub max_nr_regions: u32,
    pub intervals_goal: IntervalsGoal,
}

impl Default for Attrs {
    fn default() -> Self {
        Self {
            sample_us: 5_000,
            aggr_us: 100_000,
            ops_update_us: 60_000_000,
            min_nr_regions: 10,
            max_nr_regions: 1_000,
            intervals_goal: IntervalsGoal::default(),
        }
    }
}

impl Attrs {
    /// The kernel's `damon_set_attrs` checks, one message per violation.
    pub fn validate(&self) -> Result<()> {
        if self.sample_us == 0 {
            bail!("the sample interval must be positive");
        }
        if self.ops_update_us == 0 {
            bail!("the operations update interval must be positive");
        }
        if self.min_nr_regions < 3 {
            bail!("min_nr_regions must be at least 3 (got {})", self.min_nr_regions);
        }
        if self.min_nr_regions > self.max_nr_regions {
            bail!(
                "min_nr_regions ({}) must not exceed max_nr_regions ({})",
                self.min_nr_regions,
                self.max_nr_regions
            );
        }
        if self.sample_us > self.aggr_us {
            bail!(
                "the sample interval ({} us) must not exceed the aggregation interval ({} us)",
                self.sample_us,
                self.aggr_us
            );
        }
        let goal = &self.intervals_goal;
        if goal.aggrs != 0 {
            if !(1..=10_000).contains(&goal.access_bp) {
                bail!(
                    "intervals goal: access_bp ({}) is not 1 to 10000 basis points",
                    goal.access_bp
                );
            }
            if goal.min_sample_us > goal.max_sample_us {
                bail!(
                    "intervals goal: min_sample_us ({}) exceeds max_sample_us ({})",
                    goal.min_sample_us,
                    goal.max_sample_us
                );
            }
            if !(goal.min_sample_us..=goal.max_sample_us).contains(&self.sample_us) {
                bail!(
                    "intervals goal: the sample interval ({} us) is outside [{}, {}] us",
                    self.sample_us,
                    goal.min_sample_us,
                    goal.max_sample_us
                );
            }
        }
        Ok(())
    }

    /// `damon_nr_samples_per_aggr`: the most accesses one aggregation can count (at least 1).
    pub fn samples_per_aggr(&self) -> u32 {
        (self.aggr_us / self.sample_us.max(1)).clamp(1, u32::MAX as u64) as u32
    }

    /// Sample intervals per aggregation interval, as the main loop schedules them.
    pub(crate) fn aggr_in_samples(&self) -> u64 {
        self.aggr_us / self.sample_us.max(1)
    }

    pub(crate) fn ops_update_in_samples(&self) -> u64 {
        self.ops_update_us / self.sample_us.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(sample_us: u64, aggr_us: u64, min: u32, max: u32) -> Attrs {
        Attrs { sample_us, aggr_us, min_nr_regions: min, max_nr_regions: max, ..Attrs::default() }
    }

    #[test]
    fn defaults_are_the_kernels_and_valid() {
        let a = Attrs::default();
        assert_eq!((a.sample_us, a.aggr_us, a.ops_update_us), (5_000, 100_000, 60_000_000));
        assert_eq!((a.min_nr_regions, a.max_nr_regions), (10, 1_000));
        assert_eq!(a.samples_per_aggr(), 20);
        a.validate().unwrap();
    }

    #[test]
    fn rejects_what_the_kernel_rejects_and_zero_intervals() {
        let err = |a: Attrs| a.validate().unwrap_err().to_string();
        // The kernel takes a zero sample interval as "as often as it can"; an engine run by
        // time (and the simulator) cannot.
        assert_eq!(err(attrs(0, 100_000, 10, 100)), "the sample interval must be positive");
        let no_updates = Attrs { ops_update_us: 0, ..Attrs::default() };
        assert_eq!(err(no_updates), "the operations update interval must be positive");
        assert!(err(attrs(5_000, 100_000, 2, 100)).contains("at least 3"));
        assert!(err(attrs(5_000, 100_000, 200, 100)).contains("must not exceed max_nr_regions"));
        assert!(err(attrs(200_000, 100_000, 10, 100)).contains("aggregation interval"));
        let mut goal = attrs(5_000, 100_000, 10, 100);
        goal.intervals_goal =
            IntervalsGoal { access_bp: 400, aggrs: 3, min_sample_us: 10_000, max_sample_us: 1_000 };
        assert!(err(goal).contains("exceeds max_sample_us"));
        let mut greedy = goal;
        greedy.intervals_goal.access_bp = 99_999;
        assert!(err(greedy).contains("access_bp (99999) is not 1 to 10000 basis points"));
        goal.intervals_goal.max_sample_us = 20_000;
        assert!(err(goal).contains("outside"));
        goal.intervals_goal.min_sample_us = 5_000;
        goal.validate().unwrap();
        // Tuning off: its bounds are not checked.
        goal.intervals_goal = IntervalsGoal { aggrs: 0, min_sample_us: 9, ..goal.intervals_goal };
        goal.validate().unwrap();
    }

    #[test]
    fn samples_per_aggr_treats_zero_sample_as_one_and_is_at_least_one() {
        assert_eq!(attrs(0, 100, 3, 10).samples_per_aggr(), 100);
        assert_eq!(attrs(7, 5, 3, 10).samples_per_aggr(), 1);
    }
}
