//! What every policy shares: cutting regions (random cuts with the kernel's arithmetic, cuts
//! applied in place), and the kernel's classic path.

use super::SplitEnv;
use crate::region::{Region, Target, align_down};

/// Regions of every target.
pub(crate) fn count(targets: &[Target]) -> usize {
    targets.iter().map(|t| t.regions.len()).sum()
}

/// Every region of every target, in order: what the plans' indexes count.
pub(crate) fn regions(targets: &[Target]) -> impl Iterator<Item = &Region> {
    targets.iter().flat_map(|t| &t.regions)
}

impl SplitEnv<'_> {
    /// The kernel's random left-piece size: 10 %..90 % of `size`, aligned down; `None` when
    /// that leaves an empty piece.
    pub(crate) fn random_cut(&mut self, size: u64) -> Option<u64> {
        let factor = self.rng.range(1, 10, self.rand_version);
        left_piece(factor, size, self.min_region_sz)
    }

    /// The classic path's cuts of one region of `size` into up to `pieces`: the left piece is
    /// cut again, while it is bigger than two minimum regions.
    pub(crate) fn random_cuts(&mut self, size: u64, pieces: usize, mut cut_at: impl FnMut(u64)) {
        let mut size = size;
        for _ in 0..pieces - 1 {
            if size <= 2 * self.min_region_sz {
                break;
            }
            if let Some(cut) = self.random_cut(size) {
                cut_at(cut);
                size = cut;
            }
        }
    }
}

/// The kernel's arithmetic: `factor * size` first, then `/ 10`, then aligned down; `None` for an
/// empty piece on either side.
fn left_piece(factor: u64, size: u64, min_region_sz: u64) -> Option<u64> {
    let cut = align_down(factor * size / 10, min_region_sz);
    (cut != 0 && cut < size).then_some(cut)
}

/// The kernel's classic path and the state it keeps in function statics (here, per context).
#[derive(Clone, Debug, Default)]
pub(crate) struct Classic {
    /// `nr_regions` at the last split; the classic path splits in three when it stalls.
    pub last_nr_regions: usize,
}

impl Classic {
    /// Every region into up to 2 pieces (3 when the count stalled below a third of max),
    /// re-splitting the left piece.
    pub fn split(&self, targets: &mut [Target], nr: usize, env: &mut SplitEnv) {
        let pieces = self.pieces(nr, env.max_nr_regions);
        let mut plan = Vec::new();
        for (i, r) in regions(targets).enumerate() {
            env.random_cuts(r.size(), pieces, |cut| plan.push((i, cut)));
        }
        apply_cuts(targets, env, plan);
    }

    /// Pieces per region: 3 when the count stalled below a third of max, else 2.
    pub fn pieces(&self, nr: usize, max_nr_regions: usize) -> usize {
        if self.last_nr_regions == nr && nr < max_nr_regions / 3 { 3 } else { 2 }
    }
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
                if start != r.start {
                    env.recent.mark(target.id, start, env.aggregation);
                }
                regions[write] = r.piece(start, end);
                end = start;
            }
        }
        debug_assert_eq!(read, write, "regions before the first cut stay where they are");
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, *};
    use crate::split::SplitPolicy;

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
    fn classic_path_splits_every_region_in_two_and_aligns_cuts() {
        let mut t = [target(&[100 * P; 10])];
        let policy = &mut *SplitPolicy::Fraction.build();
        let c = split_once(&mut t, policy, 1000, 42, &mut Classic::default());
        assert_eq!(t[0].regions.len(), 20);
        assert_eq!(c.splits, 10);
        assert_tiles(&t[0], 1000 * P);
    }

    #[test]
    fn three_way_split_when_the_count_stalled_below_a_third() {
        let mut t = [target(&[100 * P; 10])];
        let mut classic = Classic { last_nr_regions: 10 };
        split_once(&mut t, &mut *SplitPolicy::Fraction.build(), 1000, 42, &mut classic);
        // Each region tries two cuts; random cuts can be unusable, so between 2 and 3 pieces.
        assert!(t[0].regions.len() > 20 && t[0].regions.len() <= 30, "{}", t[0].regions.len());
        assert_eq!(classic.last_nr_regions, 10);
        assert_tiles(&t[0], 1000 * P);
    }

    #[test]
    fn pieces_copy_counts_and_only_new_boundaries_are_marked() {
        let mut t = [target(&[100 * P])];
        t[0].regions[0].nr_accesses = 7; // the window just aggregated; the reset makes it "last"
        t[0].regions[0].age = 4;
        let policy = &mut *SplitPolicy::Fraction.build();
        let (_, recent) = split_once_noting(&mut t, policy, 1000, 42, &mut Classic::default());
        assert_eq!(t[0].regions.len(), 2);
        assert!(t[0].regions.iter().all(|r| r.last_nr_accesses == 7 && r.age == 4));
        assert!(!recent.contains(0, t[0].regions[0].start));
        assert!(recent.contains(0, t[0].regions[1].start), "the new boundary is remembered");
    }
}
