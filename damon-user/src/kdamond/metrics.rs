//! Prometheus metrics of the kernel's kdamonds: the names of udamon's own monitor where the
//! meaning is the same, labelled by kdamond (sysfs number), context, target (DAMON's index)
//! and ops (paddr, vaddr, fvaddr).

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::{Aggregation, Identity, Scheme};
use crate::output::metrics::{IDLE_QUANTILES, add, encode, registry, server::Exposition};

const TARGET: [&str; 4] = ["kdamond", "context", "target", "ops"];
const SCHEME: [&str; 4] = ["kdamond", "context", "scheme", "ops"];

pub struct KdamondMetrics {
    registry: Registry,
    targets: IntGauge,
    regions: IntGaugeVec,
    monitored: IntGaugeVec,
    working_set: IntGaugeVec,
    accessed: IntCounterVec,
    aggregations: IntCounterVec,
    idle: GaugeVec,
    sample_interval: GaugeVec,
    aggregation_interval: GaugeVec,
    lost: IntCounter,
    tried_regions: IntGaugeVec,
    tried_bytes: IntGaugeVec,
    quota: IntGaugeVec,
    /// Label values of the targets with series, to remove them with their kdamond.
    series: Vec<[String; 4]>,
}

/// Kdamond, context (kernels have one per kdamond), target or scheme index, ops.
fn labels(who: &Identity, index: u32) -> [String; 4] {
    [who.label(), "0".into(), index.to_string(), who.ops.clone().unwrap_or_default()]
}

impl Default for KdamondMetrics {
    fn default() -> Self {
        let r = registry();
        let gauges = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &TARGET);
        let mut with_percentile = TARGET.to_vec();
        with_percentile.push("percentile");
        Self {
            targets: add(
                &r,
                IntGauge::new("udamon_targets", "Targets of the kernel's kdamonds being observed"),
            ),
            regions: add(
                &r,
                gauges("udamon_regions", "Monitoring regions of a target (DAMON's nr_regions)"),
            ),
            monitored: add(&r, gauges("udamon_monitored_bytes", "Bytes of a target's regions")),
            working_set: add(
                &r,
                gauges(
                    "udamon_working_set_bytes",
                    "Bytes of a target's regions with at least one access in the last aggregation",
                ),
            ),
            accessed: add(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "udamon_accessed_bytes_total",
                        "Sum over the aggregations read of region size times the samples that found it accessed",
                    ),
                    &TARGET,
                ),
            ),
            aggregations: add(
                &r,
                IntCounterVec::new(
                    Opts::new("udamon_aggregations_total", "Aggregation intervals completed"),
                    &TARGET,
                ),
            ),
            idle: add(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "udamon_idle_seconds",
                        "Byte-weighted percentiles of how long a target's memory has gone unaccessed (bucket lower bounds, within 25 %)",
                    ),
                    &with_percentile,
                ),
            ),
            sample_interval: add(
                &r,
                GaugeVec::new(
                    Opts::new("udamon_sample_interval_seconds", "The sample interval"),
                    &TARGET,
                ),
            ),
            aggregation_interval: add(
                &r,
                GaugeVec::new(
                    Opts::new("udamon_aggregation_interval_seconds", "The aggregation interval"),
                    &TARGET,
                ),
            ),
            lost: add(
                &r,
                IntCounter::new(
                    "udamon_kdamond_regions_lost_total",
                    "Regions the recording stream dropped because its ring buffer was full",
                ),
            ),
            // Gauges: they count from when udamon attached, which a restart resets.
            tried_regions: add(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "udamon_damos_tried_regions",
                        "Regions a DAMOS scheme's action was tried on since udamon attached (DAMOS nr_tried)",
                    ),
                    &SCHEME,
                ),
            ),
            tried_bytes: add(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "udamon_damos_tried_bytes",
                        "Bytes a DAMOS scheme's action was tried on since udamon attached (DAMOS sz_tried)",
                    ),
                    &SCHEME,
                ),
            ),
            quota: add(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "udamon_damos_quota_effective_bytes",
                        "A DAMOS scheme's effective size quota (kernels with damon:damos_esz, 6.17+)",
                    ),
                    &SCHEME,
                ),
            ),
            registry: r,
            series: Vec::new(),
        }
    }
}

impl KdamondMetrics {
    pub fn update(&mut self, a: &Aggregation) {
        let values = labels(&a.who, a.target);
        let l: Vec<&str> = values.iter().map(String::as_str).collect();
        self.regions.with_label_values(&l).set(a.nr_regions.into());
        self.monitored.with_label_values(&l).set(a.total_bytes as i64);
        self.working_set.with_label_values(&l).set(a.working_set_bytes as i64);
        self.accessed.with_label_values(&l).inc_by(a.accessed_bytes);
        self.aggregations.with_label_values(&l).inc_by(a.missed + 1);
        self.sample_interval.with_label_values(&l).set(a.sample_us as f64 / 1e6);
        self.aggregation_interval.with_label_values(&l).set(a.aggr_us as f64 / 1e6);
        for ((_, name), value) in IDLE_QUANTILES.iter().zip(a.idle_seconds) {
            let mut with = l.clone();
            with.push(name);
            self.idle.with_label_values(&with).set(value);
        }
        if !self.series.contains(&values) {
            self.series.push(values);
        }
        self.targets.set(self.series.len() as i64);
    }

    pub fn update_scheme(&mut self, s: &Scheme) {
        let values = labels(&s.who, s.scheme);
        let l: Vec<&str> = values.iter().map(String::as_str).collect();
        self.tried_regions.with_label_values(&l).set(s.tried_regions as i64);
        self.tried_bytes.with_label_values(&l).set(s.tried_bytes as i64);
        if let Some(quota) = s.quota_bytes {
            self.quota.with_label_values(&l).set(quota as i64);
        }
    }

    /// Drops a scheme's series: its kdamond ended.
    pub fn remove_scheme(&mut self, who: &Identity, scheme: u32) {
        let values = labels(who, scheme);
        let l: Vec<&str> = values.iter().map(String::as_str).collect();
        for gauge in [&self.tried_regions, &self.tried_bytes, &self.quota] {
            let _ = gauge.remove_label_values(&l);
        }
    }

    /// Drops a target's series: its kdamond ended.
    pub fn remove(&mut self, who: &Identity, target: u32) {
        let values = labels(who, target);
        let l: Vec<&str> = values.iter().map(String::as_str).collect();
        let _ = self.regions.remove_label_values(&l);
        let _ = self.monitored.remove_label_values(&l);
        let _ = self.working_set.remove_label_values(&l);
        let _ = self.accessed.remove_label_values(&l);
        let _ = self.aggregations.remove_label_values(&l);
        let _ = self.sample_interval.remove_label_values(&l);
        let _ = self.aggregation_interval.remove_label_values(&l);
        for (_, name) in IDLE_QUANTILES {
            let mut with = l.clone();
            with.push(name);
            let _ = self.idle.remove_label_values(&with);
        }
        self.series.retain(|s| *s != values);
        self.targets.set(self.series.len() as i64);
    }

    /// The recording stream's losses so far.
    pub fn set_lost(&mut self, lost: u64) {
        self.lost.inc_by(lost.saturating_sub(self.lost.get()));
    }
}

impl Exposition for KdamondMetrics {
    fn encode(&self) -> String {
        encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kdamonds_target_has_the_monitors_names_and_its_own_labels() {
        let who = Identity { pid: 72, kdamond: Some(0), ops: Some("paddr".into()) };
        let a = Aggregation {
            who: who.clone(),
            target: 0,
            number: 3,
            missed: 1,
            ended_ns: 0,
            nr_regions: 1500,
            total_bytes: 1 << 30,
            working_set_bytes: 1 << 20,
            accessed_bytes: 5 << 20,
            max_nr_accesses: 10,
            sample_us: 500_000,
            aggr_us: 5_000_000,
            update_us: 60_000_000,
            idle_seconds: [60.0, 120.0, 240.0],
        };
        let mut m = KdamondMetrics::default();
        m.update(&a);
        m.update(&Aggregation { missed: 0, ..a });
        let has = |m: &KdamondMetrics, lines: &[String]| {
            let text = m.encode();
            for line in lines {
                assert!(text.contains(line), "no `{line}` in\n{text}");
            }
        };
        let l = r#"context="0",kdamond="0",ops="paddr",target="0""#;
        has(&m, &[
            format!("udamon_regions{{{l}}} 1500"),
            format!("udamon_monitored_bytes{{{l}}} 1073741824"),
            format!("udamon_working_set_bytes{{{l}}} 1048576"),
            format!("udamon_accessed_bytes_total{{{l}}} 10485760"),
            format!("udamon_aggregations_total{{{l}}} 3"),
            r#"udamon_idle_seconds{context="0",kdamond="0",ops="paddr",percentile="90",target="0"} 120"#.into(),
            format!("udamon_aggregation_interval_seconds{{{l}}} 5"),
            "udamon_targets 1".into(),
        ]);
        let scheme = Scheme {
            who: who.clone(),
            scheme: 1,
            tried_regions: 40,
            tried_bytes: 1 << 20,
            quota_bytes: Some(4096),
        };
        m.update_scheme(&scheme);
        let l = r#"context="0",kdamond="0",ops="paddr",scheme="1""#;
        has(
            &m,
            &[
                format!("udamon_damos_tried_regions{{{l}}} 40"),
                format!("udamon_damos_tried_bytes{{{l}}} 1048576"),
                format!("udamon_damos_quota_effective_bytes{{{l}}} 4096"),
            ],
        );
        m.remove(&who, 0);
        m.remove_scheme(&who, 1);
        assert!(!m.encode().contains("kdamond=\"0\""));
    }
}
