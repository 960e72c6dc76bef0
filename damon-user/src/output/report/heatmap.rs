//! Access heatmaps: time × address cells holding the access rate (accesses per sample, 0..1)
//! averaged over the bytes and time each cell covers. The address axis leaves out the unmapped
//! gaps between regions (a process's heap and stack are terabytes apart), so every column shows
//! monitored memory.

use serde::Serialize;

use crate::output::record::{RecordedSnapshot, Region};

/// A contiguous piece of the monitored address space, and where it starts on the axis.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    #[serde(skip)]
    offset: u64,
}

impl Span {
    /// Where the span starts on the gapless address axis.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

#[derive(Debug, Serialize)]
pub struct Heatmap {
    pub start_ns: u64,
    pub end_ns: u64,
    pub spans: Vec<Span>,
    /// `rows[time][address]`: the access rate, or None where no region was monitored.
    pub rows: Vec<Vec<Option<f64>>>,
}

impl Heatmap {
    /// `snapshots` (sorted by time) on `time_bins` × `address_bins` cells; `range` limits the
    /// addresses; `max_accesses` is the samples per aggregation.
    pub fn new(
        snapshots: &[RecordedSnapshot],
        time_bins: usize,
        address_bins: usize,
        range: Option<(u64, u64)>,
        max_accesses: u64,
    ) -> Self {
        let clip = |r: &Region| match range {
            Some((lo, hi)) => (r.start.max(lo), r.end.min(hi)),
            None => (r.start, r.end),
        };
        let spans = spans(snapshots.iter().flat_map(|s| s.regions.iter().map(clip)));
        let (start_ns, end_ns) = match (snapshots.first(), snapshots.last()) {
            (Some(first), Some(last)) => (first.start_ns, last.end_ns.max(first.start_ns + 1)),
            _ => (0, 1),
        };
        let axis = spans.last().map_or(0, |s| s.offset + s.end - s.start);
        let (time_bins, address_bins) = (time_bins.max(1), address_bins.max(1));
        // Σ rate × bytes × time per cell, and Σ bytes × time monitored.
        let mut heat = vec![vec![0f64; address_bins]; time_bins];
        let mut cover = vec![vec![0f64; address_bins]; time_bins];
        let time_bin = (end_ns - start_ns) as f64 / time_bins as f64;
        let address_bin = axis.max(1) as f64 / address_bins as f64;
        for s in snapshots {
            let (t0, t1) =
                ((s.start_ns.max(start_ns) - start_ns) as f64, (s.end_ns - start_ns) as f64);
            let time_cells = overlaps(t0, t1.max(t0 + 1.0), time_bin, time_bins);
            for r in &s.regions {
                let (lo, hi) = clip(r);
                // Unknown memory is neither idle nor hot: it shows as no data.
                if lo >= hi || r.unknown {
                    continue;
                }
                let rate = r.nr_accesses as f64 / max_accesses.max(1) as f64;
                for (a0, a1) in axis_pieces(&spans, lo, hi) {
                    for (col, bytes) in overlaps(a0 as f64, a1 as f64, address_bin, address_bins) {
                        for &(row, time) in &time_cells {
                            heat[row][col] += rate.min(1.0) * bytes * time;
                            cover[row][col] += bytes * time;
                        }
                    }
                }
            }
        }
        let rows = heat
            .into_iter()
            .zip(cover)
            .map(|(h, c)| h.into_iter().zip(c).map(|(h, c)| (c > 0.0).then(|| h / c)).collect())
            .collect();
        Self { start_ns, end_ns, spans, rows }
    }

    /// Bytes on the address axis: the monitored ones, gaps left out.
    pub fn axis_len(&self) -> u64 {
        self.spans.last().map_or(0, |s| s.offset + s.end - s.start)
    }

    /// The address at the start of column `col` of `columns`.
    pub fn address_at(&self, col: usize, columns: usize) -> u64 {
        let axis = self.axis_len();
        let at = (axis as u128 * col as u128 / columns.max(1) as u128) as u64;
        let span = self.spans.iter().rev().find(|s| s.offset <= at);
        span.map_or(0, |s| s.start + (at - s.offset))
    }
}

/// The union of `ranges` as sorted, disjoint spans laid end to end on the axis.
fn spans(ranges: impl Iterator<Item = (u64, u64)>) -> Vec<Span> {
    let mut ranges: Vec<(u64, u64)> = ranges.filter(|(s, e)| s < e).collect();
    ranges.sort_unstable();
    let mut spans: Vec<Span> = Vec::new();
    for (start, end) in ranges {
        match spans.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => spans.push(Span { start, end, offset: 0 }),
        }
    }
    let mut offset = 0;
    for span in &mut spans {
        span.offset = offset;
        offset += span.end - span.start;
    }
    spans
}

/// `[lo, hi)` (inside the spans) as pieces of the axis.
fn axis_pieces(spans: &[Span], lo: u64, hi: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let first = spans.partition_point(|s| s.end <= lo);
    spans[first..]
        .iter()
        .take_while(move |s| s.start < hi)
        .map(move |s| (s.offset + lo.max(s.start) - s.start, s.offset + hi.min(s.end) - s.start))
}

/// The bins `[x0, x1)` overlaps, with the length of each overlap.
fn overlaps(x0: f64, x1: f64, bin: f64, bins: usize) -> Vec<(usize, f64)> {
    let first = ((x0 / bin) as usize).min(bins - 1);
    let last = (((x1 / bin).ceil() as usize).max(first + 1)).min(bins);
    (first..last)
        .map(|i| {
            let (b0, b1) = (i as f64 * bin, (i + 1) as f64 * bin);
            (i, (x1.min(b1) - x0.max(b0)).max(0.0))
        })
        .filter(|&(_, len)| len > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(t: u64, regions: &[(u64, u64, u32)]) -> RecordedSnapshot {
        RecordedSnapshot {
            sample_us: None,
            schemes: Vec::new(),
            start_ns: t,
            end_ns: t + 100,
            regions: regions
                .iter()
                .map(|&(start, end, nr_accesses)| Region::new(start, end, nr_accesses, 0))
                .collect(),
        }
    }

    #[test]
    fn cells_average_the_rate_and_gaps_are_left_out() {
        // A hot first half, then a 1 TiB gap, then a cold span of the same size.
        let far = 1 << 40;
        let s = [
            snapshot(0, &[(0, 4096, 20), (4096, 8192, 0), (far, far + 8192, 0)]),
            snapshot(100, &[(0, 8192, 10), (far, far + 8192, 20)]),
        ];
        let map = Heatmap::new(&s, 2, 4, None, 20);
        assert_eq!(map.spans.len(), 2);
        assert_eq!(map.rows[0], [Some(1.0), Some(0.0), Some(0.0), Some(0.0)]);
        assert_eq!(map.rows[1], [Some(0.5), Some(0.5), Some(1.0), Some(1.0)]);
        assert_eq!(map.address_at(2, 4), far);
        // A range limits the axis to what it covers.
        let map = Heatmap::new(&s, 1, 2, Some((2048, 6144)), 20);
        assert_eq!(map.spans, [Span { start: 2048, end: 6144, offset: 0 }]);
        assert_eq!(map.rows[0], [Some(0.75), Some(0.25)]);
    }

    #[test]
    fn cells_no_region_covered_stay_empty() {
        let s = [snapshot(0, &[(0, 4096, 5)]), snapshot(100, &[(8192, 12288, 5)])];
        let map = Heatmap::new(&s, 2, 2, None, 10);
        assert_eq!(map.rows[0], [Some(0.5), None]);
        assert_eq!(map.rows[1], [None, Some(0.5)]);
    }
}
