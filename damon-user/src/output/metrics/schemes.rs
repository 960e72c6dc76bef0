//! DAMOS schemes' metrics: the kernel's scheme stats as counters, the effective quota and the
//! watermark activation as gauges, one series per scheme (its index and action).

use damon_engine::schemes::{SchemeStatus, Stats};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::add;

/// Reads one of a scheme's stats.
type Stat = fn(&Stats) -> u64;

/// Each counter: its name, help, and the stat it counts.
const COUNTERS: [(&str, &str, Stat); 6] = [
    ("udamon_damos_tried_regions_total", "Regions a scheme's action was tried on", |s| s.nr_tried),
    ("udamon_damos_tried_bytes_total", "Bytes a scheme's action was tried on", |s| s.sz_tried),
    ("udamon_damos_applied_regions_total", "Regions a scheme's action did something to", |s| {
        s.nr_applied
    }),
    ("udamon_damos_applied_bytes_total", "Bytes a scheme's action was applied to", |s| {
        s.sz_applied
    }),
    (
        "udamon_damos_filter_passed_bytes_total",
        "Bytes of the tried ones that passed the page filters",
        |s| s.sz_ops_filter_passed,
    ),
    (
        "udamon_damos_quota_exceeds_total",
        "Quota intervals that ended with the quota used up",
        |s| s.qt_exceeds,
    ),
];

pub struct SchemeMetrics {
    counters: Vec<IntCounterVec>,
    quota: IntGaugeVec,
    active: IntGaugeVec,
    /// Stats at the last update: counters grow by the difference.
    last: Vec<Stats>,
}

impl SchemeMetrics {
    pub fn new(r: &Registry) -> Self {
        let labels = ["scheme", "action"];
        let counters = COUNTERS
            .iter()
            .map(|(name, help, _)| add(r, IntCounterVec::new(Opts::new(*name, *help), &labels)))
            .collect();
        let gauge =
            |name: &str, help: &str| add(r, IntGaugeVec::new(Opts::new(name, help), &labels));
        Self {
            counters,
            quota: gauge(
                "udamon_damos_effective_quota_bytes",
                "A scheme's effective size quota per quota interval (schemes with a quota)",
            ),
            active: gauge("udamon_damos_active", "1 if a scheme's watermarks let it act"),
            last: Vec::new(),
        }
    }

    pub fn update(&mut self, schemes: &[SchemeStatus]) {
        self.last.resize(schemes.len(), Stats::default());
        for (i, (s, last)) in schemes.iter().zip(&mut self.last).enumerate() {
            let index = i.to_string();
            let labels = [index.as_str(), s.action.name()];
            for (counter, (_, _, stat)) in self.counters.iter().zip(COUNTERS) {
                counter
                    .with_label_values(&labels)
                    .inc_by(stat(&s.stats).saturating_sub(stat(last)));
            }
            if let Some(esz) = s.effective_quota {
                self.quota.with_label_values(&labels).set(esz.min(i64::MAX as u64) as i64);
            }
            self.active.with_label_values(&labels).set(s.active as i64);
            *last = s.stats;
        }
    }
}
