//! `report wss` and `report nr-regions`: a per-snapshot number as percentiles over the record,
//! computed as damo computes them (the value at index ⌊p·n/100⌋ of the sorted list).

use serde::Serialize;

use crate::output::record::{RecordedSnapshot, TargetRecord};

/// damo skips this many snapshots first: regions are still adapting then.
pub const DEFAULT_SKIP: usize = 20;
pub const PERCENTILES: [u32; 5] = [0, 25, 50, 75, 100];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Bytes of regions with at least one access in the snapshot.
    WorkingSet,
    Regions,
}

impl Metric {
    fn of(self, s: &RecordedSnapshot) -> u64 {
        match self {
            Self::WorkingSet => s.working_set(1),
            Self::Regions => s.regions.len() as u64,
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Distribution {
    pub target_id: u64,
    /// Snapshots the figures are over (after the skipped ones).
    pub snapshots: usize,
    /// Snapshots left out first.
    pub skipped: usize,
    pub average: f64,
    /// `(percentile, value)`; empty when no snapshot is left.
    pub percentiles: Vec<(u32, u64)>,
}

/// The distribution after the first `skip` snapshots, or over all of them where that would leave
/// none (a short record still says something).
pub fn distribution(target: &TargetRecord, metric: Metric, skip: usize) -> Distribution {
    let skipped = if skip < target.snapshots.len() { skip } else { 0 };
    let mut values: Vec<u64> =
        target.snapshots.iter().skip(skipped).map(|s| metric.of(s)).collect();
    values.sort_unstable();
    let n = values.len();
    let average = if n == 0 { 0.0 } else { values.iter().sum::<u64>() as f64 / n as f64 };
    let percentiles = if n == 0 {
        Vec::new()
    } else {
        PERCENTILES.iter().map(|&p| (p, values[(p as usize * n / 100).min(n - 1)])).collect()
    };
    Distribution { target_id: target.target_id, snapshots: n, skipped, average, percentiles }
}

/// Text like damo's: a header, the average, one line per percentile with a bar.
pub fn render(d: &Distribution, name: &str, format: impl Fn(u64) -> String) -> String {
    const BAR: u64 = 50;
    let skipped = match d.skipped {
        0 => String::new(),
        n => format!(" (the first {n} skipped)"),
    };
    let mut out =
        format!("# target {}: {name} over {} snapshots{skipped}\n", d.target_id, d.snapshots);
    if d.percentiles.is_empty() {
        return out;
    }
    out.push_str(&format!("avg  {:>12}\n", format(d.average.round() as u64)));
    let max = d.percentiles.iter().map(|&(_, v)| v).max().unwrap_or(0).max(1);
    for &(p, v) in &d.percentiles {
        let bar = (v * BAR / max) as usize;
        out.push_str(&format!(
            "{p:>3}  {:>12}  |{}{}|\n",
            format(v),
            "*".repeat(bar),
            " ".repeat(BAR as usize - bar)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::record::Region;

    fn target(sizes: &[u64]) -> TargetRecord {
        let snapshots = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| RecordedSnapshot {
                sample_us: None,
                schemes: Vec::new(),
                start_ns: i as u64,
                end_ns: i as u64 + 1,
                regions: vec![Region::new(0, size, 1, 0), Region::new(size, size + 4096, 0, 0)],
            })
            .collect();
        TargetRecord { target_id: 9, intervals: None, snapshots }
    }

    #[test]
    fn percentiles_pick_damos_indices() {
        let t = target(&[4096, 8192, 12288, 16384]);
        let d = distribution(&t, Metric::WorkingSet, 0);
        assert_eq!(d.percentiles, [(0, 4096), (25, 8192), (50, 12288), (75, 16384), (100, 16384)]);
        assert_eq!(d.average, 10240.0);
        let d = distribution(&t, Metric::Regions, 3);
        assert_eq!((d.snapshots, d.percentiles[0]), (1, (0, 2)));
        // A record too short for the skip is taken whole, and the header says so.
        let d = distribution(&t, Metric::Regions, 20);
        assert_eq!((d.snapshots, d.skipped), (4, 0));
        assert!(
            render(&d, "regions", |v| v.to_string())
                .starts_with("# target 9: regions over 4 snapshots\n")
        );
    }
}
