//! Invariants of merge and split over random regions, under every policy. Regions carry random
//! quarter evidence, so policies that read it (adaptive's guard and above-half cuts) are
//! exercised too.

use proptest::prelude::*;

use crate::{
    CoreVersion, Counters, SplitPolicy,
    merge::{self, MergeParams},
    region::{Quarters, Region, Target},
    split::{Classic, testing::split_once},
};

const P: u64 = 4096;

/// One region: pages, nr_accesses, age, and per quarter (samples, hits seed).
type Spec = (u64, u32, u32, [(u8, u8); 4]);

fn spec(max_age: u32) -> impl Strategy<Value = Spec> {
    (1u64..64, 0u32..=20, 0..max_age, prop::array::uniform4((0u8..=64, any::<u8>())))
}

/// Contiguous page-aligned regions from specs, with random gaps if asked.
fn regions(specs: &[Spec], gaps: &[bool]) -> Vec<Region> {
    let mut at = 0;
    specs
        .iter()
        .zip(gaps.iter().chain(std::iter::repeat(&false)))
        .map(|(&(pages, nr, age, evidence), &gap)| {
            at += if gap { P } else { 0 };
            let mut r = Region::new(at, at + pages * P);
            r.nr_accesses = nr;
            r.last_nr_accesses = nr / 2;
            r.age = age;
            let mut quarters = Quarters::default();
            for (k, (samples, seed)) in evidence.into_iter().enumerate() {
                quarters.samples[k] = samples;
                quarters.hits[k] = seed % (samples + 1);
            }
            r.quarters = quarters;
            at = r.end;
            r
        })
        .collect()
}

/// Regions with more than a few samples in some quarter: the evidence is really there.
fn with_evidence(regions: &[Region]) -> usize {
    regions.iter().filter(|r| r.quarters.samples.iter().any(|&n| n >= 8)).count()
}

fn assert_well_formed(regions: &[Region]) {
    for r in regions {
        assert!(r.start < r.end && r.start % P == 0 && r.end % P == 0, "{r:?}");
        assert!(r.size() >= P);
    }
    for w in regions.windows(2) {
        assert!(w[0].end <= w[1].start, "unsorted or overlapping: {:?} {:?}", w[0], w[1]);
    }
}

fn bytes(regions: &[Region]) -> u64 {
    regions.iter().map(Region::size).sum()
}

fn policy() -> impl Strategy<Value = SplitPolicy> {
    prop::sample::select(SplitPolicy::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn merge_keeps_order_bytes_and_bounds(
        specs in prop::collection::vec(spec(50), 1..150),
        policy in policy(),
        gaps in prop::collection::vec(any::<bool>(), 0..150),
        threshold in 0u32..=20,
        min_nr in 3u32..20,
        extra in 1usize..100,
        legacy in any::<bool>(),
    ) {
        let mut targets = [Target { id: 0, regions: regions(&specs, &gaps) }];
        prop_assume!(with_evidence(&targets[0].regions) > 0);
        let before = bytes(&targets[0].regions);
        let sz_limit = merge::apply_min_nr_regions(&mut targets, min_nr, P);
        assert!(targets[0].regions.iter().all(|r| r.size() <= sz_limit));
        prop_assert_eq!(bytes(&targets[0].regions), before);
        let max_nr_regions = 2 * min_nr as usize + extra;
        let params = MergeParams {
            threshold,
            sz_limit,
            max_nr_regions,
            max_threshold: 20,
            version: if legacy { CoreVersion::Legacy } else { CoreVersion::Newest },
            aggregation: 7,
            samples: 20,
        };
        let (lo, hi) = specs.iter().fold((u32::MAX, 0), |(lo, hi), s| (lo.min(s.1), hi.max(s.1)));
        policy.build().merge(&mut targets, &params, &mut Counters::default(), &mut Default::default());
        let merged = &targets[0].regions;
        assert_well_formed(merged);
        prop_assert_eq!(bytes(merged), before);
        prop_assert!(merged.iter().all(|r| (lo..=hi).contains(&r.nr_accesses) && r.size() <= sz_limit));
        // Without gaps, the retry loop's last pass can merge every neighbour the size limit
        // lets it; greedy packing then leaves at most 2 * min + 1 regions.
        if !gaps.iter().take(specs.len()).any(|&g| g) {
            prop_assert!(merged.len() <= max_nr_regions, "{} > {}", merged.len(), max_nr_regions);
        }
    }

    #[test]
    fn split_keeps_order_bytes_alignment_and_the_cap(
        specs in prop::collection::vec(spec(3), 1..150),
        policy in policy(),
        max in 3usize..400,
        seed in any::<u64>(),
        last_nr in 0usize..400,
    ) {
        let mut targets = [Target { id: 0, regions: regions(&specs, &[]) }];
        prop_assume!(with_evidence(&targets[0].regions) > 0);
        let before = (bytes(&targets[0].regions), targets[0].regions.len());
        let mut classic = Classic { last_nr_regions: last_nr };
        let counters = split_once(&mut targets, &mut *policy.build(), max, seed, &mut classic);
        let after = &targets[0].regions;
        assert_well_formed(after);
        prop_assert_eq!(bytes(after), before.0);
        prop_assert!(after.len() <= before.1.max(max), "{:?}: {} -> {} over max {}", policy, before.1, after.len(), max);
        prop_assert_eq!(after.len() as u64, before.1 as u64 + counters.splits);
    }
}
