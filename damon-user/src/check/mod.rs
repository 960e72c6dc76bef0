//! `udamon check`: the environment doctor. One row per requirement, what it found, and what a
//! missing one disables; monitoring is possible when every required row passes.

mod actions;
mod programs;
mod render;
mod system;

use serde::Serialize;

pub use render::{json, table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and working.
    Ok,
    /// Works, with a caveat the detail explains.
    Warn,
    /// Absent or refused.
    Missing,
    /// Could not be tried because something it depends on is missing.
    Skipped,
}

impl Status {
    fn passes(self) -> bool {
        matches!(self, Self::Ok | Self::Warn)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub requirement: &'static str,
    pub status: Status,
    pub detail: String,
    /// Needed for monitoring at all (otherwise it only enables an optional feature).
    pub required: bool,
    /// What does not work without it.
    pub if_missing: &'static str,
}

impl Row {
    fn new(requirement: &'static str, required: bool, if_missing: &'static str) -> Self {
        Self { requirement, status: Status::Ok, detail: String::new(), required, if_missing }
    }

    fn with(mut self, status: Status, detail: impl Into<String>) -> Self {
        self.status = status;
        self.detail = detail.into();
        self
    }

    fn ok(self, detail: impl Into<String>) -> Self {
        self.with(Status::Ok, detail)
    }

    fn warn(self, detail: impl Into<String>) -> Self {
        self.with(Status::Warn, detail)
    }

    fn missing(self, detail: impl Into<String>) -> Self {
        self.with(Status::Missing, detail)
    }

    fn skipped(self, detail: impl Into<String>) -> Self {
        self.with(Status::Skipped, detail)
    }

    /// Ok when `present`, else missing; for requirements whose detail reads the same either way.
    fn present_if(self, present: bool, detail: impl Into<String>) -> Self {
        self.with(if present { Status::Ok } else { Status::Missing }, detail)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub monitoring_possible: bool,
    pub rows: Vec<Row>,
}

impl Report {
    fn new(rows: Vec<Row>) -> Self {
        let monitoring_possible = rows.iter().all(|row| !row.required || row.status.passes());
        Self { monitoring_possible, rows }
    }

    /// Required rows that did not pass.
    pub fn blockers(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|row| row.required && !row.status.passes())
    }

    /// Ok, or one line naming every missing requirement and where to look next.
    pub fn verdict(&self) -> anyhow::Result<()> {
        let missing: Vec<&str> = self.blockers().map(|row| row.requirement).collect();
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "cannot monitor: missing {} (run as root; `udamon check` shows details)",
            missing.join(", ")
        )
    }
}

/// Everything: the system facts, then loading and firing each BPF program type.
pub fn run() -> Report {
    let facts = system::Facts::read(true);
    let mut rows = system::rows(&facts);
    rows.extend(programs::rows(facts));
    rows.extend(actions::rows());
    Report::new(rows)
}

/// The quick part only (no BPF programs loaded, BTF not parsed), for commands that are about
/// to monitor.
pub fn require_monitoring() -> anyhow::Result<()> {
    Report::new(system::rows(&system::Facts::read(false))).verdict()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(requirement: &'static str, required: bool, status: Status) -> Row {
        Row::new(requirement, required, "x").with(status, "")
    }

    #[test]
    fn only_required_rows_that_fail_block_monitoring() {
        let report = Report::new(vec![
            row("CAP_BPF", true, Status::Missing),
            row("kdamond", false, Status::Warn),
            row("fentry", false, Status::Missing),
            row("raw_tp", true, Status::Skipped),
            row("BTF", true, Status::Warn),
        ]);
        assert!(!report.monitoring_possible);
        let err = report.verdict().unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot monitor: missing CAP_BPF, raw_tp (run as root; `udamon check` shows details)"
        );
    }

    #[test]
    fn optional_failures_and_warnings_still_allow_monitoring() {
        let report = Report::new(vec![
            row("kprobe", false, Status::Missing),
            row("kdamond", true, Status::Warn),
        ]);
        assert!(report.monitoring_possible);
        assert!(report.verdict().is_ok());
    }
}
