//! Splitting regions to discover finer structure, under the selectable policies. Below
//! `max_nr_regions / 2` every policy takes the kernel's classic path; above it they differ.

use serde::{Deserialize, Serialize};

use super::{
    Counters, adaptive,
    region::{Quarters, Region, Target, align_down},
    rng::{RandVersion, Rng},
};

/// What to do when more than half of `max_nr_regions` are in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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
}

/// State the kernel keeps in function statics; here it belongs to one context.
#[derive(Clone, Debug, Default)]
pub(crate) struct SplitState {
    pub last_nr_regions: usize,
    pub rotation: u64,
}

/// Everything a split pass reads besides the regions.
pub(crate) struct SplitEnv<'a> {
    pub max_nr_regions: usize,
    pub min_region_sz: u64,
    pub rng: &'a mut Rng,
    pub rand_version: RandVersion,
    pub aggregation: u32,
    pub counters: &'a mut Counters,
    /// Samples per aggregation, to read counts as rates.
    pub samples: u32,
}

impl SplitEnv<'_> {
    /// The kernel's random left-piece size: 10 %..90 % of `size`, aligned down; `None` when
    /// that leaves an empty piece.
    fn random_cut(&mut self, size: u64) -> Option<u64> {
        let factor = self.rng.range(1, 10, self.rand_version);
        left_piece(factor, size, self.min_region_sz)
    }
}

/// The mark a region's start boundary gets when a split in `aggregation` creates it.
pub(crate) fn split_mark(aggregation: u32) -> u16 {
    (aggregation.wrapping_add(1) as u16).max(1)
}

/// The kernel's arithmetic: `factor * size` first, then `/ 10`, then aligned down; `None` for an
/// empty piece on either side.
fn left_piece(factor: u64, size: u64, min_region_sz: u64) -> Option<u64> {
    let cut = align_down(factor * size / 10, min_region_sz);
    (cut != 0 && cut < size).then_some(cut)
}

/// The end of an aggregation: `kdamond_reset_aggregated` (this window becomes the last one),
/// then `kdamond_split_regions` under `policy`.
pub(crate) fn reset_and_split(
    targets: &mut [Target],
    policy: SplitPolicy,
    state: &mut SplitState,
    env: &mut SplitEnv,
) {
    let nr: usize = targets.iter().map(|t| t.regions.len()).sum();
    let max = env.max_nr_regions;
    let above_half = nr > max / 2 && nr < max;
    if policy == SplitPolicy::Adaptive {
        // Its evidence and candidates come from the same pass over the regions as the reset.
        adaptive::reset_and_split(targets, above_half.then(|| max - nr), env);
    } else {
        targets.iter_mut().flat_map(|t| &mut t.regions).for_each(Region::reset_window);
    }
    if policy == SplitPolicy::Legacy && nr > max / 2 {
        return; // without recording nr: the classic 3-way decision then compares with older state
    }
    if above_half {
        match policy {
            SplitPolicy::Legacy => unreachable!("returned above"),
            SplitPolicy::AgeZero => split_age_zero(targets, max - nr, env),
            SplitPolicy::Fraction => split_some(targets, max / (max - nr), state, env),
            SplitPolicy::Adaptive => {}
        }
    } else if nr <= max / 2 {
        let nr_sub = if state.last_nr_regions == nr && nr < max / 3 { 3 } else { 2 };
        split_classic(targets, nr_sub, env);
    }
    state.last_nr_regions = nr;
}

/// Every region into up to `nr_sub` pieces, re-splitting the left piece.
fn split_classic(targets: &mut [Target], nr_sub: usize, env: &mut SplitEnv) {
    let min = env.min_region_sz;
    let mut plan = Vec::new();
    for (i, r) in regions(targets).enumerate() {
        let mut size = r.size();
        for _ in 0..nr_sub - 1 {
            if size <= 2 * min {
                break;
            }
            if let Some(cut) = env.random_cut(size) {
                plan.push((i, cut));
                size = cut;
            }
        }
    }
    apply_cuts(targets, env, plan);
}

/// Upstream 7.3: one region in every `step`, counted across targets, in two.
fn split_some(targets: &mut [Target], step: usize, state: &mut SplitState, env: &mut SplitEnv) {
    let offset = (state.rotation % step as u64) as usize;
    state.rotation = state.rotation.wrapping_add(1);
    let min = env.min_region_sz;
    let mut plan = Vec::new();
    for (i, r) in regions(targets).enumerate().skip(offset).step_by(step) {
        if r.size() >= 2 * min
            && let Some(cut) = env.random_cut(r.size())
        {
            plan.push((i, cut));
        }
    }
    apply_cuts(targets, env, plan);
}

/// The first proposal: regions of age 0, in two, until `budget` new regions exist.
fn split_age_zero(targets: &mut [Target], mut budget: usize, env: &mut SplitEnv) {
    let min = env.min_region_sz;
    let mut plan = Vec::new();
    for (i, r) in regions(targets).enumerate() {
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
    apply_cuts(targets, env, plan);
}

/// Every region of every target, in order: what the plans' indexes count.
pub(crate) fn regions(targets: &[Target]) -> impl Iterator<Item = &Region> {
    targets.iter().flat_map(|t| &t.regions)
}

/// Cuts regions as `plan` says: `(index among all regions, offset from its start)`, in any
/// order. Pieces copy the region's counts and take the quarter evidence of their part; every
/// cut is a split, marked for the waste count. In place: each target's vector grows once and is
/// refilled from the back, so each region moves at most once.
pub(crate) fn apply_cuts(targets: &mut [Target], env: &mut SplitEnv, mut plan: Vec<(usize, u64)>) {
    plan.sort_unstable();
    plan.dedup();
    env.counters.splits += plan.len() as u64;
    let mut first_index = 0;
    let mut rest = &plan[..];
    for target in targets {
        let len = target.regions.len();
        let end = rest.partition_point(|&(i, _)| i < first_index + len);
        let (mine, later) = rest.split_at(end);
        rest = later;
        let base = first_index;
        first_index += len;
        if mine.is_empty() {
            continue;
        }
        let regions = &mut target.regions;
        regions.reserve_exact(mine.len());
        regions.resize(len + mine.len(), Region::new(0, 1));
        // `write` is one past the next slot to fill from the back.
        let (mut write, mut read) = (regions.len(), len);
        let mut cuts = mine;
        while let Some(&(global, _)) = cuts.last() {
            let index = global - base;
            let first_cut = cuts.partition_point(|&(i, _)| i < global);
            let offsets = &cuts[first_cut..];
            cuts = &cuts[..first_cut];
            // Regions after this one move up by the cuts still to come.
            let tail = index + 1..read;
            write -= tail.len();
            regions.copy_within(tail, write);
            read = index;
            let r = regions[read];
            let mut end = r.end;
            for start in offsets.iter().rev().map(|&(_, cut)| r.start + cut).chain([r.start]) {
                write -= 1;
                let mut quarters = Quarters::default();
                quarters.absorb(&r.quarters, (r.start, r.end), (start, end));
                let split_at =
                    if start == r.start { r.split_at } else { split_mark(env.aggregation) };
                regions[write] = Region { start, end, quarters, split_at, ..r };
                end = start;
            }
        }
        debug_assert_eq!(read, write, "regions before the first cut stay where they are");
    }
}

/// One reset-and-split at aggregation 3 with page-sized minimum regions, for tests.
#[cfg(test)]
pub(crate) fn split_once(
    targets: &mut [Target],
    policy: SplitPolicy,
    max_nr_regions: usize,
    seed: u64,
    state: &mut SplitState,
) -> Counters {
    let mut rng = Rng::new(seed);
    let mut counters = Counters::default();
    let mut env = SplitEnv {
        max_nr_regions,
        min_region_sz: 4096,
        rng: &mut rng,
        rand_version: RandVersion::Newest,
        aggregation: 3,
        counters: &mut counters,
        samples: 20,
    };
    reset_and_split(targets, policy, state, &mut env);
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn target(sizes: &[u64]) -> Target {
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

    fn run(
        targets: &mut [Target],
        policy: SplitPolicy,
        max: usize,
        state: &mut SplitState,
    ) -> Counters {
        split_once(targets, policy, max, 42, state)
    }

    fn assert_tiles(t: &Target, total: u64) {
        assert_eq!(t.regions.first().unwrap().start, 0);
        assert_eq!(t.regions.last().unwrap().end, total);
        for w in t.regions.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in &t.regions {
            assert!(r.size() >= P && r.start % P == 0 && r.end % P == 0, "{r:?}");
        }
    }

    #[test]
    fn the_specs_split_arithmetic() {
        // 12288 bytes: 1 * 12288 / 10 = 1228 aligns down to 0 (skipped); 4 gives 4915 -> 4096.
        assert_eq!(left_piece(1, 3 * P, P), None);
        assert_eq!(left_piece(4, 3 * P, P), Some(P));
        assert_eq!(left_piece(9, 3 * P, P), Some(2 * P));
        // 8192 bytes: only factors 5..9 give a page; the classic path never tries (size > 2 pages).
        assert_eq!(left_piece(4, 2 * P, P), None);
        assert_eq!(left_piece(5, 2 * P, P), Some(P));
    }

    #[test]
    fn classic_path_never_splits_two_pages_and_aligns_cuts() {
        for policy in SplitPolicy::ALL {
            let mut t = [target(&[2 * P; 10])];
            run(&mut t, policy, 1000, &mut SplitState::default());
            assert_eq!(t[0].regions.len(), 10, "{policy:?} split an 8192-byte region");
        }
        let mut t = [target(&[100 * P; 10])];
        let c = run(&mut t, SplitPolicy::Fraction, 1000, &mut SplitState::default());
        assert_eq!(t[0].regions.len(), 20);
        assert_eq!(c.splits, 10);
        assert_tiles(&t[0], 1000 * P);
    }

    #[test]
    fn three_way_split_when_the_count_stalled_below_a_third() {
        let mut t = [target(&[100 * P; 10])];
        let mut state = SplitState { last_nr_regions: 10, rotation: 0 };
        run(&mut t, SplitPolicy::Fraction, 1000, &mut state);
        // Each region tries two cuts; random cuts can be unusable, so between 2 and 3 pieces.
        assert!(t[0].regions.len() > 20 && t[0].regions.len() <= 30, "{}", t[0].regions.len());
        assert_eq!(state.last_nr_regions, 10);
        assert_tiles(&t[0], 1000 * P);
    }

    #[test]
    fn pieces_copy_counts_and_only_new_boundaries_are_marked() {
        let mut t = [target(&[100 * P])];
        t[0].regions[0].nr_accesses = 7; // the window just aggregated; the reset makes it "last"
        t[0].regions[0].age = 4;
        run(&mut t, SplitPolicy::Fraction, 1000, &mut SplitState::default());
        assert_eq!(t[0].regions.len(), 2);
        assert!(t[0].regions.iter().all(|r| r.last_nr_accesses == 7 && r.age == 4));
        assert_eq!((t[0].regions[0].split_at, t[0].regions[1].split_at), (0, split_mark(3)));
    }

    #[test]
    fn above_half_legacy_stops_and_keeps_its_stale_count() {
        let mut t = [target(&[100 * P; 60])];
        let mut state = SplitState { last_nr_regions: 5, rotation: 0 };
        let c = run(&mut t, SplitPolicy::Legacy, 100, &mut state);
        assert_eq!((c.splits, state.last_nr_regions), (0, 5));
    }

    #[test]
    fn above_half_fraction_splits_one_in_step_and_never_overshoots() {
        // max 100, nr 60: step = 100 / 40 = 2 -> every other region, at most 40 new.
        let mut t = [target(&[100 * P; 60])];
        let mut state = SplitState::default();
        let c = run(&mut t, SplitPolicy::Fraction, 100, &mut state);
        assert_eq!(c.splits, 30);
        assert_eq!((state.rotation, state.last_nr_regions), (1, 60));
        // The rotating offset picks the other half next time.
        let mut t2 = [target(&[100 * P; 60])];
        run(&mut t2, SplitPolicy::Fraction, 100, &mut state);
        assert_eq!(t2[0].regions[0].size(), 100 * P, "offset 1 skips region 0");
        // A full context is not split at all.
        let mut full = [target(&[100 * P; 100])];
        assert_eq!(
            run(&mut full, SplitPolicy::Fraction, 100, &mut SplitState::default()).splits,
            0
        );
    }

    #[test]
    fn above_half_fraction_splits_two_page_regions_but_not_smaller() {
        // `>= 2 * min` here, unlike the classic path's `>`: 8192 bytes are splittable.
        let mut t = [target(&[2 * P; 60])];
        let c = run(&mut t, SplitPolicy::Fraction, 100, &mut SplitState::default());
        // rand 5..9 gives a one-page cut; rand 1..4 aligns down to 0 and is skipped.
        assert!(c.splits > 0 && c.splits <= 30);
    }

    #[test]
    fn above_half_age_zero_splits_only_young_regions_within_budget() {
        let mut t = [target(&[100 * P; 90])];
        for (i, r) in t[0].regions.iter_mut().enumerate() {
            r.age = if i % 3 == 0 { 0 } else { 5 };
        }
        // 30 young regions but a budget of 100 - 90 = 10.
        let c = run(&mut t, SplitPolicy::AgeZero, 100, &mut SplitState::default());
        assert_eq!(c.splits, 10);
        assert!(t[0].regions.iter().filter(|r| r.split_at != 0).all(|r| r.age == 0));
    }
}
