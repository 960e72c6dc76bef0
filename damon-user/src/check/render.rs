//! The report as a terminal table or as JSON.

use std::fmt::Write as _;

use super::{Report, Status};
use crate::util::table::{self, Align};

pub fn table(report: &Report) -> String {
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|row| {
            [row.requirement, label(row.status), &row.detail, row.if_missing]
                .map(str::to_owned)
                .to_vec()
        })
        .collect();
    let mut out =
        table::render(&["REQUIREMENT", "STATUS", "FOUND", "IF MISSING"], &[Align::Left; 4], &rows);
    if report.monitoring_possible {
        out.push_str("\nmonitoring: possible\n");
    } else {
        let blockers: Vec<&str> = report.blockers().map(|row| row.requirement).collect();
        let _ = writeln!(out, "\nmonitoring: NOT possible; missing: {}", blockers.join(", "));
    }
    out
}

fn label(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Warn => "warn",
        Status::Missing => "MISSING",
        Status::Skipped => "skipped",
    }
}

pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("a report always serializes")
}
