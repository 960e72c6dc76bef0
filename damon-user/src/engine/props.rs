//! Invariants of merge and split over random regions, under every policy.

use proptest::prelude::*;

use super::{
    CoreVersion, Counters, SplitPolicy,
    merge::{self, MergeParams},
    region::{Region, Target},
    split::{self, SplitState},
};

const P: u64 = 4096;

/// Contiguous page-aligned regions from `(pages, nr_accesses, age)`, with random gaps if asked.
fn regions(specs: &[(u64, u32, u32)], gaps: &[bool]) -> Vec<Region> {
    let mut at = 0;
    specs
        .iter()
        .zip(gaps.iter().chain(std::iter::repeat(&false)))
        .map(|(&(pages, nr, age), &gap)| {
            at += if gap { P } else { 0 };
            let mut r = Region::new(at, at + pages * P);
            r.nr_accesses = nr;
            r.last_nr_accesses = nr / 2;
            r.age = age;
            at = r.end;
            r
        })
        .collect()
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
        specs in prop::collection::vec((1u64..64, 0u32..=20, 0u32..50), 1..150),
        gaps in prop::collection::vec(any::<bool>(), 0..150),
        threshold in 0u32..=20,
        min_nr in 3u32..20,
        extra in 1usize..100,
        legacy in any::<bool>(),
    ) {
        let mut targets = [Target { id: 0, regions: regions(&specs, &gaps) }];
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
            guard: false,
        };
        let (lo, hi) = specs.iter().fold((u32::MAX, 0), |(lo, hi), s| (lo.min(s.1), hi.max(s.1)));
        merge::merge_regions(&mut targets, &params, &mut Counters::default());
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
        specs in prop::collection::vec((1u64..64, 0u32..=20, 0u32..3), 1..150),
        policy in policy(),
        max in 3usize..400,
        seed in any::<u64>(),
        last_nr in 0usize..400,
    ) {
        let mut targets = [Target { id: 0, regions: regions(&specs, &[]) }];
        let before = (bytes(&targets[0].regions), targets[0].regions.len());
        let mut state = SplitState { last_nr_regions: last_nr, rotation: seed % 7 };
        let counters = split::split_once(&mut targets, policy, max, seed, &mut state);
        let after = &targets[0].regions;
        assert_well_formed(after);
        prop_assert_eq!(bytes(after), before.0);
        prop_assert!(after.len() <= before.1.max(max), "{:?}: {} -> {} over max {}", policy, before.1, after.len(), max);
        prop_assert_eq!(after.len() as u64, before.1 as u64 + counters.splits);
    }
}
