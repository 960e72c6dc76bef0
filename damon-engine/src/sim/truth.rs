//! The simulated address space's ground truth: a per-sample access probability for every byte,
//! piecewise constant over `[0, size)`.

use crate::Region;

#[derive(Clone, Debug, PartialEq)]
struct Piece {
    start: u64,
    probability: f64,
    /// `probability` as a threshold on a uniform `u64` draw.
    threshold: u64,
}

impl Piece {
    fn new(start: u64, probability: f64) -> Self {
        let threshold =
            if probability >= 1.0 { u64::MAX } else { (probability * 2f64.powi(64)) as u64 };
        Self { start, probability, threshold }
    }
}

#[derive(Clone, Debug)]
pub struct Truth {
    size: u64,
    /// Sorted by start; the first starts at 0; each ends where the next starts (the last at `size`).
    pieces: Vec<Piece>,
}

impl Truth {
    /// All of `[0, size)` unaccessed.
    pub fn new(size: u64) -> Self {
        Self { size, pieces: vec![Piece::new(0, 0.0)] }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// `[0, size)` unaccessed but where `layers` (`(start, end, probability)`, clipped to the
    /// space) lie, a later layer winning where they overlap, as `set` in turn would leave it; in
    /// O(n log n) for n layers rather than `set`'s O(n) each.
    pub fn painted(size: u64, layers: impl IntoIterator<Item = (u64, u64, f64)>) -> Self {
        let layers: Vec<_> = layers
            .into_iter()
            .map(|(start, end, p)| (start, end.min(size), p))
            .filter(|&(start, end, _)| start < end)
            .collect();
        // Boundaries in address order: a layer (by its index, its precedence) starts or ends.
        let mut edges: Vec<(u64, bool, usize)> = layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| [(l.0, true, i), (l.1, false, i)])
            .collect();
        edges.sort_unstable_by_key(|&(at, _, i)| (at, i));
        let mut truth = Self::new(size);
        let mut open = std::collections::BTreeSet::new();
        let mut edges = edges.into_iter().peekable();
        while let Some((at, starts, i)) = edges.next() {
            if starts {
                open.insert(i)
            } else {
                open.remove(&i)
            };
            if edges.peek().is_some_and(|&(next, _, _)| next == at) || at >= size {
                continue;
            }
            let probability = open.last().map_or(0.0, |&top| layers[top].2);
            match truth.pieces.last_mut() {
                Some(last) if last.start == at => *last = Piece::new(at, probability),
                Some(last) if last.probability == probability => {}
                _ => truth.pieces.push(Piece::new(at, probability)),
            }
        }
        truth.pieces.dedup_by(|next, prev| next.probability == prev.probability);
        truth
    }

    /// Sets `[start, end)` (clipped to the space) to `probability`.
    pub fn set(&mut self, start: u64, end: u64, probability: f64) {
        let end = end.min(self.size);
        if start >= end {
            return;
        }
        let after = self.probability_at(end.min(self.size - 1));
        let first = self.pieces.partition_point(|p| p.start < start);
        let last = self.pieces.partition_point(|p| p.start < end);
        let mut replacement = vec![Piece::new(start, probability)];
        if end < self.size && self.pieces.get(last).is_none_or(|p| p.start != end) {
            replacement.push(Piece::new(end, after));
        }
        let placed = replacement.len();
        self.pieces.splice(first..last, replacement);
        // Only the new pieces and their neighbours can have become equal neighbours.
        for i in (first.max(1)..=first + placed).rev() {
            if i < self.pieces.len() && self.pieces[i].probability == self.pieces[i - 1].probability
            {
                self.pieces.remove(i);
            }
        }
    }

    fn index_at(&self, addr: u64) -> usize {
        self.pieces.partition_point(|p| p.start <= addr) - 1
    }

    pub fn probability_at(&self, addr: u64) -> f64 {
        self.pieces[self.index_at(addr)].probability
    }

    /// One Bernoulli draw at `addr` from a uniform `u64`.
    pub fn accessed(&self, addr: u64, draw: u64) -> bool {
        draw < self.pieces[self.index_at(addr)].threshold
    }

    /// `(start, end, probability)` of every piece.
    pub fn pieces(&self) -> impl Iterator<Item = (u64, u64, f64)> + '_ {
        self.pieces.iter().enumerate().map(|(i, p)| {
            let end = self.pieces.get(i + 1).map_or(self.size, |next| next.start);
            (p.start, end, p.probability)
        })
    }

    /// Where the truth's pieces and the regions intersect, in address order.
    fn segments<'a>(&'a self, regions: &'a [Region]) -> Segments<'a> {
        Segments { truth: self, regions, piece: 0, at: 0, region: 0 }
    }

    /// Mean over bytes of |true probability - the region's estimate|, where a region's estimate
    /// is its `nr_accesses / samples`. Bytes outside every region count with an estimate of 0.
    pub fn error(&self, regions: &[Region], samples: u32) -> f64 {
        let weighted: f64 = self
            .segments(regions)
            .map(|(at, upto, p, r)| {
                (upto - at) as f64 * (p - estimate(r.map(|i| &regions[i]), samples)).abs()
            })
            .sum();
        weighted / self.size as f64
    }

    /// What the boundaries alone cost: the mean over bytes of |true probability - the true
    /// mean of its region|, as if every region's estimate were exact. Bytes outside every region
    /// count against a mean of 0.
    pub fn resolution_error(&self, regions: &[Region]) -> f64 {
        let mut means = vec![0.0; regions.len()];
        for (at, upto, p, r) in self.segments(regions) {
            if let Some(i) = r {
                means[i] += (upto - at) as f64 * p / regions[i].size() as f64;
            }
        }
        let weighted: f64 = self
            .segments(regions)
            .map(|(at, upto, p, r)| (upto - at) as f64 * (p - r.map_or(0.0, |i| means[i])).abs())
            .sum();
        weighted / self.size as f64
    }

    /// Of the bytes `wanted` picks (by address range and true probability), how many lie in
    /// regions whose estimates are within `tolerance` of their truth: `(described, wanted)`.
    pub fn coverage(
        &self,
        regions: &[Region],
        samples: u32,
        tolerance: f64,
        wanted: impl Fn(u64, u64, f64) -> u64,
    ) -> (u64, u64) {
        self.segments(regions).fold((0, 0), |(described, total), (at, upto, p, r)| {
            let bytes = wanted(at, upto, p);
            let good = (p - estimate(r.map(|i| &regions[i]), samples)).abs() <= tolerance;
            (described + if good { bytes } else { 0 }, total + bytes)
        })
    }
}

/// `(start, end, probability, the index of the region holding it)` of every intersection of the
/// truth's pieces and the regions; bytes outside every region with `None`.
struct Segments<'a> {
    truth: &'a Truth,
    regions: &'a [Region],
    piece: usize,
    at: u64,
    region: usize,
}

impl Iterator for Segments<'_> {
    type Item = (u64, u64, f64, Option<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let pieces = &self.truth.pieces;
        let piece = pieces.get(self.piece)?;
        let end = pieces.get(self.piece + 1).map_or(self.truth.size, |next| next.start);
        let at = self.at;
        while self.regions.get(self.region).is_some_and(|r| r.end <= at) {
            self.region += 1;
        }
        let (upto, region) = match self.regions.get(self.region) {
            Some(r) if r.start <= at => (end.min(r.end), Some(self.region)),
            Some(r) => (end.min(r.start), None),
            None => (end, None),
        };
        self.at = upto;
        if upto == end {
            self.piece += 1;
        }
        Some((at, upto, piece.probability, region))
    }
}

fn estimate(r: Option<&Region>, samples: u32) -> f64 {
    r.map_or(0.0, |r| r.nr_accesses as f64 / samples as f64)
}

/// Whether the regions describe `[start, end)` at `probability`: regions lying inside it whose
/// estimates are within `tolerance` cover at least `coverage` of it. A region lies inside when
/// at least `coverage` of its own bytes do: a boundary a few pages off the truth still counts, a
/// region that merely overlaps the area does not.
pub fn describes(
    regions: &[Region],
    samples: u32,
    (start, end): (u64, u64),
    probability: f64,
    tolerance: f64,
    coverage: f64,
) -> bool {
    let first = regions.partition_point(|r| r.end <= start);
    let good: u64 = regions[first..]
        .iter()
        .take_while(|r| r.start < end)
        .map(|r| (r, r.end.min(end) - r.start.max(start)))
        .filter(|&(r, inside)| inside as f64 >= coverage * r.size() as f64)
        .filter(|(r, _)| (r.nr_accesses as f64 / samples as f64 - probability).abs() <= tolerance)
        .map(|(_, inside)| inside)
        .sum();
    good as f64 >= coverage * (end - start) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(t: &Truth) -> Vec<(u64, u64, f64)> {
        t.pieces().collect()
    }

    #[test]
    fn set_splits_overwrites_and_coalesces() {
        let mut t = Truth::new(100);
        t.set(10, 20, 0.5);
        t.set(30, 40, 0.5);
        assert_eq!(
            pieces(&t),
            vec![(0, 10, 0.0), (10, 20, 0.5), (20, 30, 0.0), (30, 40, 0.5), (40, 100, 0.0)]
        );
        t.set(15, 35, 0.5); // bridges both
        assert_eq!(pieces(&t), vec![(0, 10, 0.0), (10, 40, 0.5), (40, 100, 0.0)]);
        t.set(0, 100, 0.0);
        assert_eq!(pieces(&t), vec![(0, 100, 0.0)]);
        t.set(90, 200, 1.0); // clipped to the space
        assert_eq!(pieces(&t), vec![(0, 90, 0.0), (90, 100, 1.0)]);
        assert_eq!(
            (t.probability_at(89), t.probability_at(90), t.probability_at(99)),
            (0.0, 1.0, 1.0)
        );
    }

    #[test]
    fn painting_layers_at_once_is_setting_them_in_turn() {
        let mut rng = crate::rng::Rng::new(3);
        for round in 0..200 {
            let size = 1 + rng.next_u64() % 1000;
            // Few probabilities, so that equal neighbours (to coalesce) are common.
            let layers: Vec<(u64, u64, f64)> = (0..rng.next_u64() % 30)
                .map(|_| {
                    let start = rng.next_u64() % (size + 50);
                    let end = start + rng.next_u64() % 200;
                    (start, end, (rng.next_u64() % 3) as f64 / 2.0)
                })
                .collect();
            let mut set = Truth::new(size);
            for &(start, end, p) in &layers {
                set.set(start, end, p);
            }
            let painted = Truth::painted(size, layers.iter().copied());
            assert_eq!(pieces(&painted), pieces(&set), "round {round}: {layers:?}");
            assert_eq!(painted.pieces, set.pieces, "round {round}: thresholds too");
            let starts: Vec<u64> = set.pieces.iter().map(|p| p.start).collect();
            assert!(starts[0] == 0 && starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
            assert!(set.pieces.windows(2).all(|w| w[0].probability != w[1].probability));
        }
    }

    #[test]
    fn draws_follow_the_probability() {
        let mut t = Truth::new(100);
        t.set(0, 50, 0.25);
        t.set(50, 100, 1.0);
        let mut rng = crate::rng::Rng::new(9);
        let hits = (0..100_000).filter(|_| t.accessed(10, rng.next_u64())).count();
        assert!((24_000..26_000).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| t.accessed(60, rng.next_u64())));
        assert!((0..1000).all(|_| !Truth::new(10).accessed(5, rng.next_u64())));
    }

    #[test]
    fn error_weighs_bytes() {
        let mut t = Truth::new(400);
        t.set(0, 200, 1.0);
        let region = |s, e, nr| Region { nr_accesses: nr, ..Region::new(s, e) };
        // Perfect description.
        assert_eq!(t.error(&[region(0, 200, 10), region(200, 400, 0)], 10), 0.0);
        // One region averaging both halves at 0.5: every byte is off by 0.5.
        assert_eq!(t.error(&[region(0, 400, 5)], 10), 0.5);
        // An unmonitored hot half counts as estimated 0.
        assert_eq!(t.error(&[region(200, 400, 0)], 10), 0.5);
    }

    #[test]
    fn description_needs_inside_regions_with_close_estimates() {
        let region = |s, e, nr| Region { nr_accesses: nr, ..Region::new(s, e) };
        let area = (100, 200);
        let exact = [region(0, 100, 9), region(100, 200, 0), region(200, 300, 9)];
        assert!(describes(&exact, 10, area, 0.0, 0.2, 0.9));
        // A region straddling the area's boundary by half does not count.
        let straddling = [region(0, 150, 5), region(150, 200, 0), region(200, 300, 9)];
        assert!(!describes(&straddling, 10, area, 0.0, 0.2, 0.9));
        // 95 of 100 bytes covered by inside regions: enough.
        let mostly = [region(0, 105, 5), region(105, 200, 1), region(200, 300, 9)];
        assert!(describes(&mostly, 10, area, 0.0, 0.2, 0.9));
        // A region 5 % outside still lies inside; one 30 % outside does not.
        assert!(describes(&[region(95, 200, 0)], 10, area, 0.0, 0.2, 0.9));
        assert!(!describes(&[region(60, 200, 0)], 10, area, 0.0, 0.2, 0.9));
        // Inside but estimated wrong.
        let wrong = [region(0, 100, 9), region(100, 200, 5), region(200, 300, 9)];
        assert!(!describes(&wrong, 10, area, 0.0, 0.2, 0.9));
    }
}
