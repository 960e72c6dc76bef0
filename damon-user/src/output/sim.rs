//! The simulator's text reports: one run, or every policy side by side.

use std::fmt::Write as _;

use damon_engine::{
    sim::{Detection, RunReport},
    units::format_size,
};

use crate::util::table::{self, Align};

/// A row of the comparison, and the table's header.
const HEADER: [&str; 9] = [
    "policy",
    "regions",
    "error",
    "resolution",
    "hot covered (90 % at)",
    "changed covered",
    "detection (aggregations)",
    "splits (wasted)",
    "cost (checks)",
];

pub fn compare_table(reports: &[RunReport]) -> String {
    let mut out = String::new();
    if let Some(first) = reports.first() {
        let _ = writeln!(
            out,
            "{}: {} aggregations ({} warm-up), {}, max_nr_regions {}",
            first.scenario,
            first.aggregations,
            first.warmup_aggregations,
            seeds(first),
            first.max_nr_regions
        );
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.policy.name().to_owned(),
                format!("{:.1}", r.effective_regions),
                format!("{:.4}", r.error),
                format!("{:.4}", r.resolution_error),
                hot_coverage(r),
                percent(r.changed_coverage),
                latency_summary(&r.detections),
                format!("{} ({})", r.splits, r.wasted_splits),
                format!("{:.2}M", r.cost as f64 / 1e6),
            ]
        })
        .collect();
    use Align::{Left, Right};
    out.push_str(&table::render(
        &HEADER,
        &[Left, Right, Right, Right, Right, Right, Left, Right, Right],
        &rows,
    ));
    out
}

/// `-`, or a share as a whole percentage.
fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |s| format!("{:.0} %", s * 100.0))
}

/// The mean hot coverage and when 90 % was first reached.
fn hot_coverage(r: &RunReport) -> String {
    let at = r.hot_covered_after.map_or("never".into(), |s| format!("{s:.0} s"));
    match r.hot_coverage {
        None => "-".into(),
        Some(_) => format!("{} ({at})", percent(r.hot_coverage)),
    }
}

fn seeds(r: &RunReport) -> String {
    match r.runs {
        1 => format!("seed {}", r.seed),
        runs => format!("means over seeds {}..={}", r.seed, r.seed.wrapping_add(runs - 1)),
    }
}

/// `-` without changes; else the median and worst latency, and how many were never detected.
fn latency_summary(detections: &[Detection]) -> String {
    if detections.is_empty() {
        return "-".into();
    }
    let mut found: Vec<u64> = detections.iter().filter_map(|d| d.latency).collect();
    let never = detections.len() - found.len();
    if found.is_empty() {
        return format!("never ({never} of {never})");
    }
    found.sort_unstable();
    let mut text = if found.len() == 1 {
        format!("{}", found[0])
    } else {
        format!("median {}, max {}", found[found.len() / 2], found[found.len() - 1])
    };
    if never > 0 {
        let _ = write!(text, ", {never} never");
    }
    text
}

pub fn run_table(r: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "scenario           {} ({})", r.scenario, seeds(r));
    let _ = writeln!(
        out,
        "policy             {} (max_nr_regions {})",
        r.policy.name(),
        r.max_nr_regions
    );
    let _ = writeln!(
        out,
        "aggregations       {} ({} warm-up, not scored)",
        r.aggregations, r.warmup_aggregations
    );
    let _ = writeln!(out, "effective regions  {:.1}", r.effective_regions);
    let _ =
        writeln!(out, "error              {:.4} (mean byte-weighted |truth - estimate|)", r.error);
    let _ = writeln!(
        out,
        "resolution error   {:.4} (mean byte-weighted |truth - true mean of its region|)",
        r.resolution_error
    );
    let _ = writeln!(
        out,
        "hot covered        {} (of bytes at 0.2 or more, in regions estimating them within 0.2; \
         90 % first at)",
        hot_coverage(r)
    );
    let _ = writeln!(
        out,
        "changed covered    {} (of bytes events changed, likewise, from the first change)",
        percent(r.changed_coverage)
    );
    let _ = writeln!(
        out,
        "splits             {} ({} wasted: merged back within 2 aggregations)",
        r.splits, r.wasted_splits
    );
    let _ = writeln!(out, "cost               {} access checks", r.cost);
    for d in &r.detections {
        let latency = d
            .latency
            .map_or("never detected".to_owned(), |n| format!("detected after {n} aggregations"));
        let _ = writeln!(
            out,
            "change at {:>6}    {}..{} ({}) -> {:.2}: {latency}",
            d.at.to_string(),
            d.start,
            d.end,
            format_size(d.end.0 - d.start.0),
            d.probability
        );
    }
    let _ = writeln!(out, "nr_regions         {}", sparkline(&r.nr_regions, r.max_nr_regions));
    out
}

/// `nr_regions` over the run in 60 columns, scaled to `max`.
fn sparkline(values: &[u32], max: u32) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    const COLUMNS: usize = 60;
    if values.is_empty() {
        return String::new();
    }
    let per_column = values.len().div_ceil(COLUMNS);
    let mut line: String = values
        .chunks(per_column)
        .map(|chunk| {
            let mean = chunk.iter().map(|&v| v as f64).sum::<f64>() / chunk.len() as f64;
            let level = (mean / max.max(1) as f64 * (BARS.len() - 1) as f64).round() as usize;
            BARS[level.min(BARS.len() - 1)]
        })
        .collect();
    let _ = write!(line, "  (0..{max}; last {})", values[values.len() - 1]);
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use damon_engine::units::{Micros, Size};

    fn detection(latency: Option<u64>) -> Detection {
        Detection { at: Micros(1), start: Size(0), end: Size(1), probability: 0.0, latency }
    }

    #[test]
    fn latency_summaries() {
        assert_eq!(latency_summary(&[]), "-");
        assert_eq!(latency_summary(&[detection(Some(4))]), "4");
        assert_eq!(latency_summary(&[detection(None)]), "never (1 of 1)");
        let mixed = [detection(Some(9)), detection(Some(2)), detection(Some(3)), detection(None)];
        assert_eq!(latency_summary(&mixed), "median 3, max 9, 1 never");
    }

    #[test]
    fn sparkline_scales_to_max() {
        let line = sparkline(&[0, 100, 200], 200);
        assert!(line.starts_with("▁▅█"), "{line}");
        assert!(line.ends_with("(0..200; last 200)"));
    }
}
