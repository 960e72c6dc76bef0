//! udamon's split policy: split where the samples show that the parts of a region differ.
//!
//! Every sample DAMON takes of a region also lands in one of the region's quarters
//! (`Quarters`), so each region carries, for free, the evidence a split would bring. Above
//! `max_nr_regions / 2` this policy
//! - splits only at boundaries where a two-proportion z-test says the two sides differ (the
//!   region's sides as a whole, or two neighbouring quarters), never at random;
//! - places the cut where a single edge between the region's neighbours' rates would have to
//!   be, when the neighbours and the quarters agree on the direction; else at the boundary;
//! - spends the budget `max - nr` on the splits expected to remove the most error first
//!   (bytes on the smaller side times the rate difference);
//! - keeps neighbours whose long-term rates surely differ from being merged on one noisy
//!   window (first merge pass only, so `max_nr_regions` is never at risk);
//! - forgets old evidence when a window contradicts it: halved on a hint, cleared on a clear
//!   change, so stable regions remember long and changed ones adapt within a few windows.
//!
//! At or below `max / 2` it takes the kernel's classic path like every policy. The simulator's
//! comparison (docs/design.md) is the reason for each of these choices.

use super::{
    Policy, SplitEnv, cut,
    evidence::{MIN_SIDE_SAMPLES, counts_differ, differ, gap, rate, tally, z_squared},
};
use crate::region::{Quarters, Region, Target, align_down};

/// How sure a difference inside a region must be before it costs a region: z = 2.25, as the
/// exact fraction z² = 81/16 for the integer test on quarter counts.
const Z_SPLIT_SQUARED: (u64, u64) = (81, 16);
/// How sure a difference between neighbours must be to keep them from merging.
const Z_KEEP: f64 = 2.5;
/// A window this far from a region's evidence halves the evidence...
const Z_HALVE: f64 = 2.0;
/// ...and this far clears it.
const Z_FORGET: f64 = 2.5;

/// Whether two neighbours' long-term rates differ too surely to merge them on one window's
/// counts, which are noisy.
fn keep_apart(left: &Quarters, right: &Quarters) -> bool {
    differ(tally(left, 0..4), tally(right, 0..4), Z_KEEP)
}

/// Weighs the window just finished (now `last_nr_accesses`, on the scale of `samples`, from
/// `known` real samples) against the region's evidence, and lets the evidence fade or go when
/// they disagree.
fn reconsider(r: &mut Region, known: u32, samples: u32) {
    let evidence = tally(&r.quarters, 0..4);
    let hits = (r.last_nr_accesses as u64 * known as u64 / samples.max(1) as u64) as u32;
    let Some((num, den)) = z_squared((hits, known), evidence) else { return };
    if num >= Z_FORGET * Z_FORGET * den {
        r.quarters = Quarters::default();
    } else if num >= Z_HALVE * Z_HALVE * den {
        r.quarters.halve();
    }
}

/// Quarter boundaries (1..=3) worth a cut, each with the rate difference across it, strongest
/// first: the most convincing split of the region into two sides, then any two neighbouring
/// quarters that differ (a sub-area in the middle gets both its edges at once). Runs for every
/// region every aggregation, so the counts are read once and summed as prefixes.
fn boundaries(q: &Quarters) -> [Option<(usize, f64)>; 3] {
    let mut found = [None; 3];
    let (h, n) = (q.hits.map(u32::from), q.samples.map(u32::from));
    let (total_h, total_n) = (h.iter().sum::<u32>(), n.iter().sum::<u32>());
    if total_n < 2 * MIN_SIDE_SAMPLES {
        return found;
    }
    let mut best: Option<(usize, f64)> = None;
    let (mut left_h, mut left_n) = (0, 0);
    for b in 1..4 {
        left_h += h[b - 1];
        left_n += n[b - 1];
        let (left, right) = ((left_h, left_n), (total_h - left_h, total_n - left_n));
        if counts_differ(left, right, Z_SPLIT_SQUARED) {
            let g = gap(left, right);
            if best.is_none_or(|(_, best_gap)| g > best_gap) {
                best = Some((b, g));
            }
        }
    }
    let mut count = 0;
    if best.is_some() {
        found[0] = best;
        count = 1;
    }
    for b in 1..4 {
        let (left, right) = ((h[b - 1], n[b - 1]), (h[b], n[b]));
        if best.is_none_or(|(first, _)| first != b) && counts_differ(left, right, Z_SPLIT_SQUARED) {
            found[count] = Some((b, gap(left, right)));
            count += 1;
        }
    }
    found
}

/// When a region lies between neighbours of rates `left` and `right` and the evidence says it
/// goes from one to the other, the single edge that explains its overall rate: the fraction of
/// the region left of it.
fn edge_between(q: &Quarters, first_boundary: usize, left: f64, right: f64) -> Option<f64> {
    let inside = {
        let (l, r) = (tally(q, 0..first_boundary), tally(q, first_boundary..4));
        l.0 as f64 / l.1.max(1) as f64 - r.0 as f64 / r.1.max(1) as f64
    };
    let outside = left - right;
    if inside * outside <= 0.0 || outside.abs() <= inside.abs() {
        return None;
    }
    let f = (rate(q)? - right) / outside;
    (0.05..=0.95).contains(&f).then_some(f)
}

/// The long-term rate of the region adjacent to `regions[i]` on one side, in one target.
fn neighbour_rate(regions: &[Region], i: usize, left: bool) -> Option<f64> {
    let r = &regions[i];
    let (n, adjacent) = if left {
        let n = regions.get(i.checked_sub(1)?)?;
        (n, n.end == r.start)
    } else {
        let n = regions.get(i + 1)?;
        (n, r.end == n.start)
    };
    if adjacent { rate(&n.quarters) } else { None }
}

/// A region with convincing boundaries: its index in its target, among all regions, and them.
type Found = (usize, usize, [Option<(usize, f64)>; 3]);

#[derive(Default)]
pub(crate) struct Adaptive {
    /// Per target, the regions whose evidence shows boundaries, found during the reset (the same
    /// pass over the regions) when the split will need them.
    found: Vec<Vec<Found>>,
}

impl Policy for Adaptive {
    fn keeps_evidence(&self) -> bool {
        true
    }

    fn keeps_apart(&self, left: &Region, right: &Region) -> bool {
        keep_apart(&left.quarters, &right.quarters)
    }

    /// The reset, the evidence weighed against the window just finished, and (above max/2,
    /// where the split needs them) the regions with convincing boundaries, in one pass.
    fn reset(&mut self, targets: &mut [Target], env: &SplitEnv) {
        let nr = cut::count(targets);
        let max = env.max_nr_regions;
        let wanted = nr > max / 2 && nr < max;
        self.found.clear();
        let mut base = 0;
        for target in targets.iter_mut() {
            let mut found = Vec::new();
            for (i, r) in target.regions.iter_mut().enumerate() {
                let known = r.known(env.samples);
                r.reset_window();
                reconsider(r, known, env.samples);
                if wanted {
                    let boundaries = boundaries(&r.quarters);
                    if boundaries[0].is_some() {
                        found.push((i, base + i, boundaries));
                    }
                }
            }
            base += target.regions.len();
            self.found.push(found);
        }
    }

    /// The most valuable of the cuts the evidence supports, at most `budget`.
    fn split_above_half(&mut self, targets: &mut [Target], budget: usize, env: &mut SplitEnv) {
        let min = env.min_region_sz;
        // (index among all regions, cut offset, expected error removed)
        let mut candidates: Vec<(usize, u64, f64)> = Vec::new();
        for (target, found) in targets.iter().zip(self.found.drain(..)) {
            let regions = &target.regions;
            for (i, global, boundaries) in found {
                let r = &regions[i];
                let mut push = |cut: u64, diff: f64| {
                    if cut != 0 && cut < r.size() {
                        let (left, right) = (cut as f64, (r.size() - cut) as f64);
                        candidates.push((global, cut, left * right / r.size() as f64 * diff));
                    }
                };
                let first = boundaries[0].map_or(0, |b| b.0);
                let neighbours =
                    neighbour_rate(regions, i, true).zip(neighbour_rate(regions, i, false));
                let edge = neighbours.and_then(|(left, right)| {
                    Some((edge_between(&r.quarters, first, left, right)?, left, right))
                });
                match edge {
                    Some((f, left, right)) => {
                        push(align_down((r.size() as f64 * f) as u64, min), (left - right).abs())
                    }
                    None => {
                        for (b, diff) in boundaries.into_iter().flatten() {
                            push(align_down(r.size() / 4 * b as u64, min), diff);
                        }
                    }
                }
            }
        }
        if candidates.len() > budget {
            candidates.select_nth_unstable_by(budget, |a, b| b.2.total_cmp(&a.2));
            candidates.truncate(budget);
        }
        cut::apply_cuts(targets, env, candidates.into_iter().map(|(i, cut, _)| (i, cut)).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quarters(rates: [f64; 4], samples: u8) -> Quarters {
        let mut q = Quarters::default();
        for (i, p) in rates.iter().enumerate() {
            q.samples[i] = samples;
            q.hits[i] = (p * samples as f64).round() as u8;
        }
        q
    }

    #[test]
    fn no_split_without_evidence() {
        assert_eq!(boundaries(&quarters([0.5; 4], 30)), [None; 3]);
        // Different, but too few samples to tell.
        assert_eq!(boundaries(&quarters([1.0, 1.0, 0.0, 0.0], 3)), [None; 3]);
    }

    #[test]
    fn a_step_is_cut_where_it_is() {
        let found = boundaries(&quarters([0.9, 0.9, 0.1, 0.1], 20));
        let (boundary, diff) = found[0].unwrap();
        assert_eq!(boundary, 2);
        assert!((diff - 0.8).abs() < 1e-9);
    }

    #[test]
    fn a_middle_sub_area_gets_both_edges() {
        let mut cuts: Vec<usize> =
            boundaries(&quarters([0.6, 0.0, 0.0, 0.6], 30)).iter().flatten().map(|f| f.0).collect();
        cuts.sort();
        assert_eq!(cuts, vec![1, 3]);
    }

    #[test]
    fn neighbours_place_a_single_edge() {
        // Left neighbour 0.5, right 0.0; the region reads 0.2 with its left quarter the hotter:
        // 40 % of it is on the hot side.
        let q = quarters([0.5, 0.3, 0.0, 0.0], 40);
        let f = edge_between(&q, 1, 0.5, 0.0).unwrap();
        assert!((f - 0.4).abs() < 0.01, "{f}");
        // Evidence pointing the other way than the neighbours: no single edge.
        assert_eq!(edge_between(&quarters([0.0, 0.0, 0.5, 0.5], 40), 2, 0.5, 0.0), None);
    }

    #[test]
    fn surely_different_neighbours_stay_apart() {
        assert!(keep_apart(&quarters([0.5; 4], 30), &quarters([0.2; 4], 30)));
        assert!(!keep_apart(&quarters([0.5; 4], 30), &quarters([0.45; 4], 30)));
        assert!(
            !keep_apart(&quarters([0.5; 4], 1), &quarters([0.0; 4], 1)),
            "no evidence, no veto"
        );
    }

    fn reconsider_with(r: &mut Region, window: u32) {
        r.last_nr_accesses = window;
        reconsider(r, 20, 20);
    }

    #[test]
    fn above_half_cuts_where_the_evidence_differs_within_the_budget() {
        use super::super::testing::*;
        use crate::split::Classic;
        // 60 regions, max 100: above half. Two carry a clear step between their halves.
        let mut t = [target(&[100 * P; 60])];
        for i in [10, 40] {
            t[0].regions[i].quarters = quarters([0.9, 0.9, 0.1, 0.1], 40);
            t[0].regions[i].last_nr_accesses = 10; // the window agrees: evidence is kept
            t[0].regions[i].nr_accesses = 10;
        }
        let (c, recent) =
            split_once_noting(&mut t, &mut Adaptive::default(), 100, 1, &mut Classic::default());
        assert_eq!(c.splits, 2, "one cut per region with evidence, none elsewhere");
        let cut_at: Vec<u64> =
            t[0].regions.iter().filter(|r| recent.contains(0, r.start)).map(|r| r.start).collect();
        assert_eq!(cut_at, [10 * 100 * P + 50 * P, 40 * 100 * P + 50 * P], "at the step");
        // A budget of one takes only one of them.
        let mut t = [target(&[100 * P; 99])];
        for i in [10, 40] {
            t[0].regions[i].quarters = quarters([0.9, 0.9, 0.1, 0.1], 40);
            t[0].regions[i].nr_accesses = 10;
        }
        let c = split_once(&mut t, &mut Adaptive::default(), 100, 1, &mut Classic::default());
        assert_eq!(c.splits, 1);
    }

    #[test]
    fn evidence_fades_when_windows_disagree() {
        let mut target = Target::with_ranges(0, &[(0, 1 << 20)]);
        target.regions[0].quarters = quarters([0.5; 4], 30);
        let mut targets = [target];
        reconsider_with(&mut targets[0].regions[0], 10); // 10 of 20: agrees
        assert_eq!(targets[0].regions[0].quarters.samples, [30; 4]);
        reconsider_with(&mut targets[0].regions[0], 0); // 0 of 20 after 50 %: a new regime
        assert_eq!(targets[0].regions[0].quarters, Quarters::default());
    }
}
