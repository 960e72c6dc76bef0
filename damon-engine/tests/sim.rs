//! The simulator's expectations: the production report reproduced within tolerance, and the
//! claims docs/design.md makes about the policies. Runs in release (`cargo xtask test`) in seconds.

use damon_engine::{
    SplitPolicy,
    sim::{self, Choices, RunReport, builtin},
};

fn run(scenario: &str, policy: SplitPolicy, seed: u64) -> RunReport {
    let choices = Choices { policy, ..Choices::default() };
    sim::run(&builtin::get(scenario).unwrap(), choices, seed).unwrap()
}

/// Mean nr_regions over the last ten simulated minutes (600 aggregations of 1 s).
fn settled(report: &RunReport) -> f64 {
    let tail = &report.nr_regions[report.nr_regions.len() - 600..];
    tail.iter().map(|&n| n as f64).sum::<f64>() / tail.len() as f64
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let a = serde_json::to_string(&run("stairs", SplitPolicy::Adaptive, 5)).unwrap();
    let b = serde_json::to_string(&run("stairs", SplitPolicy::Adaptive, 5)).unwrap();
    let c = serde_json::to_string(&run("stairs", SplitPolicy::Adaptive, 6)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// The report: after an hour at max 200, kernels up to 7.2 sit at about max/2 and the age-zero
/// proposal at 160-180. The model gives age-zero 157-162 over seeds (docs/design.md); the band allows 10
/// below the report's range for that.
#[test]
fn seed_reproducer_matches_the_production_report() {
    for seed in [1, 2] {
        let legacy = settled(&run("seed-reproducer", SplitPolicy::Legacy, seed));
        assert!((95.0..=120.0).contains(&legacy), "legacy settled at {legacy} (seed {seed})");
        let age_zero = settled(&run("seed-reproducer", SplitPolicy::AgeZero, seed));
        assert!(
            (150.0..=180.0).contains(&age_zero),
            "age-zero settled at {age_zero} (seed {seed})"
        );
    }
}

#[test]
fn seed_reproducer_adaptive_is_more_accurate_at_no_more_cost() {
    let reports: Vec<RunReport> =
        SplitPolicy::ALL.iter().map(|&p| run("seed-reproducer", p, 1)).collect();
    let [legacy, age_zero, fraction, adaptive] = &reports[..] else { unreachable!() };
    let best_other = legacy.error.min(age_zero.error).min(fraction.error);
    assert!(
        adaptive.error < 0.8 * best_other,
        "adaptive {} vs best other {best_other}",
        adaptive.error
    );
    assert!(adaptive.cost as f64 <= 1.05 * age_zero.cost.max(fraction.cost) as f64);
    assert!(adaptive.wasted_splits * 20 < fraction.wasted_splits.min(age_zero.wasted_splits));
    assert!(adaptive.nr_regions.iter().all(|&n| n <= 200), "never over max_nr_regions");
}

#[test]
fn seed_corner_legacy_never_sees_the_cold_area_the_others_do() {
    let reports: Vec<RunReport> =
        SplitPolicy::ALL.iter().map(|&p| run("seed-corner", p, 1)).collect();
    let latency = |r: &RunReport| r.detections[0].latency;
    assert_eq!(latency(&reports[0]), None, "legacy must stay blind above max/2");
    for r in &reports[1..] {
        let l = latency(r).unwrap_or_else(|| panic!("{:?} never detected the cold area", r.policy));
        assert!(l <= 40, "{:?} took {l} aggregations", r.policy);
    }
    let (fraction, adaptive) = (&reports[2], &reports[3]);
    assert!(
        adaptive.cost < fraction.cost * 2 / 3,
        "adaptive checks {} vs {}",
        adaptive.cost,
        fraction.cost
    );
    assert!(adaptive.wasted_splits * 50 < fraction.wasted_splits);
}

#[test]
fn stairs_adaptive_follows_every_step() {
    let adaptive = run("stairs", SplitPolicy::Adaptive, 1);
    assert!(
        adaptive.detections.iter().all(|d| d.latency.is_some_and(|l| l <= 20)),
        "{:?}",
        adaptive.detections
    );
    let fraction = run("stairs", SplitPolicy::Fraction, 1);
    assert!(
        fraction.detections.iter().any(|d| d.latency.is_none()),
        "the comparison would be moot"
    );
}

/// Means over five seeds of every policy on `scenario`.
fn compare(scenario: &str) -> Vec<RunReport> {
    sim::compare(&builtin::get(scenario).unwrap(), Choices::default(), 1, 5).unwrap()
}

fn of(reports: &[RunReport], policy: SplitPolicy) -> &RunReport {
    reports.iter().find(|r| r.policy == policy).unwrap()
}

/// Flat memory needs no more regions than the minimum: the default spends at least 3x fewer
/// checks than legacy (about 35x in docs/benchmarks.md), at no more error.
#[test]
fn flat_memory_costs_the_default_a_third_of_legacy_at_most() {
    let reports = compare("flat");
    let (legacy, adaptive) =
        (of(&reports, SplitPolicy::Legacy), of(&reports, SplitPolicy::Adaptive));
    assert!(adaptive.cost * 3 <= legacy.cost, "{} vs legacy {}", adaptive.cost, legacy.cost);
    assert!(adaptive.error <= legacy.error + 0.002, "{} vs {}", adaptive.error, legacy.error);
}

/// 300 hot 2 MiB spots in 30 GiB: the default covers 90 % of their bytes within two simulated
/// minutes in every seed (about 20 s in docs/benchmarks.md); the kernel's policies never do.
#[test]
fn sparse_spots_are_found_by_the_default_only() {
    let reports = compare("sparse-spots");
    for r in &reports {
        if r.policy == SplitPolicy::Adaptive {
            let at = r.hot_covered_after.expect("every seed reaches 90 %");
            assert!(at <= 120.0, "90 % after {at} s");
            assert!(r.hot_coverage.unwrap() >= 0.9, "{:?}", r.hot_coverage);
        } else {
            assert!(r.hot_coverage.unwrap() < 0.2, "{}: {:?}", r.policy, r.hot_coverage);
        }
    }
}

/// The default's boundaries describe every scenario at least as well as any other policy's
/// (a margin of 0.002 for seed noise; the hour-long seed-reproducer is covered above).
#[test]
fn the_default_has_the_lowest_resolution_error() {
    let scenarios = [
        "flat",
        "sparse-spots",
        "seed-corner",
        "stairs",
        "needle",
        "phases",
        "mixed-spots",
        "gradient",
    ];
    for scenario in scenarios {
        let reports = compare(scenario);
        let adaptive = of(&reports, SplitPolicy::Adaptive).resolution_error;
        for r in &reports {
            assert!(
                adaptive <= r.resolution_error + 0.002,
                "{scenario}: adaptive {adaptive} vs {} {}",
                r.policy,
                r.resolution_error
            );
        }
    }
}

/// Two working sets taking turns every 10 s: the default sees every turn within a few
/// aggregations (max 12 over five seeds in docs/benchmarks.md), legacy misses some; and it
/// does not chase the first hits in the set gone nearly idle (it took 2.5× legacy's checks
/// while it did; now about as many).
#[test]
fn phases_are_followed_at_least_as_fast_as_legacy() {
    let reports = compare("phases");
    let worst = |r: &RunReport| r.detections.iter().map(|d| d.latency.unwrap_or(u64::MAX)).max();
    let (legacy, adaptive) =
        (of(&reports, SplitPolicy::Legacy), of(&reports, SplitPolicy::Adaptive));
    let worst_adaptive = worst(adaptive).unwrap();
    assert!(worst_adaptive <= 20, "a phase took {worst_adaptive} aggregations");
    assert!(worst_adaptive <= worst(legacy).unwrap());
    assert!(adaptive.cost * 4 <= legacy.cost * 5, "{} vs {} checks", adaptive.cost, legacy.cost);
}

/// A gradient finer than the regions can follow step by step: the default spends its spare
/// regions where the rate slopes, for boundaries at least as good as legacy's random cuts at
/// no more checks (docs/benchmarks.md: resolution error 0.0147 vs 0.0154, 0.76 M vs 1.02 M).
#[test]
fn a_gradient_is_followed_by_slopes() {
    let reports = compare("gradient");
    let (legacy, adaptive) =
        (of(&reports, SplitPolicy::Legacy), of(&reports, SplitPolicy::Adaptive));
    let (a, l) = (adaptive.resolution_error, legacy.resolution_error);
    assert!(a <= l, "resolution error {a} vs legacy's {l}");
    assert!(adaptive.cost <= legacy.cost, "{} vs {} checks", adaptive.cost, legacy.cost);
}

/// Spots of every size and density: the default covers 90 % of their hot bytes within two
/// simulated minutes; the kernel's policies stay near two thirds.
#[test]
fn mixed_spots_are_covered_by_the_default() {
    let reports = compare("mixed-spots");
    let adaptive = of(&reports, SplitPolicy::Adaptive);
    let at = adaptive.hot_covered_after;
    assert!(at.is_some_and(|at| at <= 120.0), "90 % after {at:?} s");
    let legacy = of(&reports, SplitPolicy::Legacy);
    assert!(legacy.hot_coverage.unwrap() < 0.8, "{:?}", legacy.hot_coverage);
}
