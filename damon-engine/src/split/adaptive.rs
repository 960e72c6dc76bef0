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
//! At or below `max / 2` too it cuts where the evidence says, and besides
//! - joins neighbours whose long-run rates are the same whatever one window says, so flat
//!   memory needs few regions;
//! - zooms into the quarter holding a nearly idle region's hits, to find small hot spots
//!   (on a single hit only once its evidence is long: a dim, evenly accessed area is not a spot);
//! - cuts a region whose neighbours' rates surely differ and whose own lies between them where
//!   one edge between theirs would explain its rate, and holds the pieces: a gradient too fine
//!   for any region's own evidence, seen across three;
//! - explores at random regions with long, uniform evidence one aggregation in four, and
//!   every aggregation those whose window could read only some of their samples.
//!
//! The simulator's comparison (docs/design.md) is the reason for each of these choices.

use super::{
    Classic, Policy, SplitEnv, cut,
    evidence::{
        MIN_SIDE_SAMPLES, counts_differ, counts_z_squared, gap, rate, tally, windows_differ,
        z_squared,
    },
};
use crate::region::{Quarters, Region, Target, align_down};

/// How sure a difference inside a region must be before it costs a region: z = 2.25, as the
/// exact fraction z² = 81/16 for the integer test on quarter counts.
const Z_SPLIT_SQUARED: (u64, u64) = (81, 16);
/// A quarter this many standard errors from what a single edge predicts rules the edge out.
const Z_EDGE: f64 = 2.5;
/// How sure a difference between neighbours must be to keep them from merging: z = 2.5 (z²
/// as a fraction, for the integer test).
const Z_KEEP_SQUARED: (u64, u64) = (25, 4);
/// Neighbours with at least this many samples of evidence each...
const JOIN_SAMPLES: u32 = 32;
/// ...whose long-run rates are less than 2 standard errors apart, and whose windows less than
/// 2.5 (z² as a fraction), merge whatever their window counts: their difference is noise.
const Z_JOIN_SQUARED: (u64, u64) = (4, 1);
const Z_WINDOWS_SQUARED: (u64, u64) = (25, 4);
/// A region zooms into the quarter holding its hits while its long-run rate is at most this
/// (5 %, as a fraction)...
const ZOOM_RATE: (u32, u32) = (1, 20);
/// ...and it is at least this many minimum regions; the piece is kept apart this many
/// aggregations, to gather its own evidence.
const ZOOM_MIN_SIZE: u64 = 16;
const ZOOM_HOLD: u8 = 7;
/// The rate difference a zoom is expected to reveal, to rank it among the evidence's cuts.
const ZOOM_GAIN: f64 = 0.05;
/// Below max/2, a region whose evidence is this long and shows no structure is split at random
/// in one aggregation of `EXPLORE_EVERY`: exploration enough to notice new structure. Younger
/// evidence is left to grow first (a fresh piece split again is a wasted split), unless the
/// window read only some of the region's samples: memory that cannot be monitored (locked,
/// shared page cache) lies beside memory that can, and its unknown samples never build the
/// evidence a cut needs, so only random cuts can set it apart.
const MATURE_SAMPLES: u32 = 64;
/// Unreadable memory is chased (partly known regions explored, their pieces held; unreadable
/// windows zoomed into) down to this many minimum regions (1 MiB of 4 KiB pages): finer,
/// readable and unreadable pages interleave (a binary's text, partly faulted in, partly shared)
/// and no cut separates them.
const UNKNOWN_MIN_SIZE: u64 = 256;
const EXPLORE_EVERY: u64 = 4;
/// A window this far from a region's evidence (z², as a fraction) halves the evidence...
const Z_HALVE_SQUARED: (u64, u64) = (4, 1);
/// ...and this far clears it.
const Z_FORGET_SQUARED: (u64, u64) = (25, 4);
/// Windows of up to this many known samples are weighed in 64-bit integers.
const WINDOW_COUNTS_MAX: u32 = 4096;

/// Whether two neighbours' long-term rates differ too surely to merge them on one window's
/// counts, which are noisy.
fn keep_apart(left: &Quarters, right: &Quarters) -> bool {
    counts_differ(tally(left, 0..4), tally(right, 0..4), Z_KEEP_SQUARED)
}

/// Weighs the window just finished (now `last_nr_accesses`, on the scale of `samples`, from
/// `known` real samples) against the region's evidence (`tally`), and lets the evidence fade
/// or go when they disagree. Returns the evidence's tally after.
fn reconsider(r: &mut Region, evidence: (u32, u32), known: u32, samples: u32) -> (u32, u32) {
    let hits = if known == samples {
        r.last_nr_accesses
    } else {
        (r.last_nr_accesses as u64 * known as u64 / samples.max(1) as u64) as u32
    };
    let (forget, halve) = if known <= WINDOW_COUNTS_MAX {
        // The usual window: exact in 64 bits.
        let Some((num, den)) = counts_z_squared((hits, known), evidence) else { return evidence };
        let beyond = |(z_num, z_den): (u64, u64)| num * z_den >= den * z_num;
        (beyond(Z_FORGET_SQUARED), beyond(Z_HALVE_SQUARED))
    } else {
        let Some((num, den)) = z_squared((hits, known), evidence) else { return evidence };
        let beyond = |(z_num, z_den): (u64, u64)| num * z_den as f64 >= den * z_num as f64;
        (beyond(Z_FORGET_SQUARED), beyond(Z_HALVE_SQUARED))
    };
    if forget {
        r.quarters = Quarters::default();
    } else if halve {
        r.quarters.halve();
    } else {
        return evidence;
    }
    tally(&r.quarters, 0..4)
}

/// Quarter boundaries (1..=3) worth a cut, each with the rate difference across it, strongest
/// first: the most convincing split of the region into two sides, then any two neighbouring
/// quarters that differ (a sub-area in the middle gets both its edges at once). Runs for every
/// region every aggregation, so the counts are read once and summed as prefixes; `total` is
/// the region's tally.
fn boundaries(q: &Quarters, (total_h, total_n): (u32, u32)) -> [Option<(usize, f64)>; 3] {
    let mut found = [None; 3];
    let (h, n) = (q.hits.map(u32::from), q.samples.map(u32::from));
    // All hits or none: no part can differ.
    if total_n < 2 * MIN_SIDE_SAMPLES || total_h == 0 || total_h == total_n {
        return found;
    }
    let mut best: Option<(usize, f64)> = None;
    let (mut left_h, mut left_n) = (0, 0);
    // `counts_differ` with the factors all sides share hoisted: for sides of one region,
    // hl·nr − hr·nl = hl·N − H·nl, and H·(N − H) is the region's.
    let (big_h, big_n) = (u64::from(total_h), u64::from(total_n));
    let (lhs, rhs) = (Z_SPLIT_SQUARED.1 * big_n, Z_SPLIT_SQUARED.0 * big_h * (big_n - big_h));
    for b in 1..4 {
        left_h += h[b - 1];
        left_n += n[b - 1];
        let (left, right) = ((left_h, left_n), (total_h - left_h, total_n - left_n));
        let (hl, nl, nr) = (u64::from(left_h), u64::from(left_n), u64::from(right.1));
        let d = (hl * big_n).abs_diff(big_h * nl);
        if nl >= MIN_SIDE_SAMPLES as u64
            && nr >= MIN_SIDE_SAMPLES as u64
            && lhs * d * d >= rhs * nl * nr
        {
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

/// Whether evidence of `(hits, samples)` could show any boundary at all (`boundaries`' first
/// exits): enough samples, some hits but not all.
fn may_differ((hits, samples): (u32, u32)) -> bool {
    samples >= 2 * MIN_SIDE_SAMPLES && hits != 0 && hits != samples
}

/// Regions screened together by `might_split`.
const LANES: usize = 16;

/// Which of `batch` (at most `LANES`) might pass one of `boundaries`' six tests: the same tests
/// in `f32` over arrays, which the compiler turns into vector instructions, with a margin for
/// rounding, so that only evidence that might pass (a few in a hundred for uniform memory) pays
/// for the exact tests. Sound: the counts and their pairwise products are exact in `f32`
/// (below 2^24), and each side of a comparison rounds at most five times more (a relative
/// error below 4·10⁻⁷), far inside the margin.
fn might_split(batch: &[Quarters]) -> [bool; LANES] {
    const MARGIN: f32 = 1.0 - 1e-5;
    let (z_num, z_den) = (Z_SPLIT_SQUARED.0 as f32 * MARGIN, Z_SPLIT_SQUARED.1 as f32);
    let min = MIN_SIDE_SAMPLES as f32;
    let (mut h, mut n) = ([[0f32; LANES]; 4], [[0f32; LANES]; 4]);
    for (lane, q) in batch.iter().enumerate() {
        for k in 0..4 {
            h[k][lane] = f32::from(q.hits[k]);
            n[k][lane] = f32::from(q.samples[k]);
        }
    }
    let mut maybe = [false; LANES];
    for (i, maybe) in maybe.iter_mut().enumerate() {
        let big_h = h[0][i] + h[1][i] + h[2][i] + h[3][i];
        let big_n = n[0][i] + n[1][i] + n[2][i] + n[3][i];
        let (lhs, rhs) = (z_den * big_n, z_num * big_h * (big_n - big_h));
        let (mut left_h, mut left_n) = (0.0, 0.0);
        for k in 0..3 {
            left_h += h[k][i];
            left_n += n[k][i];
            let right_n = big_n - left_n;
            let d = left_h * big_n - big_h * left_n;
            *maybe |= (left_n >= min) & (right_n >= min) & (lhs * d * d >= rhs * left_n * right_n);
            let (ph, pn) = (h[k][i] + h[k + 1][i], n[k][i] + n[k + 1][i]);
            let d = h[k][i] * n[k + 1][i] - h[k + 1][i] * n[k][i];
            *maybe |= (n[k][i] >= min)
                & (n[k + 1][i] >= min)
                & (ph > 0.0)
                & (ph < pn)
                & (z_den * d * d * pn >= z_num * n[k][i] * n[k + 1][i] * ph * (pn - ph));
        }
    }
    maybe
}

/// A target's regions waiting for `might_split`, `LANES` at a time (on the stack: scratch kept
/// per region would cost memory per region), and the regions found worth cutting.
struct Screen {
    index: [usize; LANES],
    quarters: [Quarters; LANES],
    len: usize,
    base: usize,
    found: Vec<Found>,
}

impl Screen {
    fn new(base: usize) -> Self {
        let quarters = [Quarters::default(); LANES];
        Self { index: [0; LANES], quarters, len: 0, base, found: Vec::new() }
    }

    fn push(&mut self, index: usize, quarters: Quarters) {
        (self.index[self.len], self.quarters[self.len]) = (index, quarters);
        self.len += 1;
        if self.len == LANES {
            self.flush();
        }
    }

    /// The exact tests for those the screen lets through.
    fn flush(&mut self) {
        let maybe = might_split(&self.quarters[..self.len]);
        for lane in (0..self.len).filter(|&lane| maybe[lane]) {
            let q = &self.quarters[lane];
            let boundaries = boundaries(q, tally(q, 0..4));
            if boundaries[0].is_some() {
                let index = self.index[lane];
                let why = Why::Boundaries(boundaries);
                self.found.push(Found { index, global: self.base + index, why });
            }
        }
        self.len = 0;
    }

    /// Everything found, in region order.
    fn finish(mut self) -> Vec<Found> {
        self.flush();
        self.found.sort_unstable_by_key(|f| (f.index, f.why.rank()));
        self.found.dedup_by_key(|f| f.index);
        self.found
    }
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
    ((0.05..=0.95).contains(&f) && explains(q, f, left, right)).then_some(f)
}

/// Whether every quarter's evidence fits one edge at `f` between rates `left` and `right`: more
/// steps (cold, hot, cold, hot) can average out to the same overall rate, and an edge cut
/// there leaves two pieces of the same mixed rate, which join again.
fn explains(q: &Quarters, f: f64, left: f64, right: f64) -> bool {
    (0..4).all(|k| {
        let (hits, samples) = (q.hits[k] as f64, q.samples[k] as f64);
        let on_left = (f * 4.0 - k as f64).clamp(0.0, 1.0);
        let expected = (left * on_left + right * (1.0 - on_left)).clamp(0.05, 0.95);
        let error = (expected * (1.0 - expected) / samples.max(1.0)).sqrt();
        samples == 0.0 || (hits / samples - expected).abs() <= Z_EDGE * error
    })
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

/// A region worth cutting: its index in its target and among all regions, and why.
struct Found {
    index: usize,
    global: usize,
    why: Why,
}

/// Why a region is worth cutting, in order of precedence when several reasons hold.
#[derive(Clone, Copy)]
enum Why {
    /// Its quarter to zoom into.
    Zoom(usize),
    /// The boundaries its evidence shows.
    Boundaries([Option<(usize, f64)>; 3]),
    /// It lies on a slope: its neighbours' rates differ by this much and its own lies between.
    Slope(f64),
}

impl Why {
    fn rank(&self) -> u8 {
        match self {
            Self::Zoom(_) => 0,
            Self::Boundaries(_) => 1,
            Self::Slope(_) => 2,
        }
    }
}

/// A cut worth making: the region's index among all regions, the offset, the error it is
/// expected to remove, and the offsets where pieces to hold start.
struct Candidate {
    global: usize,
    cut: u64,
    value: f64,
    holds: [Option<u64>; 2],
}

/// The quarter of `r` (at the end of its window of `window` intervals, before the reset) to cut
/// out and watch: the window found an access in a region that is nearly idle in the long run,
/// and every hit its evidence holds lies in that quarter; or no sample of the window could be
/// read in a region whose evidence could, and the quarter holds the last of them
/// (`sampling_addr`). `tally` is the evidence's. A random split almost never isolates a small hot spot, or a small
/// mapping that cannot be monitored, in a large idle region; following its hits, a quarter at a
/// time, does.
fn zoom_quarter(
    r: &Region,
    (hits, samples): (u32, u32),
    min_region_sz: u64,
    window: u32,
) -> Option<usize> {
    if r.nr_accesses == 0 && r.unknown == 0 || r.size() < ZOOM_MIN_SIZE * min_region_sz {
        return None;
    }
    let q = &r.quarters;
    if r.unknown > 0 && r.known(window) == 0 {
        if r.size() < UNKNOWN_MIN_SIZE * min_region_sz {
            return None;
        }
        let offset = r.sampling_addr.checked_sub(r.start).filter(|&o| o < r.size())?;
        return (samples > 0).then(|| Quarters::quarter_of(offset, r.size()));
    }
    // One hit in young evidence says nothing of where a dim area's accesses are: chased, it
    // would fragment memory accessed evenly at a low rate.
    if r.nr_accesses == 0
        || hits * ZOOM_RATE.1 > samples * ZOOM_RATE.0
        || hits == 1 && samples < MATURE_SAMPLES
    {
        return None;
    }
    let mut hit = (0..4).filter(|&k| q.hits[k] > 0);
    let k = hit.next()?;
    hit.next().is_none().then_some(k)
}

/// Whether `mid` lies on a slope between its neighbours `left` and `right`: their rates surely
/// differ and its own lies strictly between. Returns their difference. A gradient's
/// neighbouring regions differ by less than their evidence can show, so they merge up to the
/// size limit; only the wider view across three regions sees it.
fn slope(left: &Region, mid: &Region, right: &Region) -> Option<f64> {
    if mid.hold() > 0 || left.end != mid.start || mid.end != right.start {
        return None;
    }
    let [l, m, r] = [left, mid, right].map(|r| tally(&r.quarters, 0..4));
    if l.1 < JOIN_SAMPLES || r.1 < JOIN_SAMPLES || m.1 < MATURE_SAMPLES {
        return None;
    }
    // Rates compared as cross products.
    let below = |(ha, na): (u32, u32), (hb, nb): (u32, u32)| {
        (ha as u64 * nb as u64) < (hb as u64 * na as u64)
    };
    let between = below(l, m) && below(m, r) || below(r, m) && below(m, l);
    (between && counts_differ(l, r, Z_SPLIT_SQUARED)).then(|| gap(l, r))
}

/// The regions of a target (the first at `base` among all) that lie on slopes, once their
/// evidence is final.
fn find_slopes(regions: &[Region], base: usize, found: &mut Vec<Found>) {
    for (i, w) in regions.windows(3).enumerate() {
        if let Some(diff) = slope(&w[0], &w[1], &w[2]) {
            found.push(Found { index: i + 1, global: base + i + 1, why: Why::Slope(diff) });
        }
    }
}

#[derive(Default)]
pub(crate) struct Adaptive {
    /// Per target, the regions worth cutting, found during the reset (the same pass over the
    /// regions).
    found: Vec<Vec<Found>>,
    /// Indices among all regions of those whose window read some of their samples but not all.
    partly_known: Vec<usize>,
}

impl Adaptive {
    /// The cuts the evidence supports and the zooms, each valued by the error it is expected
    /// to remove.
    fn candidates(&mut self, targets: &[Target], min: u64) -> Vec<Candidate> {
        let mut candidates = Vec::new();
        for (target, found) in targets.iter().zip(self.found.drain(..)) {
            let regions = &target.regions;
            for Found { index, global, why } in found {
                let r = &regions[index];
                let mut push = |cut: u64, value: f64, holds: [Option<u64>; 2]| {
                    if cut != 0 && cut < r.size() {
                        candidates.push(Candidate { global, cut, value, holds });
                    }
                };
                let boundaries = match why {
                    Why::Zoom(k) => {
                        let quarter = r.size() / 4;
                        let value = quarter as f64 * 0.75 * ZOOM_GAIN;
                        let start = align_down(quarter * k as u64, min);
                        let end = align_down(quarter * (k as u64 + 1), min);
                        // The first quarter has no start cut: its end cut holds it.
                        push(start, value, [Some(start), None]);
                        push(end, value, [(start == 0).then_some(0), None]);
                        continue;
                    }
                    Why::Slope(diff) => {
                        // Cut where a single edge between the neighbours' rates would explain
                        // the region's: the middle of an even slope (whose span is about half
                        // the neighbours' difference; halved, each half's error is half the
                        // region's), next to the edge of a step the quarters do not show yet.
                        // Both pieces are held: a slope's halves differ by less than their
                        // evidence can show.
                        let f = neighbour_rate(regions, index, true)
                            .zip(neighbour_rate(regions, index, false))
                            .zip(rate(&r.quarters))
                            .map_or(0.5, |((left, right), mid)| {
                                ((mid - right) / (left - right)).clamp(0.05, 0.95)
                            });
                        let cut = align_down((r.size() as f64 * f) as u64, min);
                        push(cut, r.size() as f64 * diff / 16.0, [Some(0), Some(cut)]);
                        continue;
                    }
                    Why::Boundaries(boundaries) => boundaries,
                };
                let mut push_cut = |cut: u64, diff: f64| {
                    let (left, right) = (cut as f64, r.size().saturating_sub(cut) as f64);
                    push(cut, left * right / r.size() as f64 * diff, [None, None]);
                };
                let first = boundaries[0].map_or(0, |b| b.0);
                let neighbours =
                    neighbour_rate(regions, index, true).zip(neighbour_rate(regions, index, false));
                let edge = neighbours.and_then(|(left, right)| {
                    Some((edge_between(&r.quarters, first, left, right)?, left, right))
                });
                match edge {
                    Some((f, left, right)) => push_cut(
                        align_down((r.size() as f64 * f) as u64, min),
                        (left - right).abs(),
                    ),
                    None => {
                        for (b, diff) in boundaries.into_iter().flatten() {
                            push_cut(align_down(r.size() / 4 * b as u64, min), diff);
                        }
                    }
                }
            }
        }
        candidates
    }
}

impl Policy for Adaptive {
    fn keeps_evidence(&self) -> bool {
        true
    }

    /// Apart while held or surely different; joined when both have evidence enough and neither
    /// the long run nor the window says they differ, so flat memory needs few regions.
    #[inline]
    fn merges(&self, left: &Region, right: &Region, samples: u32, by_counts: bool) -> bool {
        if left.hold() > 0 || right.hold() > 0 {
            return false;
        }
        if by_counts {
            return !keep_apart(&left.quarters, &right.quarters);
        }
        // The window test first: it needs no tally, and neighbours the counts keep apart
        // usually differ in their windows too.
        if windows_differ(left.nr_accesses, right.nr_accesses, samples, Z_WINDOWS_SQUARED) {
            return false;
        }
        let (l, r) = (tally(&left.quarters, 0..4), tally(&right.quarters, 0..4));
        l.1 >= JOIN_SAMPLES && r.1 >= JOIN_SAMPLES && !counts_differ(l, r, Z_JOIN_SQUARED)
    }

    /// The reset, the evidence weighed against the window just finished, holds counted down,
    /// and the regions worth cutting, in one pass.
    fn reset(&mut self, targets: &mut [Target], env: &SplitEnv) {
        let nr = cut::count(targets);
        let wanted = nr < env.max_nr_regions;
        // Slopes are followed with spare regions only: their held pieces cannot merge.
        let slopes = nr <= env.max_nr_regions / 2;
        self.found.clear();
        self.partly_known.clear();
        let mut base = 0;
        for target in targets.iter_mut() {
            let mut screen = Screen::new(base);
            for (index, r) in target.regions.iter_mut().enumerate() {
                // Before the reset: the window's hit may make the evidence go.
                let evidence = tally(&r.quarters, 0..4);
                let zoom = if wanted {
                    zoom_quarter(r, evidence, env.min_region_sz, env.samples)
                } else {
                    None
                };
                let known = r.known(env.samples);
                let big = r.size() >= UNKNOWN_MIN_SIZE * env.min_region_sz;
                if wanted && r.unknown > 0 && known > 0 && big {
                    self.partly_known.push(base + index);
                }
                let evidence = if r.unknown > 0 && known == 0 {
                    // Unreadable now: the known evidence fades, so memory that stays so stops
                    // zooming.
                    r.quarters.halve();
                    tally(&r.quarters, 0..4)
                } else {
                    evidence
                };
                r.reset_window();
                r.set_hold(r.hold().saturating_sub(1));
                let evidence = reconsider(r, evidence, known, env.samples);
                if !wanted {
                    continue;
                }
                if let Some(k) = zoom {
                    screen.found.push(Found { index, global: base + index, why: Why::Zoom(k) });
                } else if may_differ(evidence) {
                    screen.push(index, r.quarters);
                }
            }
            if slopes {
                find_slopes(&target.regions, base, &mut screen.found);
            }
            base += target.regions.len();
            self.found.push(screen.finish());
        }
    }

    /// The most valuable cuts the evidence supports and the zooms, within the budget
    /// `max - nr`; at or below max/2, regions without either whose evidence is long are
    /// explored at random too, one aggregation in `EXPLORE_EVERY`, and partly known ones in
    /// every aggregation, their pieces held (and explored again while partly known), so they
    /// narrow down to the memory that cannot be read instead of merging back.
    fn split(&mut self, targets: &mut [Target], classic: &mut Classic, env: &mut SplitEnv) {
        let nr = cut::count(targets);
        let max = env.max_nr_regions;
        classic.last_nr_regions = nr;
        if nr >= max {
            self.found.clear();
            return;
        }
        let budget = max - nr;
        let mut candidates = self.candidates(targets, env.min_region_sz);
        if candidates.len() > budget {
            candidates.select_nth_unstable_by(budget, |a, b| b.value.total_cmp(&a.value));
            candidates.truncate(budget);
        }
        let mut plan: Vec<(usize, u64)> = candidates.iter().map(|c| (c.global, c.cut)).collect();
        // `(global index, offset)` of the pieces to hold once cut.
        let mut holds: Vec<(usize, u64)> = candidates
            .iter()
            .flat_map(|c| c.holds.iter().flatten().map(|&h| (c.global, h)))
            .collect();
        if nr <= max / 2 {
            let pieces = classic.pieces(nr, max);
            let floor = UNKNOWN_MIN_SIZE * env.min_region_sz;
            let mut cut = plan.clone();
            cut.sort_unstable();
            let mut next_cut = cut.iter().map(|c| c.0).peekable();
            let mut partly_known = self.partly_known.iter().copied().peekable();
            for (i, r) in cut::regions(targets).enumerate() {
                if plan.len() >= budget {
                    break;
                }
                let has_cuts = next_cut.peek() == Some(&i);
                while next_cut.next_if(|&c| c <= i).is_some() {}
                let partly_known = partly_known.next_if_eq(&i).is_some();
                if has_cuts || (r.hold() > 0 && !partly_known) {
                    continue;
                }
                let explore = partly_known
                    || tally(&r.quarters, 0..4).1 >= MATURE_SAMPLES
                        && env.rng.range(0, EXPLORE_EVERY, env.rand_version) == 0;
                if !explore {
                    continue;
                }
                let mut cuts = vec![0];
                env.random_cuts(r.size(), pieces, |cut| cuts.push(cut));
                cuts.sort_unstable();
                plan.extend(cuts[1..].iter().map(|&cut| (i, cut)));
                if partly_known {
                    // Held pieces that small would only fragment the memory.
                    let ends = cuts[1..].iter().copied().chain([r.size()]);
                    let big = cuts.iter().zip(ends).filter(|&(&s, e)| e - s >= floor);
                    holds.extend(big.map(|(&start, _)| (i, start)));
                }
            }
        }
        let held = held_starts(targets, holds);
        cut::apply_cuts(targets, env, plan);
        hold(targets, &held);
    }
}

/// `(target index, start)` of the pieces to hold once cut, from `(global index, offset)`.
fn held_starts(targets: &[Target], mut pieces: Vec<(usize, u64)>) -> Vec<(usize, u64)> {
    let mut starts: Vec<(usize, u64)> = Vec::new();
    if pieces.is_empty() {
        return starts;
    }
    pieces.sort_unstable();
    let mut base = 0;
    for (t, target) in targets.iter().enumerate() {
        let end = base + target.regions.len();
        for &(global, from) in pieces.iter().filter(|z| (base..end).contains(&z.0)) {
            starts.push((t, target.regions[global - base].start + from));
        }
        base = end;
    }
    starts
}

/// Holds the regions starting where `starts` says (sorted by target, then address).
fn hold(targets: &mut [Target], starts: &[(usize, u64)]) {
    for &(t, start) in starts {
        let regions = &mut targets[t].regions;
        let i = regions.partition_point(|r| r.start < start);
        if let Some(r) = regions.get_mut(i).filter(|r| r.start == start) {
            r.set_hold(ZOOM_HOLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::P, *};

    fn zoom(r: &Region) -> Option<usize> {
        zoom_quarter(r, tally(&r.quarters, 0..4), 4096, 20)
    }

    fn boundaries_of(q: &Quarters) -> [Option<(usize, f64)>; 3] {
        boundaries(q, tally(q, 0..4))
    }

    /// The screen never hides a boundary the exact tests find, and lets few others through:
    /// a million sets of quarter counts, uniform and stepped, at every count up to the cap and
    /// beyond (merged evidence can pass it).
    #[test]
    fn the_screen_lets_every_boundary_through() {
        let mut rng = crate::rng::Rng::new(3);
        let v = crate::rng::RandVersion::Newest;
        let (mut found, mut screened, mut all) = (0, 0, 0);
        for round in 0..1_000_000u64 {
            let mut q = Quarters::default();
            let rate = rng.range(0, 101, v) as f64 / 100.0;
            for k in 0..4 {
                let cap = if round % 7 == 0 { 255 } else { 65 };
                q.samples[k] = rng.range(0, cap, v) as u8;
                // Half the sets uniform in expectation, half with a step at a random quarter.
                let p = if round % 2 == 1 && k as u64 >= round % 4 { 1.0 - rate } else { rate };
                q.hits[k] = (0..q.samples[k])
                    .filter(|_| rng.range(0, 1000, v) < (p * 1000.0) as u64)
                    .count() as u8;
            }
            let evidence = tally(&q, 0..4);
            let exact = may_differ(evidence) && boundaries(&q, evidence)[0].is_some();
            let might = might_split(&[q]);
            assert!(!exact || might[0], "{q:?}");
            all += 1;
            found += exact as u32;
            screened += might[0] as u32;
        }
        assert!(found > 100_000, "the stepped sets have boundaries: {found}");
        assert!(screened < found + found / 20, "{screened} screened for {found} of {all}");
    }

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
        assert_eq!(boundaries_of(&quarters([0.5; 4], 30)), [None; 3]);
        // Different, but too few samples to tell.
        assert_eq!(boundaries_of(&quarters([1.0, 1.0, 0.0, 0.0], 3)), [None; 3]);
    }

    #[test]
    fn a_step_is_cut_where_it_is() {
        let found = boundaries_of(&quarters([0.9, 0.9, 0.1, 0.1], 20));
        let (boundary, diff) = found[0].unwrap();
        assert_eq!(boundary, 2);
        assert!((diff - 0.8).abs() < 1e-9);
    }

    #[test]
    fn a_middle_sub_area_gets_both_edges() {
        let mut cuts: Vec<usize> = boundaries_of(&quarters([0.6, 0.0, 0.0, 0.6], 30))
            .iter()
            .flatten()
            .map(|f| f.0)
            .collect();
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
        // Cold, hot, cold, hot between cold and hot neighbours: the overall rate fits an edge at
        // a third, but the quarters do not.
        assert_eq!(edge_between(&quarters([0.6, 0.35, 0.65, 1.0], 40), 3, 0.0, 1.0), None);
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

    #[test]
    fn same_long_run_rates_join_whatever_the_window_held_or_changed_do_not() {
        let region = |rate: f64, window: u32| Region {
            quarters: quarters([rate; 4], 20),
            nr_accesses: window,
            ..Region::new(0, 1 << 20)
        };
        // What the first merge pass does with neighbours the counts would merge, and would not.
        let merges = |a: &Region, b: &Region| {
            let policy = Adaptive::default();
            (policy.merges(a, b, 20, true), policy.merges(a, b, 20, false))
        };
        let (counts_decide, kept_apart, joined) = ((true, false), (false, false), (true, true));
        // 12 and 8 of 20 differ by more than the threshold (2): noise, joined.
        assert_eq!(merges(&region(0.5, 12), &region(0.5, 8)), joined);
        // A window that surely changed is left to the counts (kept apart by them).
        assert_eq!(merges(&region(0.5, 20), &region(0.5, 0)), counts_decide);
        assert_eq!(merges(&region(0.5, 10), &region(0.1, 2)), kept_apart);
        let mut held = region(0.5, 10);
        held.set_hold(ZOOM_HOLD);
        assert_eq!(merges(&held, &region(0.5, 10)), kept_apart);
        // Too little evidence: the counts decide.
        let young = Region { quarters: quarters([0.5; 4], 4), ..region(0.5, 10) };
        assert_eq!(merges(&young, &region(0.5, 10)), counts_decide);
    }

    #[test]
    fn a_hit_in_idle_memory_zooms_into_its_quarter() {
        let mut r = Region { nr_accesses: 1, ..Region::new(0, 1 << 30) };
        r.quarters = quarters([0.0; 4], 30);
        r.quarters.hits[2] = 1;
        assert_eq!(zoom(&r), Some(2));
        r.quarters.hits[0] = 1; // hits in two quarters: spread, not a spot
        assert_eq!(zoom(&r), None);
        r.quarters.hits[0] = 0;
        assert_eq!(zoom(&Region { nr_accesses: 0, ..r }), None, "no hit now");
        let busy = Region { quarters: quarters([0.0, 0.0, 0.5, 0.0], 30), ..r };
        assert_eq!(zoom(&busy), None, "a rate the evidence can split on");
        assert_eq!(zoom(&Region { end: 8 * 4096, ..r }), None, "too small");
        // Young evidence: one hit is where a dim area's access happened to fall; two in one
        // quarter are a spot.
        let mut young = Region { quarters: quarters([0.0; 4], 12), ..r };
        young.quarters.hits[2] = 1;
        assert_eq!(zoom(&young), None);
        young.quarters.hits[2] = 2;
        assert_eq!(zoom(&young), Some(2));
    }

    #[test]
    fn a_region_between_surely_different_neighbours_lies_on_a_slope() {
        let seen = |index: u64, rate: f64, samples: u8| {
            let mut r = Region::new(index * P, (index + 1) * P);
            r.quarters = quarters([rate; 4], samples / 4);
            r
        };
        let (left, right) = (seen(0, 0.3, 200), seen(2, 0.5, 200));
        let diff = slope(&left, &seen(1, 0.4, 200), &right).unwrap();
        assert!((diff - 0.2).abs() < 1e-9, "{diff}");
        let falling = slope(&seen(0, 0.5, 200), &seen(1, 0.4, 200), &seen(2, 0.3, 200));
        assert!(falling.is_some(), "either way");
        assert_eq!(slope(&left, &seen(1, 0.6, 200), &right), None, "a peak, not a slope");
        assert_eq!(slope(&left, &seen(1, 0.4, 32), &right), None, "young evidence");
        let (near_left, near_right) = (seen(0, 0.38, 200), seen(2, 0.42, 200));
        assert_eq!(slope(&near_left, &seen(1, 0.4, 200), &near_right), None, "flat: noise");
        let mut held = seen(1, 0.4, 200);
        held.set_hold(ZOOM_HOLD);
        assert_eq!(slope(&left, &held, &right), None);
        let apart = Region { start: 5 * P, end: 6 * P, ..seen(1, 0.4, 200) };
        assert_eq!(slope(&left, &apart, &right), None, "not adjacent");
    }

    #[test]
    fn an_unreadable_window_in_readable_memory_zooms_where_its_last_sample_was() {
        let r = Region {
            unknown: 20,
            sampling_addr: (1 << 30) / 8 * 7,
            quarters: quarters([0.0; 4], 30),
            ..Region::new(0, 1 << 30)
        };
        assert_eq!(zoom(&r), Some(3));
        let never_read = Region { quarters: Quarters::default(), ..r };
        assert_eq!(zoom(&never_read), None, "unreadable all along");
        let partly = Region { unknown: 10, ..r };
        assert_eq!(zoom(&partly), None, "which sample was unknown is not known");
    }

    #[test]
    fn zoom_pieces_are_cut_and_held_below_half() {
        use super::super::testing::*;
        let mut t = [target(&[1024 * P; 10])];
        let r = &mut t[0].regions[4];
        r.quarters = quarters([0.0; 4], 30);
        r.quarters.hits[1] = 1;
        r.nr_accesses = 1;
        split_once(&mut t, &mut Adaptive::default(), 1000, 1, &mut Classic::default());
        let held: Vec<(u64, u64)> = t[0]
            .regions
            .iter()
            .filter(|r| r.hold() > 0)
            .map(|r| (r.start / P, r.end / P))
            .collect();
        assert_eq!(held, [(4 * 1024 + 256, 4 * 1024 + 512)]);
        assert_tiles(&t[0], 10 * 1024 * P);
        // The first quarter: one cut, and the piece from the region's start held.
        let mut t = [target(&[1024 * P; 10])];
        let r = &mut t[0].regions[4];
        r.quarters = quarters([0.0; 4], 30);
        r.quarters.hits[0] = 1;
        r.nr_accesses = 1;
        split_once(&mut t, &mut Adaptive::default(), 1000, 1, &mut Classic::default());
        let held: Vec<u64> =
            t[0].regions.iter().filter(|r| r.hold() > 0).map(|r| r.end / P).collect();
        assert_eq!(held, [4 * 1024 + 256]);
    }

    #[test]
    fn a_slope_is_cut_where_a_single_edge_would_be_and_both_pieces_are_held() {
        use super::super::testing::*;
        // Hot, then a region reading 0.25 with no boundary of its own, then cold: the cut goes a
        // quarter of the way in, as a step there would explain its rate; on an even slope
        // (0.5 between 1 and 0) it would be the middle.
        let mut t = [target(&[1024 * P; 3])];
        for (r, rate) in t[0].regions.iter_mut().zip([1.0, 0.25, 0.0]) {
            r.quarters = quarters([rate; 4], 40);
            r.nr_accesses = (rate * 20.0) as u32;
            r.last_nr_accesses = r.nr_accesses;
        }
        split_once(&mut t, &mut Adaptive::default(), 1000, 1, &mut Classic::default());
        let pieces: Vec<(u64, u64, bool)> =
            t[0].regions.iter().map(|r| (r.start / P, r.end / P, r.hold() > 0)).collect();
        assert_eq!(pieces[1..3], [(1024, 1280, true), (1280, 2048, true)], "{pieces:?}");
    }

    fn reconsider_with(r: &mut Region, window: u32) {
        r.last_nr_accesses = window;
        reconsider(r, tally(&r.quarters, 0..4), 20, 20);
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
