//! `report access` and the live view: one snapshot's regions with their access rate (% of the
//! samples and hz) and age, a one-line heatmap, the region count and the working-set size.

use serde::Serialize;

use super::{heatmap::Heatmap, picture};
use damon_engine::units::format_size;

use crate::{
    output::record::{Intervals, RecordedSnapshot},
    util::table::{self, Align},
};

#[derive(Serialize)]
pub struct RegionRow {
    pub start: u64,
    pub end: u64,
    pub size: u64,
    pub nr_accesses: u32,
    /// No sample could tell accessed from idle: the rates below are 0 and mean nothing.
    pub unknown: bool,
    /// Share of the aggregation's samples that found an access.
    pub access_percent: f64,
    /// Accesses per second: nr_accesses / aggregation interval.
    pub access_hz: f64,
    /// In aggregation intervals, and in microseconds.
    pub age: u32,
    pub age_us: u64,
}

#[derive(Serialize)]
pub struct AccessReport {
    pub target_id: u64,
    pub snapshot: usize,
    pub start_ns: u64,
    pub end_ns: u64,
    pub nr_regions: usize,
    pub total_bytes: u64,
    pub working_set_bytes: u64,
    /// Bytes that could not be monitored (neither idle nor in the working set).
    pub unknown_bytes: u64,
    pub regions: Vec<RegionRow>,
}

pub fn report(
    target_id: u64,
    index: usize,
    s: &RecordedSnapshot,
    intervals: &Intervals,
) -> AccessReport {
    let max = intervals.max_accesses() as f64;
    let aggr_s = intervals.aggr_us as f64 / 1e6;
    AccessReport {
        target_id,
        snapshot: index,
        start_ns: s.start_ns,
        end_ns: s.end_ns,
        nr_regions: s.regions.len(),
        total_bytes: s.total_bytes(),
        working_set_bytes: s.working_set(1),
        unknown_bytes: s.unknown_bytes(),
        regions: s
            .regions
            .iter()
            .map(|r| RegionRow {
                start: r.start,
                end: r.end,
                size: r.size(),
                nr_accesses: r.nr_accesses,
                unknown: r.unknown,
                access_percent: 100.0 * r.nr_accesses as f64 / max,
                access_hz: r.nr_accesses as f64 / aggr_s,
                age: r.age,
                age_us: r.age as u64 * intervals.aggr_us,
            })
            .collect(),
    }
}

/// The table, then a heatmap line of `width` cells across the snapshot's address space.
pub fn render(
    report: &AccessReport,
    s: &RecordedSnapshot,
    intervals: &Intervals,
    width: usize,
) -> String {
    let mut out = format!(
        "target {} snapshot {} at {:.1} s: {} regions, {} total, working set {}",
        report.target_id,
        report.snapshot,
        report.end_ns as f64 / 1e9,
        report.nr_regions,
        format_size(report.total_bytes),
        format_size(report.working_set_bytes),
    );
    if report.unknown_bytes > 0 {
        out.push_str(&format!(", {} unknown", format_size(report.unknown_bytes)));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = report
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                i.to_string(),
                format!("{:#x}", r.start),
                format_size(r.size),
                if r.unknown { "unknown".into() } else { format!("{:.0} %", r.access_percent) },
                if r.unknown { "-".into() } else { format!("{:.0}", r.access_hz) },
                r.age.to_string(),
                format_age(r.age_us),
            ]
        })
        .collect();
    use Align::{Left, Right};
    out.push_str(&table::render(
        &["#", "start", "size", "access", "hz", "age", "(time)"],
        &[Right, Left, Right, Right, Right, Right, Right],
        &rows,
    ));
    let line = Heatmap::new(std::slice::from_ref(s), 1, width, None, intervals.max_accesses());
    out.push_str(&format!("heatmap |{}|\n", picture::ascii(&line, false).trim_end_matches('\n')));
    out
}

fn format_age(us: u64) -> String {
    match us {
        0..1_000_000 => format!("{} ms", us / 1000),
        1_000_000..60_000_000 => format!("{:.1} s", us as f64 / 1e6),
        60_000_000..3_600_000_000 => format!("{:.1} min", us as f64 / 60e6),
        _ => format!("{:.1} h", us as f64 / 3600e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_access_table() {
        let record = crate::output::record::tests::sample();
        let (t, s) = (&record[0], &record[0].snapshots[1]);
        let intervals = t.intervals.unwrap();
        let text = render(&report(t.target_id, 1, s, &intervals), s, &intervals, 20);
        assert_eq!(
            text,
            "\
target 4242 snapshot 1 at 0.2 s: 2 regions, 1020.0 KiB total, working set 1020.0 KiB
#  start         size  access   hz  age  (time)
0  0x1000     8.0 KiB    75 %  150    2  200 ms
1  0x3000  1012.0 KiB     5 %   10    0    0 ms
heatmap |10000000000000000000|
"
        );
    }
}
