//! Merging similar neighbours, ages, and the size limit that keeps at least `min_nr_regions`.

use crate::{
    CoreVersion, Counters,
    region::{Quarters, Region, Target, align_up},
    split::Policy,
    waste::RecentSplits,
};

/// Everything one merge needs to know besides the regions and the policy.
pub(crate) struct MergeParams {
    pub threshold: u32,
    pub sz_limit: u64,
    pub max_nr_regions: usize,
    /// `damon_nr_samples_per_aggr` (newest) or `aggr / sample` (legacy): the threshold's ceiling.
    pub max_threshold: u32,
    pub version: CoreVersion,
    /// The current aggregation, for recognising wasted splits.
    pub aggregation: u32,
    /// Samples per aggregation: memory no sample could read never merges with memory that was
    /// read (unknown is not idle).
    pub samples: u32,
}

/// `kdamond_merge_regions`: merge with `threshold`, doubling it while there are still more than
/// `max_nr_regions` regions. Ages change in the first pass only (newest) or in every pass (legacy).
/// The split `policy` may keep neighbours apart in the first pass; generic (see
/// `Policy::merge`), so its per-pair test inlines.
pub(crate) fn merge_regions<P: Policy + ?Sized>(
    targets: &mut [Target],
    p: &MergeParams,
    policy: &P,
    counters: &mut Counters,
    recent: &mut RecentSplits,
) {
    let mut threshold = p.threshold;
    let mut count_age = true;
    // The policy may keep neighbours apart in the first pass only, so the retries can always
    // bring the count down (legacy counts ages in every pass: that is not the same flag).
    let mut first = true;
    loop {
        let nr: usize = targets
            .iter_mut()
            .map(|t| {
                let pass = Pass { threshold, count_age, guard: first };
                merge_regions_of(t, pass, p, policy, (&mut *counters, &mut *recent))
            })
            .sum();
        // A guarded pass at the top threshold gets one unguarded retry.
        let guarded = std::mem::replace(&mut first, false);
        match p.version {
            CoreVersion::Newest => {
                count_age = false;
                if nr <= p.max_nr_regions || (threshold >= p.max_threshold && !guarded) {
                    return;
                }
                threshold = if threshold < p.max_threshold / 2 {
                    (threshold * 2).max(1)
                } else {
                    p.max_threshold
                };
            }
            CoreVersion::Legacy => {
                threshold = threshold.saturating_mul(2).max(1);
                if nr <= p.max_nr_regions || (threshold / 2 >= p.max_threshold && !guarded) {
                    return;
                }
            }
        }
    }
}

/// One pass over a target: regions collapse left to right into the last kept region.
/// One merge pass's settings.
#[derive(Clone, Copy)]
struct Pass {
    threshold: u32,
    count_age: bool,
    /// Whether the policy may keep neighbours apart.
    guard: bool,
}

fn merge_regions_of<P: Policy + ?Sized>(
    target: &mut Target,
    Pass { threshold, count_age, guard }: Pass,
    p: &MergeParams,
    policy: &P,
    (counters, recent): (&mut Counters, &mut RecentSplits),
) -> usize {
    let regions = &mut target.regions;
    // Kept regions are `[..kept]` and the run `[run..i]` not yet moved down to `kept`: moved a
    // run at a time, as one copy, when a merge ends it (a region at a time costs a third of
    // the pass once an early merge shifts every region after it).
    let (mut kept, mut run) = (0usize, 0);
    for i in 0..regions.len() {
        if count_age {
            update_age(&mut regions[i], threshold);
        }
        if i > 0 {
            // The last region kept: still in the run, or already moved (then it was merged into).
            let prev = if run < i { i - 1 } else { kept - 1 };
            let (done, rest) = regions.split_at_mut(i);
            let (prev, r) = (&mut done[prev], &rest[0]);
            if prev.end == r.start
                && prev.size() + r.size() <= p.sz_limit
                && prev.all_unknown(p.samples) == r.all_unknown(p.samples)
                && similar(prev, r, threshold, guard.then_some(policy), p.samples)
            {
                if recent.merged(target.id, r.start, p.aggregation) {
                    counters.wasted_splits += 1;
                }
                merge_into(prev, r);
                counters.merges += 1;
                regions.copy_within(run..i, kept);
                kept += i - run;
                run = i + 1;
            }
        }
    }
    let len = regions.len();
    regions.copy_within(run..len, kept);
    kept += len - run;
    regions.truncate(kept);
    kept
}

/// Whether neighbours are alike enough to merge: their window counts against the threshold,
/// which the policy may overrule in a guarded pass.
fn similar<P: Policy + ?Sized>(
    prev: &Region,
    r: &Region,
    threshold: u32,
    guard: Option<&P>,
    samples: u32,
) -> bool {
    let by_counts = prev.nr_accesses.abs_diff(r.nr_accesses) <= threshold;
    guard.map_or(by_counts, |policy| policy.merges(prev, r, samples, by_counts))
}

fn update_age(r: &mut Region, threshold: u32) {
    let (now, last) = (r.nr_accesses, r.last_nr_accesses);
    let changed = now.abs_diff(last) > threshold || (now == 0) != (last == 0);
    // Without a branch: noisy counts make `changed` a coin toss in busy memory.
    r.age = (r.age + 1) * u32::from(!changed);
}

/// Size-weighted, truncating averages; `prev` keeps its own `last_nr_accesses`.
fn merge_into(prev: &mut Region, r: &Region) {
    let (sp, sr) = (prev.size() as u128, r.size() as u128);
    let avg = |a: u32, b: u32| ((a as u128 * sp + b as u128 * sr) / (sp + sr)) as u32;
    prev.nr_accesses = avg(prev.nr_accesses, r.nr_accesses);
    prev.age = avg(prev.age, r.age);
    prev.faults = prev.faults.saturating_add(r.faults);
    let merged = (prev.start, r.end);
    let mut quarters = Quarters::default();
    quarters.absorb(&prev.quarters, (prev.start, prev.end), merged);
    quarters.absorb(&r.quarters, (r.start, r.end), merged);
    prev.quarters = quarters;
    prev.end = r.end;
}

/// `damon_region_sz_limit`: the total size shared by `min_nr_regions`, at least `min_region_sz`.
pub(crate) fn region_sz_limit(targets: &[Target], min_nr_regions: u32, min_region_sz: u64) -> u64 {
    let total: u64 = targets.iter().map(Target::total_bytes).sum();
    let limit = if min_nr_regions == 0 { total } else { total / min_nr_regions as u64 };
    limit.max(min_region_sz)
}

/// `damon_apply_min_nr_regions`: cuts every region bigger than the (page-rounded-up) limit into
/// limit-sized pieces that copy its counts; returns the limit, the next merge's `sz_limit`.
pub(crate) fn apply_min_nr_regions(
    targets: &mut [Target],
    min_nr_regions: u32,
    min_region_sz: u64,
) -> u64 {
    let max_sz = align_up(region_sz_limit(targets, min_nr_regions, min_region_sz), min_region_sz);
    for target in targets {
        if target.regions.iter().all(|r| r.size() <= max_sz) {
            continue;
        }
        let mut cut = Vec::with_capacity(target.regions.len() + 8);
        for r in target.regions.drain(..) {
            let mut start = r.start;
            while r.end - start > max_sz {
                cut.push(Region { start, end: start + max_sz, ..r });
                start += max_sz;
            }
            cut.push(Region { start, ..r });
        }
        target.regions = cut;
    }
    max_sz
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn region(start: u64, end: u64, nr: u32, last: u32, age: u32) -> Region {
        Region { nr_accesses: nr, last_nr_accesses: last, age, ..Region::new(start, end) }
    }

    fn params(threshold: u32, max_nr: usize, version: CoreVersion) -> MergeParams {
        MergeParams {
            threshold,
            sz_limit: u64::MAX,
            max_nr_regions: max_nr,
            max_threshold: 20,
            version,
            aggregation: 10,
            samples: 20,
        }
    }

    fn merge(t: &mut Target, p: &MergeParams, c: &mut Counters) {
        merge_regions(std::slice::from_mut(t), p, &NoGuard, c, &mut RecentSplits::default());
    }

    /// A policy that never keeps neighbours apart.
    struct NoGuard;
    impl Policy for NoGuard {}

    #[test]
    fn merge_averages_by_size_truncating_and_keeps_prevs_last() {
        // 1 page with 3 accesses + 2 pages with 4: (3 + 8) / 3 = 3.67 -> 3.
        let mut t =
            Target { id: 0, regions: vec![region(0, P, 3, 9, 4), region(P, 3 * P, 4, 1, 1)] };
        let mut c = Counters::default();
        merge(&mut t, &params(1, 100, CoreVersion::Newest), &mut c);
        assert_eq!(t.regions.len(), 1);
        let r = &t.regions[0];
        assert_eq!((r.start, r.end, r.nr_accesses, r.last_nr_accesses), (0, 3 * P, 3, 9));
        // Ages first: |3-9| > 1 -> 0; |4-1| > 1 -> 0. Then averaged: 0.
        assert_eq!(r.age, 0);
        assert_eq!(c.merges, 1);
    }

    #[test]
    fn runs_collapse_left_to_right_against_the_running_average() {
        // 0, 2, 4 with threshold 2: 0+2 -> 1 (equal sizes); then |4 - 1| = 3 > 2: kept apart.
        let regions =
            vec![region(0, P, 0, 0, 0), region(P, 2 * P, 2, 2, 0), region(2 * P, 3 * P, 4, 4, 0)];
        let mut t = Target { id: 0, regions };
        let mut c = Counters::default();
        merge(&mut t, &params(2, 100, CoreVersion::Newest), &mut c);
        let got: Vec<(u64, u32)> = t.regions.iter().map(|r| (r.end, r.nr_accesses)).collect();
        assert_eq!(got, vec![(2 * P, 1), (3 * P, 4)]);
    }

    #[test]
    fn gaps_and_the_size_limit_prevent_merges() {
        let regions = vec![
            region(0, P, 5, 5, 0),
            region(2 * P, 3 * P, 5, 5, 0),
            region(3 * P, 5 * P, 5, 5, 0),
        ];
        let mut t = Target { id: 0, regions };
        let mut p = params(0, 100, CoreVersion::Newest);
        p.sz_limit = 2 * P;
        merge(&mut t, &p, &mut Counters::default());
        assert_eq!(t.regions.len(), 3);
    }

    #[test]
    fn unknown_and_read_memory_stay_apart() {
        let mut unknown = region(P, 2 * P, 0, 0, 0);
        unknown.unknown = 20;
        let mut t = Target {
            id: 0,
            regions: vec![region(0, P, 0, 0, 0), unknown, region(2 * P, 3 * P, 0, 0, 0)],
        };
        merge(&mut t, &params(20, 1, CoreVersion::Newest), &mut Counters::default());
        assert_eq!(t.regions.len(), 3, "not even to meet max_nr_regions");
    }

    #[test]
    fn age_rules() {
        let aged = |nr, last, age, thres| {
            let mut r = region(0, P, nr, last, age);
            update_age(&mut r, thres);
            r.age
        };
        assert_eq!(aged(5, 5, 3, 0), 4); // same: older
        assert_eq!(aged(7, 5, 3, 2), 4); // within threshold: older
        assert_eq!(aged(8, 5, 3, 2), 0); // beyond threshold: young
        assert_eq!(aged(1, 0, 3, 2), 0); // started being accessed: young
        assert_eq!(aged(0, 1, 3, 2), 0); // stopped being accessed: young
    }

    /// Alternating 0/20 pages never merge below threshold 20: the retry loop must run
    /// 0, 1, 2, 4, 8, 16, 20 and stop at the ceiling.
    fn alternating(n: u64) -> Target {
        Target {
            id: 0,
            regions: (0..n)
                .map(|i| region(i * P, (i + 1) * P, (i % 2 * 20) as u32, 0, 0))
                .collect(),
        }
    }

    #[test]
    fn newest_retry_doubles_to_exactly_the_ceiling_and_ages_once() {
        let mut t = alternating(8);
        let mut c = Counters::default();
        merge(&mut t, &params(0, 2, CoreVersion::Newest), &mut c);
        // At threshold 20 everything merges into one region.
        assert_eq!(t.regions.len(), 1);
        // Ages were counted once: |0-0| -> 1 for even, |20-0| > 0 -> 0 for odd; averaged to 0.
        assert_eq!(t.regions[0].age, 0);
        let mut t = alternating(8);
        let mut p = params(0, 2, CoreVersion::Newest);
        p.max_threshold = 19; // the ceiling itself is never enough: stops unmerged
        merge(&mut t, &p, &mut Counters::default());
        assert_eq!(t.regions.len(), 8);
    }

    #[test]
    fn legacy_ages_every_pass() {
        // Two equal neighbours kept apart by the size limit; the retry loop runs several passes.
        let regions = vec![region(0, P, 4, 4, 0), region(P, 2 * P, 4, 4, 0)];
        let run = |version| {
            let mut t = Target { id: 0, regions: regions.clone() };
            let mut p = params(0, 1, version);
            p.sz_limit = P;
            merge(&mut t, &p, &mut Counters::default());
            t.regions[0].age
        };
        assert_eq!(run(CoreVersion::Newest), 1);
        // Legacy: thresholds 0,1,2,4,8,16,32 -> 7 passes, 7 birthdays.
        assert_eq!(run(CoreVersion::Legacy), 7);
    }

    #[test]
    fn merging_a_fresh_split_back_counts_as_wasted() {
        let pair =
            || Target { id: 0, regions: vec![region(0, P, 3, 3, 0), region(P, 2 * P, 3, 3, 0)] };
        let mut recent = RecentSplits::default();
        recent.mark(0, P, 9); // split in aggregation 9; merged in 10: wasted
        let (mut t, mut c) = (pair(), Counters::default());
        let p = params(0, 100, CoreVersion::Newest);
        merge_regions(std::slice::from_mut(&mut t), &p, &NoGuard, &mut c, &mut recent);
        assert_eq!((c.merges, c.wasted_splits), (1, 1));
        let (mut t, mut c) = (pair(), Counters::default());
        merge_regions(std::slice::from_mut(&mut t), &p, &NoGuard, &mut c, &mut recent);
        assert_eq!((c.merges, c.wasted_splits), (1, 0), "no split there any more");
    }

    #[test]
    fn size_limit_is_total_over_min_rounded_up_and_cuts_copy_counts() {
        // 10 pages + 1 byte over 3 regions: limit 3.33 pages -> 4 pages after rounding up.
        let mut t = Target { id: 0, regions: vec![region(0, 10 * P + 1, 7, 6, 5)] };
        let limit = apply_min_nr_regions(std::slice::from_mut(&mut t), 3, P);
        assert_eq!(limit, 4 * P);
        let got: Vec<(u64, u64, u32, u32, u32)> = t
            .regions
            .iter()
            .map(|r| (r.start, r.end, r.nr_accesses, r.last_nr_accesses, r.age))
            .collect();
        assert_eq!(
            got,
            vec![(0, 4 * P, 7, 6, 5), (4 * P, 8 * P, 7, 6, 5), (8 * P, 10 * P + 1, 7, 6, 5)]
        );
        // Never below the minimum region size.
        let mut tiny = Target { id: 0, regions: vec![region(0, 2 * P, 0, 0, 0)] };
        assert_eq!(apply_min_nr_regions(std::slice::from_mut(&mut tiny), 10, P), P);
        assert_eq!(tiny.regions.len(), 2);
    }
}
