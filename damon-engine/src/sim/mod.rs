//! The simulator: the real engine against a synthetic address space whose access
//! probabilities are known, scored on how well its regions describe them and what that cost.

pub mod builtin;
mod ops;
pub mod scenario;
pub mod truth;

use anyhow::Result;
use serde::Serialize;

pub use self::ops::SimOps;
use self::{scenario::Scenario, truth::describes};
use crate::{
    Config, Context, CoreVersion, Sampling, SplitPolicy, Target,
    units::{Micros, Size},
};

/// The engine's choices a run is made with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Choices {
    pub policy: SplitPolicy,
    pub version: CoreVersion,
    pub sampling: Sampling,
}

/// A change counts as detected once regions inside the changed area, with estimates within
/// this of the new probability, cover this share of it.
const DETECT_TOLERANCE: f64 = 0.2;
const DETECT_COVERAGE: f64 = 0.9;
/// Bytes at least this hot are the ones an idle reading misdescribes: what hot coverage counts.
const HOT: f64 = DETECT_TOLERANCE;

#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    pub at: Micros,
    pub start: Size,
    pub end: Size,
    pub probability: f64,
    /// Aggregations from the change until it was described; `None`: never.
    pub latency: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub policy: SplitPolicy,
    pub sampling: Sampling,
    /// The first seed; `runs` consecutive seeds from it were averaged.
    pub seed: u64,
    pub runs: u64,
    pub max_nr_regions: u32,
    pub aggregations: u64,
    /// The first 10 % of aggregations, left out of every metric but detection.
    pub warmup_aggregations: u64,
    /// Mean `nr_regions` per aggregation.
    pub effective_regions: f64,
    /// Mean over aggregations of the byte-weighted |truth - estimate|.
    pub error: f64,
    /// Mean over aggregations of the byte-weighted |truth - the true mean of its region|: what
    /// the boundaries alone cost, whatever the samples.
    pub resolution_error: f64,
    /// Mean share of the hot bytes (truth at least 0.2) in regions whose estimates are within
    /// 0.2 of it; `None` without hot bytes.
    pub hot_coverage: Option<f64>,
    /// Simulated seconds until hot coverage first reached 0.9, warm-up included; `None`: never
    /// (of several runs: the slowest).
    pub hot_covered_after: Option<f64>,
    /// Mean share of the bytes changed by events so far in regions whose estimates are within
    /// 0.2 of their truth, from the first change; `None` without changes.
    pub changed_coverage: Option<f64>,
    pub detections: Vec<Detection>,
    pub splits: u64,
    pub wasted_splits: u64,
    /// Access checks (regions x samples): proportional to monitoring CPU.
    pub cost: u64,
    /// `nr_regions` after every aggregation, warm-up included.
    pub nr_regions: Vec<u32>,
}

/// A change being watched for: the aggregation count when it happened.
struct Watch {
    detection: Detection,
    since: u64,
}

/// Runs `scenario` (with its attributes) under `choices`.
pub fn run(scenario: &Scenario, choices: Choices, seed: u64) -> Result<RunReport> {
    scenario.validate()?;
    let truth = scenario.initial_truth();
    let target = Target { id: 0, regions: scenario.initial_regions(&truth) };
    let Choices { policy, version, sampling } = choices;
    let config =
        Config { attrs: scenario.attrs, policy, version, seed, sampling, ..Config::default() };
    let mut ctx = Context::new(config, vec![target])?;
    let mut ops = SimOps::new(truth, seed);
    ctx.start(&mut ops)?;

    let mut events = scenario.events.clone();
    events.sort_by_key(|e| e.at);
    let mut events = events.into_iter().peekable();
    let mut watches: Vec<Watch> = Vec::new();
    let mut nr_regions = Vec::new();
    let mut changed = Areas::default();
    let (mut measured, mut regions_sum) = (0u64, 0u64);
    let (mut error, mut resolution, mut hot, mut changes) =
        (Mean::default(), Mean::default(), Mean::default(), Mean::default());
    let mut hot_covered_after = None;
    let mut warmup_end = None;
    // `now` is the start of the sample interval about to be checked.
    let mut now = 0;
    while now < scenario.duration.0 {
        while let Some(event) = events.next_if(|e| e.at.0 <= now) {
            for change in event.apply(&mut ops.truth) {
                let detection = Detection {
                    at: event.at,
                    start: Size(change.area.0),
                    end: Size(change.area.1),
                    probability: change.probability,
                    latency: None,
                };
                watches.push(Watch { detection, since: ctx.counters().aggregations });
                changed.add(change.area);
            }
        }
        if warmup_end.is_none() && now >= scenario.duration.0 / 10 {
            warmup_end = Some(*ctx.counters());
        }
        now += ctx.attrs().sample_us.max(1);
        let mut scored = None;
        ctx.step(&mut ops, |ctx, ops| {
            let samples = ctx.attrs().samples_per_aggr();
            let regions = &ctx.targets()[0].regions;
            let truth = &ops.truth;
            let hot = truth.coverage(regions, samples, DETECT_TOLERANCE, |s, e, p| {
                if p >= HOT { e - s } else { 0 }
            });
            let changes = (!changed.0.is_empty()).then(|| {
                truth.coverage(regions, samples, DETECT_TOLERANCE, |s, e, _| changed.overlap(s, e))
            });
            scored = Some(Score {
                regions: ctx.nr_regions(),
                error: truth.error(regions, samples),
                resolution: truth.resolution_error(regions),
                hot: share(hot),
                changes: changes.and_then(share),
            });
            let done = ctx.counters().aggregations + 1;
            for watch in watches.iter_mut().filter(|w| w.detection.latency.is_none()) {
                let d = &watch.detection;
                let area = (d.start.0, d.end.0);
                if describes(
                    regions,
                    samples,
                    area,
                    d.probability,
                    DETECT_TOLERANCE,
                    DETECT_COVERAGE,
                ) {
                    watch.detection.latency = Some(done - watch.since);
                }
            }
        })?;
        if let Some(score) = scored {
            nr_regions.push(score.regions as u32);
            if hot_covered_after.is_none() && score.hot.is_some_and(|h| h >= DETECT_COVERAGE) {
                hot_covered_after = Some(now as f64 / 1e6);
            }
            if warmup_end.is_some() {
                measured += 1;
                regions_sum += score.regions as u64;
                error.add(Some(score.error));
                resolution.add(Some(score.resolution));
                hot.add(score.hot);
            }
            changes.add(score.changes);
        }
    }
    let end = *ctx.counters();
    let start = warmup_end.unwrap_or(end);
    Ok(RunReport {
        scenario: scenario.name.clone(),
        policy,
        sampling,
        seed,
        runs: 1,
        max_nr_regions: scenario.attrs.max_nr_regions,
        aggregations: end.aggregations,
        warmup_aggregations: start.aggregations,
        effective_regions: regions_sum as f64 / measured.max(1) as f64,
        error: error.get().unwrap_or(0.0),
        resolution_error: resolution.get().unwrap_or(0.0),
        hot_coverage: hot.get(),
        hot_covered_after,
        changed_coverage: changes.get(),
        detections: watches.into_iter().map(|w| w.detection).collect(),
        splits: end.splits - start.splits,
        wasted_splits: end.wasted_splits - start.wasted_splits,
        cost: end.checks - start.checks,
        nr_regions,
    })
}

/// `runs` runs with consecutive seeds from `seed` (wrapping), summarised: means of the per-run metrics,
/// every run's detections, and the first run's `nr_regions` series.
pub fn run_many(scenario: &Scenario, choices: Choices, seed: u64, runs: u64) -> Result<RunReport> {
    // Seeds wrap past u64::MAX: any seed is a start.
    let reports: Vec<RunReport> = (0..runs.max(1))
        .map(|i| run(scenario, choices, seed.wrapping_add(i)))
        .collect::<Result<_>>()?;
    let n = reports.len() as f64;
    let mean = |f: fn(&RunReport) -> f64| reports.iter().map(f).sum::<f64>() / n;
    let mean_count =
        |f: fn(&RunReport) -> u64| (reports.iter().map(f).sum::<u64>() as f64 / n).round() as u64;
    let first = &reports[0];
    Ok(RunReport {
        runs: reports.len() as u64,
        effective_regions: mean(|r| r.effective_regions),
        error: mean(|r| r.error),
        resolution_error: mean(|r| r.resolution_error),
        hot_coverage: mean_of_some(&reports, |r| r.hot_coverage),
        hot_covered_after: reports
            .iter()
            .map(|r| r.hot_covered_after)
            .try_fold(0.0, |worst: f64, t| Some(worst.max(t?))),
        changed_coverage: mean_of_some(&reports, |r| r.changed_coverage),
        detections: reports.iter().flat_map(|r| r.detections.clone()).collect(),
        splits: mean_count(|r| r.splits),
        wasted_splits: mean_count(|r| r.wasted_splits),
        cost: mean_count(|r| r.cost),
        ..first.clone()
    })
}

/// The mean of the runs' `f`, `None` where a run has none.
fn mean_of_some(reports: &[RunReport], f: fn(&RunReport) -> Option<f64>) -> Option<f64> {
    let values: Option<Vec<f64>> = reports.iter().map(f).collect();
    values.map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
}

/// One aggregation's scores.
struct Score {
    regions: usize,
    error: f64,
    resolution: f64,
    hot: Option<f64>,
    changes: Option<f64>,
}

/// `described / total` of a coverage, `None` when there is nothing to cover.
fn share((described, total): (u64, u64)) -> Option<f64> {
    (total > 0).then(|| described as f64 / total as f64)
}

/// A running mean of the values present.
#[derive(Default)]
struct Mean(f64, u64);

impl Mean {
    fn add(&mut self, value: Option<f64>) {
        if let Some(v) = value {
            self.0 += v;
            self.1 += 1;
        }
    }

    fn get(&self) -> Option<f64> {
        (self.1 > 0).then(|| self.0 / self.1 as f64)
    }
}

/// A union of address ranges, sorted and disjoint.
#[derive(Default)]
struct Areas(Vec<(u64, u64)>);

impl Areas {
    fn add(&mut self, (start, end): (u64, u64)) {
        let (mut start, mut end) = (start, end);
        self.0.retain(|&(s, e)| {
            let apart = e < start || s > end;
            if !apart {
                (start, end) = (start.min(s), end.max(e));
            }
            apart
        });
        let at = self.0.partition_point(|&(s, _)| s < start);
        self.0.insert(at, (start, end));
    }

    /// Bytes of `[start, end)` inside the union.
    fn overlap(&self, start: u64, end: u64) -> u64 {
        let first = self.0.partition_point(|&(_, e)| e <= start);
        self.0[first..]
            .iter()
            .take_while(|&&(s, _)| s < end)
            .map(|&(s, e)| e.min(end) - s.max(start))
            .sum()
    }
}

/// Every policy on one scenario with the same seeds (`choices.policy` aside).
pub fn compare(
    scenario: &Scenario,
    choices: Choices,
    seed: u64,
    runs: u64,
) -> Result<Vec<RunReport>> {
    SplitPolicy::ALL
        .iter()
        .map(|&policy| run_many(scenario, Choices { policy, ..choices }, seed, runs))
        .collect()
}
