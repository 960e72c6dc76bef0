//! Prometheus metrics of a monitoring run, updated at every aggregation and served on `/metrics`
//! (see `server`). Names follow Prometheus' rules: one `udamon_` prefix, base units (bytes,
//! seconds), `_total` on counters, and bounded labels (the pid and cgroup of a target, never an
//! address).

mod schemes;
pub mod server;

use std::collections::BTreeSet;

use prometheus::{
    Counter, Encoder as _, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector,
};

use self::schemes::SchemeMetrics;
use crate::{
    monitor::Problem,
    snapshot::{SamplerStats, Snapshot},
};

/// Byte-weighted percentiles of idle time exported per target (a `percentile` label: the
/// `quantile` label is reserved for summaries).
pub(crate) const IDLE_QUANTILES: [(f64, &str); 3] = [(0.5, "50"), (0.9, "90"), (0.99, "99")];

/// The Prometheus text format (0.0.4): what every scraper and promtool read.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct Metrics {
    registry: Registry,
    cgroup: String,
    targets: IntGauge,
    regions: IntGaugeVec,
    working_set: IntGaugeVec,
    unknown: IntGaugeVec,
    accessed: IntCounterVec,
    idle: GaugeVec,
    samples: IntCounter,
    aggregations: IntCounter,
    splits: IntCounter,
    merges: IntCounter,
    checks: IntCounter,
    ticks: IntCounter,
    late_ticks: IntCounter,
    lost: IntCounterVec,
    problems: IntCounterVec,
    /// The (pid, kind) pairs `problems` has series for, to remove them with the target.
    problem_series: BTreeSet<(u32, &'static str)>,
    sampler_cpu: Counter,
    sample_interval: Gauge,
    aggregation_interval: Gauge,
    schemes: SchemeMetrics,
    /// Totals at the last update: counters grow by the difference.
    last: SamplerStats,
    last_faults_lost: u64,
}

/// Creates a metric and registers it; the names are fixed, so failing is a bug.
pub(crate) fn add<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("a valid metric");
    registry.register(Box::new(metric.clone())).expect("a unique metric name");
    metric
}

impl Metrics {
    /// Metrics for targets found in `cgroup` (empty: targets given by pid).
    pub fn new(cgroup: &str) -> Self {
        let r = registry();
        let schemes = SchemeMetrics::new(&r);
        let target = ["pid", "cgroup"];
        let m = Self {
            targets: add(&r, IntGauge::new("udamon_targets", "Processes being monitored")),
            regions: add(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "udamon_regions",
                        "Monitoring regions of a target (DAMON's nr_regions)",
                    ),
                    &target,
                ),
            ),
            working_set: add(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "udamon_working_set_bytes",
                        "Bytes of a target's regions with at least one access in the last aggregation",
                    ),
                    &target,
                ),
            ),
            unknown: add(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "udamon_unknown_bytes",
                        "Bytes of a target's regions no sample of the last aggregation could read (locked, hugetlb, PFN-mapped or shared memory)",
                    ),
                    &target,
                ),
            ),
            accessed: add(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "udamon_accessed_bytes_total",
                        "Sum over aggregations of region size times the samples that found it accessed",
                    ),
                    &target,
                ),
            ),
            idle: add(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "udamon_idle_seconds",
                        "Byte-weighted percentiles of how long a target's memory has gone unaccessed",
                    ),
                    &["pid", "cgroup", "percentile"],
                ),
            ),
            samples: add(&r, IntCounter::new("udamon_samples_total", "Sample intervals completed")),
            aggregations: add(
                &r,
                IntCounter::new("udamon_aggregations_total", "Aggregation intervals completed"),
            ),
            splits: add(&r, IntCounter::new("udamon_splits_total", "Regions split")),
            merges: add(&r, IntCounter::new("udamon_merges_total", "Region merges")),
            checks: add(
                &r,
                IntCounter::new(
                    "udamon_access_checks_total",
                    "Accessed-bit checks of sampled pages: what monitoring costs",
                ),
            ),
            ticks: add(&r, IntCounter::new("udamon_sample_ticks_total", "Sampler ticks")),
            late_ticks: add(
                &r,
                IntCounter::new(
                    "udamon_sample_ticks_late_total",
                    "Sampler ticks that started late",
                ),
            ),
            lost: add(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "udamon_ringbuf_records_lost_total",
                        "Records the eBPF side could not deliver because a ring buffer was full",
                    ),
                    &["ring"],
                ),
            ),
            problems: add(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "udamon_target_problems_total",
                        "Walks, clears or reads that failed for a target without ending it (its samples read unknown)",
                    ),
                    &["pid", "cgroup", "kind"],
                ),
            ),
            problem_series: BTreeSet::new(),
            sampler_cpu: add(
                &r,
                Counter::new("udamon_sampler_cpu_seconds_total", "CPU time of the sampler thread"),
            ),
            sample_interval: add(
                &r,
                Gauge::new("udamon_sample_interval_seconds", "The sample interval"),
            ),
            aggregation_interval: add(
                &r,
                Gauge::new("udamon_aggregation_interval_seconds", "The aggregation interval"),
            ),
            registry: r,
            cgroup: cgroup.to_owned(),
            last: SamplerStats::default(),
            last_faults_lost: 0,
            schemes,
        };
        // The ring exists from the start, so a rate over it is defined before any loss.
        m.lost.with_label_values(&["faults"]).inc_by(0);
        m
    }

    /// Takes in an aggregation's snapshot, and the fault ring's losses so far.
    pub fn update(&mut self, s: &Snapshot, faults_lost: u64) {
        self.targets.set(s.targets.len() as i64);
        for t in &s.targets {
            let pid = t.pid.to_string();
            let labels = [pid.as_str(), self.cgroup.as_str()];
            let (mut ws, mut accessed, mut unknown) = (0u64, 0u64, 0u64);
            for r in &t.regions {
                let size = r.end - r.start;
                if r.unknown {
                    unknown += size;
                } else if r.nr_accesses > 0 {
                    ws += size;
                }
                accessed += size * r.nr_accesses as u64;
            }
            self.regions.with_label_values(&labels).set(t.regions.len() as i64);
            self.working_set.with_label_values(&labels).set(ws as i64);
            self.unknown.with_label_values(&labels).set(unknown as i64);
            self.accessed.with_label_values(&labels).inc_by(accessed);
            // Idle time is that of the memory that can be monitored.
            let idle = idle_quantiles(t.regions.iter().filter(|r| !r.unknown).map(|r| {
                let idle =
                    if r.nr_accesses == 0 { r.age as f64 * s.aggr_us as f64 / 1e6 } else { 0.0 };
                (r.end - r.start, idle)
            }));
            for ((_, name), value) in IDLE_QUANTILES.iter().zip(idle) {
                self.idle.with_label_values(&[labels[0], labels[1], name]).set(value);
            }
        }
        let (new, old) = (s.stats, self.last);
        self.samples.inc_by(new.counters.samples - old.counters.samples);
        self.aggregations.inc_by(new.counters.aggregations - old.counters.aggregations);
        self.splits.inc_by(new.counters.splits - old.counters.splits);
        self.merges.inc_by(new.counters.merges - old.counters.merges);
        self.checks.inc_by(new.counters.checks - old.counters.checks);
        self.ticks.inc_by(new.ticks - old.ticks);
        self.late_ticks.inc_by(new.late_ticks - old.late_ticks);
        self.sampler_cpu.inc_by((new.cpu_seconds - old.cpu_seconds).max(0.0));
        let faults = faults_lost.saturating_sub(self.last_faults_lost);
        self.lost.with_label_values(&["faults"]).inc_by(faults);
        self.last = new;
        self.last_faults_lost = faults_lost.max(self.last_faults_lost);
        self.sample_interval.set(s.sample_us as f64 / 1e6);
        self.aggregation_interval.set(s.aggr_us as f64 / 1e6);
        self.schemes.update(&s.schemes);
    }

    /// Counts a target's problem.
    pub fn problem(&mut self, problem: &Problem) {
        let pid = problem.pid.to_string();
        self.problems
            .with_label_values(&[pid.as_str(), self.cgroup.as_str(), problem.kind])
            .inc_by(problem.count);
        self.problem_series.insert((problem.pid, problem.kind));
    }

    /// Drops a target's series: it is no longer monitored.
    pub fn remove(&mut self, number: u32) {
        let pid = number.to_string();
        let labels = [pid.as_str(), self.cgroup.as_str()];
        let _ = self.regions.remove_label_values(&labels);
        let _ = self.working_set.remove_label_values(&labels);
        let _ = self.unknown.remove_label_values(&labels);
        let _ = self.accessed.remove_label_values(&labels);
        for (_, name) in IDLE_QUANTILES {
            let _ = self.idle.remove_label_values(&[labels[0], labels[1], name]);
        }
        for &(_, kind) in self.problem_series.iter().filter(|s| s.0 == number) {
            let _ = self.problems.remove_label_values(&[labels[0], labels[1], kind]);
        }
        self.problem_series.retain(|s| s.0 != number);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// A registry with `udamon_build_info`, which every exposition has.
pub(crate) fn registry() -> Registry {
    let r = Registry::new();
    let build = add(
        &r,
        IntGaugeVec::new(
            Opts::new("udamon_build_info", "udamon's version, as a label"),
            &["version"],
        ),
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    r
}

/// A registry's text exposition.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).expect("writing to memory");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// The `IDLE_QUANTILES` of idle seconds over `(bytes, idle seconds)` pairs, weighted by bytes.
fn idle_quantiles(pieces: impl Iterator<Item = (u64, f64)>) -> [f64; 3] {
    let mut pieces: Vec<(u64, f64)> = pieces.collect();
    pieces.sort_by(|a, b| a.1.total_cmp(&b.1));
    let total: u64 = pieces.iter().map(|p| p.0).sum();
    IDLE_QUANTILES.map(|(q, _)| {
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        pieces
            .iter()
            .find(|(bytes, _)| {
                seen += bytes;
                seen >= want.max(1)
            })
            .map_or(0.0, |p| p.1)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use damon_engine::schemes::{Action, SchemeStatus, Stats};

    use crate::snapshot::{Region, TargetSnapshot};

    fn snapshot(pid: u32, regions: &[(u64, u64, u32, u32)], samples: u64) -> Snapshot {
        let mut stats = SamplerStats::default();
        stats.counters.samples = samples;
        stats.counters.aggregations = samples / 20;
        stats.late_ticks = 1;
        stats.cpu_seconds = 0.5;
        Snapshot {
            aggregation: 0,
            started: Duration::from_millis(900),
            elapsed: Duration::from_secs(1),
            sample_us: 5000,
            aggr_us: 100_000,
            samples: 20,
            targets: vec![TargetSnapshot {
                pid,
                regions: regions
                    .iter()
                    .map(|&(s, e, nr, age)| Region::new(s, e, nr, age))
                    .collect(),
            }],
            stats,
            schemes: vec![SchemeStatus {
                action: Action::Pageout,
                stats: Stats { nr_tried: 2, sz_tried: 8192, sz_applied: 4096, ..Stats::default() },
                effective_quota: Some(1 << 20),
                active: true,
            }],
        }
    }

    #[test]
    fn exposition_has_the_figures_under_prometheus_names() {
        let mut m = Metrics::new("/test");
        m.update(&snapshot(42, &[(0, 4096, 20, 3), (4096, 12288, 0, 10)], 40), 0);
        m.update(&snapshot(42, &[(0, 4096, 10, 0), (4096, 12288, 0, 11)], 60), 2);
        let text = m.encode();
        for line in [
            r#"udamon_regions{cgroup="/test",pid="42"} 2"#,
            r#"udamon_working_set_bytes{cgroup="/test",pid="42"} 4096"#,
            r#"udamon_accessed_bytes_total{cgroup="/test",pid="42"} 122880"#,
            r#"udamon_idle_seconds{cgroup="/test",percentile="50",pid="42"} 1.1"#,
            r#"udamon_idle_seconds{cgroup="/test",percentile="99",pid="42"} 1.1"#,
            "udamon_samples_total 60",
            "udamon_aggregations_total 3",
            "udamon_sample_ticks_late_total 1",
            r#"udamon_ringbuf_records_lost_total{ring="faults"} 2"#,
            "udamon_sampler_cpu_seconds_total 0.5",
            "udamon_sample_interval_seconds 0.005",
            "udamon_aggregation_interval_seconds 0.1",
            r#"udamon_damos_tried_bytes_total{action="pageout",scheme="0"} 8192"#,
            r#"udamon_damos_applied_bytes_total{action="pageout",scheme="0"} 4096"#,
            r#"udamon_damos_effective_quota_bytes{action="pageout",scheme="0"} 1048576"#,
            r#"udamon_damos_active{action="pageout",scheme="0"} 1"#,
            r#"udamon_build_info{version=""#,
            "udamon_targets 1",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        m.remove(42);
        assert!(!m.encode().contains(r#"pid="42""#));
    }

    #[test]
    fn idle_quantiles_weigh_bytes() {
        let q = idle_quantiles([(100, 0.0), (900, 5.0)].into_iter());
        assert_eq!(q, [5.0, 5.0, 5.0]);
        let q = idle_quantiles([(600, 0.0), (300, 2.0), (100, 9.0)].into_iter());
        assert_eq!(q, [0.0, 2.0, 9.0]);
        assert_eq!(idle_quantiles(std::iter::empty()), [0.0; 3]);
    }
}
