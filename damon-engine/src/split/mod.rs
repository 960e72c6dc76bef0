//! Splitting regions to discover finer structure. While at most half of `max_nr_regions` are in
//! use the kernel's policies take its classic path (adaptive its own); above that they differ. One file per policy;
//! what they share (cutting regions, the classic path) is in `cut`, the statistics over a
//! region's samples in `evidence`, and what differs is asked of the policy through [`Policy`].

mod adaptive;
mod age_zero;
mod cut;
pub(crate) mod evidence;
mod fraction;
mod legacy;

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

pub(crate) use self::cut::Classic;
use crate::{
    Counters,
    merge::{self, MergeParams},
    region::{Region, Target},
    rng::{RandVersion, Rng},
    waste::RecentSplits,
};

/// What to do when more than half of `max_nr_regions` are in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitPolicy {
    /// Kernels up to 7.2: stop splitting.
    Legacy,
    /// The first upstream proposal: split regions whose age is 0, within the budget `max - nr`.
    AgeZero,
    /// Upstream 7.3: split one region in every `max / (max - nr)`, from a rotating offset.
    Fraction,
    /// udamon's own: split where the samples say the parts of a region differ (the default).
    #[default]
    Adaptive,
}

impl SplitPolicy {
    pub const ALL: [SplitPolicy; 4] = [Self::Legacy, Self::AgeZero, Self::Fraction, Self::Adaptive];

    pub fn name(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::AgeZero => "age-zero",
            Self::Fraction => "fraction",
            Self::Adaptive => "adaptive",
        }
    }

    /// One line on what the policy does, for help texts.
    pub fn about(self) -> &'static str {
        match self {
            Self::Legacy => "no split above max/2 (kernels up to 7.2)",
            Self::AgeZero => "above max/2, split regions of age 0 (the first upstream proposal)",
            Self::Fraction => "above max/2, split one region in every max/(max-nr) (upstream 7.3)",
            Self::Adaptive => "split where the samples say a region's parts differ (udamon's own)",
        }
    }

    /// A fresh instance of the policy, with its own state.
    pub(crate) fn build(self) -> Box<dyn Policy> {
        match self {
            Self::Legacy => Box::new(legacy::Legacy),
            Self::AgeZero => Box::new(age_zero::AgeZero),
            Self::Fraction => Box::<fraction::Fraction>::default(),
            Self::Adaptive => Box::<adaptive::Adaptive>::default(),
        }
    }
}

impl fmt::Display for SplitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SplitPolicy {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|p| p.name() == text).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            anyhow::anyhow!("unknown split policy `{text}` (one of {})", names.join(", "))
        })
    }
}

/// Everything a split pass reads besides the regions.
pub(crate) struct SplitEnv<'a> {
    pub max_nr_regions: usize,
    pub min_region_sz: u64,
    pub rng: &'a mut Rng,
    pub rand_version: RandVersion,
    pub aggregation: u32,
    pub counters: &'a mut Counters,
    /// Where new boundaries are remembered, to count the splits merged back.
    pub recent: &'a mut RecentSplits,
    /// Samples per aggregation, to read counts as rates.
    pub samples: u32,
}

/// What differs between split policies. The engine calls `reset` then `split` at the end of
/// every aggregation, asks `keeps_evidence` when it records a sample, and `merges` in the
/// first merge pass.
pub(crate) trait Policy: Send {
    /// Whether every sample and fault also lands in its region's quarter evidence.
    fn keeps_evidence(&self) -> bool {
        false
    }

    /// Whether the first merge pass merges these neighbours, whose windows each had `samples`,
    /// given what their window counts say against the merge threshold (the kernel's rule). A
    /// policy may keep apart what the counts would merge, or join what they would not; told the
    /// counts' answer, it tests only the way that can change it (this runs for every pair).
    fn merges(&self, _left: &Region, _right: &Region, _samples: u32, by_counts: bool) -> bool {
        by_counts
    }

    /// `kdamond_merge_regions` under this policy: instantiated per policy, so that `merges`,
    /// asked for every pair of neighbours, is a direct call.
    fn merge(
        &self,
        targets: &mut [Target],
        params: &MergeParams,
        counters: &mut Counters,
        recent: &mut RecentSplits,
    ) {
        merge::merge_regions(targets, params, self, counters, recent);
    }

    /// `kdamond_reset_aggregated`: the window just finished becomes the last one.
    fn reset(&mut self, targets: &mut [Target], _env: &SplitEnv) {
        targets.iter_mut().flat_map(|t| &mut t.regions).for_each(Region::reset_window);
    }

    /// `kdamond_split_regions`: the classic path at or below max/2, this policy's own above.
    fn split(&mut self, targets: &mut [Target], classic: &mut Classic, env: &mut SplitEnv) {
        let nr = cut::count(targets);
        let max = env.max_nr_regions;
        if nr <= max / 2 {
            classic.split(targets, nr, env);
        } else if nr < max {
            self.split_above_half(targets, max - nr, env);
        }
        classic.last_nr_regions = nr;
    }

    /// More than half of max in use, fewer than max: at most `budget` new regions.
    fn split_above_half(&mut self, _targets: &mut [Target], _budget: usize, _env: &mut SplitEnv) {}
}

/// The end of an aggregation under `policy`: reset, then split.
pub(crate) fn reset_and_split(
    targets: &mut [Target],
    policy: &mut dyn Policy,
    classic: &mut Classic,
    env: &mut SplitEnv,
) {
    policy.reset(targets, env);
    policy.split(targets, classic, env);
}

#[cfg(test)]
pub(crate) mod testing {
    //! One reset-and-split at aggregation 3 with page-sized minimum regions.

    use super::*;

    pub const P: u64 = 4096;

    pub fn split_once(
        targets: &mut [Target],
        policy: &mut dyn Policy,
        max_nr_regions: usize,
        seed: u64,
        classic: &mut Classic,
    ) -> Counters {
        split_once_noting(targets, policy, max_nr_regions, seed, classic).0
    }

    /// `split_once`, with the boundaries it made.
    pub fn split_once_noting(
        targets: &mut [Target],
        policy: &mut dyn Policy,
        max_nr_regions: usize,
        seed: u64,
        classic: &mut Classic,
    ) -> (Counters, RecentSplits) {
        let mut rng = Rng::new(seed);
        let (mut counters, mut recent) = (Counters::default(), RecentSplits::default());
        let mut env = SplitEnv {
            max_nr_regions,
            min_region_sz: P,
            rng: &mut rng,
            rand_version: RandVersion::Newest,
            aggregation: 3,
            counters: &mut counters,
            recent: &mut recent,
            samples: 20,
        };
        reset_and_split(targets, policy, classic, &mut env);
        (counters, recent)
    }

    /// Contiguous regions of the given sizes from 0.
    pub fn target(sizes: &[u64]) -> Target {
        let mut start = 0;
        let regions = sizes
            .iter()
            .map(|&size| {
                let r = Region::new(start, start + size);
                start += size;
                r
            })
            .collect();
        Target { id: 0, regions }
    }

    /// Regions tile `[0, total)` in page-aligned pieces of at least a page.
    pub fn assert_tiles(t: &Target, total: u64) {
        assert_eq!(t.regions.first().unwrap().start, 0);
        assert_eq!(t.regions.last().unwrap().end, total);
        for w in t.regions.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in &t.regions {
            assert!(r.size() >= P && r.start % P == 0 && r.end % P == 0, "{r:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn names_parse_back() {
        for policy in SplitPolicy::ALL {
            assert_eq!(policy.name().parse::<SplitPolicy>().unwrap(), policy);
        }
        let err = "nope".parse::<SplitPolicy>().unwrap_err().to_string();
        assert!(err.contains("one of legacy, age-zero, fraction, adaptive"), "{err}");
    }

    #[test]
    fn classic_path_never_splits_two_pages_under_any_policy() {
        for policy in SplitPolicy::ALL {
            let mut t = [target(&[2 * P; 10])];
            split_once(&mut t, &mut *policy.build(), 1000, 42, &mut Classic::default());
            assert_eq!(t[0].regions.len(), 10, "{policy:?} split an 8192-byte region");
        }
    }
}
