use anyhow::Result;

use super::*;
use crate::{Access, Attrs, Config, Context, Sampling};

const MIB: u64 = 1 << 20;

/// 64 MiB whose first half is always accessed and second half never; records what schemes
/// asked for, and answers the metrics it is given.
#[derive(Default)]
struct Half {
    applied: Vec<(u64, u64, Action)>,
    free_permil: Option<u64>,
    psi_total: u64,
}

impl Operations for Half {
    fn init(&mut self, targets: &mut [Target]) -> Result<()> {
        for t in targets.iter_mut().filter(|t| t.regions.is_empty()) {
            t.regions.push(Region::new(0, 64 * MIB));
        }
        Ok(())
    }
    fn update(&mut self, _: &mut [Target]) -> Result<()> {
        Ok(())
    }
    fn prepare_access_checks(&mut self, _: &[Target], _: &[u64]) {}
    fn check_accesses(&mut self, targets: &[Target], results: &mut [Access]) {
        let regions = targets.iter().flat_map(|t| &t.regions);
        for (slot, r) in results.iter_mut().zip(regions) {
            if *slot != Access::NotChecked {
                *slot = if r.sampling_addr < 32 * MIB { Access::Accessed } else { Access::Idle };
            }
        }
    }
    fn target_valid(&mut self, _: &Target) -> bool {
        true
    }
    fn apply_scheme(
        &mut self,
        _: &Target,
        range: (u64, u64),
        scheme: &Scheme,
        filters: &[&Filter],
    ) -> Applied {
        // One operations filter is understood: reject anon, which is all of the first 16 MiB.
        let bytes = if filters.is_empty() {
            range.1 - range.0
        } else {
            range.1.saturating_sub(range.0.max(16 * MIB))
        };
        self.applied.push((range.0, range.1, scheme.action));
        Applied { tried: range.1 - range.0, passed: bytes, applied: bytes }
    }
    fn metric(&mut self, metric: &Metric) -> Option<u64> {
        (*metric == Metric::SomeMemPsiUs).then_some(self.psi_total)
    }
    fn free_mem_permil(&mut self) -> Option<u64> {
        self.free_permil
    }
}

fn context(schemes: Vec<Scheme>) -> (Context, Half) {
    let config = Config { sampling: Sampling::Every, seed: 1, ..Config::default() };
    let mut ctx = Context::new(config, vec![Target::new(1)]).unwrap();
    ctx.set_schemes(schemes).unwrap();
    let mut ops = Half::default();
    ctx.start(&mut ops).unwrap();
    (ctx, ops)
}

fn aggregations(ctx: &mut Context, ops: &mut Half, n: usize) {
    let samples = Attrs::default().aggr_in_samples();
    for _ in 0..n as u64 * samples {
        ctx.step(ops, |_, _| {}).unwrap();
    }
}

/// What `apply` sees at `now_us` with default attributes.
fn env_at(now_us: u64) -> Env {
    Env { now_us, aggr_us: 100_000, samples: 20, window: 20, min_region_sz: 4096, page: 4096 }
}

fn idle(min_age_us: u64) -> AccessPattern {
    AccessPattern { max_nr_accesses: 0, min_age_us, ..AccessPattern::default() }
}

#[test]
fn a_scheme_acts_on_the_regions_matching_its_pattern_and_resets_their_age() {
    let (mut ctx, mut ops) = context(vec![Scheme::new(idle(500_000), Action::Pageout)]);
    aggregations(&mut ctx, &mut ops, 4);
    assert!(ops.applied.is_empty(), "nothing is 500 ms old yet");
    aggregations(&mut ctx, &mut ops, 4);
    assert!(!ops.applied.is_empty());
    assert!(ops.applied.iter().all(|&(start, _, a)| start >= 32 * MIB && a == Action::Pageout));
    let status = ctx.scheme_status()[0];
    assert_eq!(status.stats.sz_tried, status.stats.sz_applied);
    assert_eq!(status.effective_quota, None);
    // Acting made the regions young again: applied to each about every 6 aggregations.
    let idle_regions = ctx.targets()[0].regions.iter().filter(|r| r.start >= 32 * MIB);
    assert!(idle_regions.clone().all(|r| r.age < 6), "{:?}", ctx.targets()[0].regions);
}

#[test]
fn the_size_quota_caps_each_interval_and_the_next_goes_on_where_it_stopped() {
    let mut scheme = Scheme::new(idle(0), Action::Pageout);
    scheme.quota = Quota { sz: 4 * MIB, reset_interval_ms: 100, ..Quota::default() };
    let (mut ctx, mut ops) = context(vec![scheme]);
    aggregations(&mut ctx, &mut ops, 1);
    let first: u64 = ops.applied.iter().map(|a| a.1 - a.0).sum();
    assert_eq!(first, 4 * MIB, "{:?}", ops.applied);
    // Eight intervals of 4 MiB go through the 32 idle MiB once, each where the last stopped.
    aggregations(&mut ctx, &mut ops, 7);
    let mut ranges: Vec<(u64, u64)> = ops.applied.iter().map(|a| (a.0, a.1)).collect();
    ranges.sort_unstable();
    assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0), "{ranges:?}");
    // (The region holding 32 MiB saw accesses in its first window.)
    assert!(ranges[0].0 < 33 * MIB && ranges.last().unwrap().1 == 64 * MIB, "{ranges:?}");
    // Then round again from the start.
    ops.applied.clear();
    aggregations(&mut ctx, &mut ops, 2);
    assert!(ops.applied[0].0 < 33 * MIB, "{:?}", ops.applied);
    let status = ctx.scheme_status()[0];
    // Ten intervals, the one that reached the end a little short.
    assert!((39 * MIB..=40 * MIB).contains(&status.stats.sz_tried), "{status:?}");
    assert_eq!(status.effective_quota, Some(4 * MIB));
    assert_eq!(status.stats.qt_exceeds, 8, "every interval but that and the running one");
}

#[test]
fn under_a_quota_the_oldest_idle_memory_goes_first() {
    let mut scheme = Scheme::new(idle(0), Action::Pageout);
    scheme.quota =
        Quota { sz: 16 * MIB, reset_interval_ms: 1000, weight_age: 1, ..Quota::default() };
    let mut schemes = vec![Running::new(scheme)];
    let region = |start: u64, age| Region { age, ..Region::new(start * MIB, (start + 16) * MIB) };
    let mut targets = vec![Target::new(1)];
    targets[0].regions = vec![region(0, 10), region(16, 1000), region(32, 100)];
    let mut ops = Half::default();
    apply(&mut schemes, &mut targets, &mut ops, &env_at(0));
    assert_eq!(ops.applied, vec![(16 * MIB, 32 * MIB, Action::Pageout)], "the oldest first");
    ops.applied.clear();
    apply(&mut schemes, &mut targets, &mut ops, &env_at(1_000_000));
    assert_eq!(ops.applied, vec![(32 * MIB, 48 * MIB, Action::Pageout)], "then the next oldest");
}

#[test]
fn address_filters_cut_regions_and_operations_filters_go_to_the_operations() {
    let mut scheme = Scheme::new(AccessPattern::default(), Action::Cold);
    // Memory outside 10..20 MiB is rejected; inside, the operations reject anon memory.
    scheme.filters = vec![
        Filter { kind: FilterKind::Addr(10 * MIB, 20 * MIB), matching: false, allow: false },
        Filter { kind: FilterKind::Anon, matching: true, allow: false },
    ];
    let (mut ctx, mut ops) = context(vec![scheme]);
    aggregations(&mut ctx, &mut ops, 1);
    let bytes: u64 = ops.applied.iter().map(|a| a.1 - a.0).sum();
    assert_eq!(bytes, 10 * MIB, "{:?}", ops.applied);
    assert!(ops.applied.iter().all(|&(s, e, _)| s >= 10 * MIB && e <= 20 * MIB));
    let stats = ctx.scheme_status()[0].stats;
    assert_eq!((stats.sz_tried, stats.sz_ops_filter_passed), (10 * MIB, 4 * MIB));
}

#[test]
fn watermarks_hold_a_scheme_off_and_pause_monitoring() {
    let mut scheme = Scheme::new(idle(0), Action::Pageout);
    scheme.wmarks = Watermarks {
        metric: Some(WmarkMetric::FreeMemRate),
        interval_us: 1_000_000,
        high: 500,
        mid: 400,
        low: 200,
    };
    let (mut ctx, mut ops) = context(vec![scheme]);
    ops.free_permil = Some(800);
    aggregations(&mut ctx, &mut ops, 1);
    assert!(ops.applied.is_empty() && !ctx.scheme_status()[0].active);
    let pause = ctx.pause_us().expect("every scheme is off: pause");
    assert!(pause <= 1_000_000);
    ops.free_permil = Some(300);
    assert!(ctx.resume_after(&mut ops, pause), "under the middle mark: on again");
    assert_eq!(ctx.pause_us(), None);
    aggregations(&mut ctx, &mut ops, 1);
    assert!(!ops.applied.is_empty());
}

#[test]
fn a_pressure_goal_shrinks_the_quota_when_stalls_exceed_it() {
    let mut scheme = Scheme::new(idle(0), Action::Pageout);
    scheme.quota = Quota {
        sz: 64 * MIB,
        reset_interval_ms: 100,
        goals: vec![Goal::new(Metric::SomeMemPsiUs, 1000, 0)],
        ..Quota::default()
    };
    let (mut ctx, mut ops) = context(vec![scheme]);
    // No stall at all: the feedback raises the quota from its minimum, interval by interval.
    let mut esz = Vec::new();
    for _ in 0..12 {
        aggregations(&mut ctx, &mut ops, 1);
        esz.push(ctx.scheme_status()[0].effective_quota.unwrap());
    }
    assert!(esz.windows(2).all(|w| w[1] >= w[0]) && esz[11] > esz[0], "{esz:?}");
    // Stalls of 3 ms per interval, thrice the goal: down to the minimum.
    for _ in 0..3 {
        ops.psi_total += 3000;
        aggregations(&mut ctx, &mut ops, 1);
    }
    assert_eq!(ctx.scheme_status()[0].effective_quota, Some(1));
}

#[test]
fn bad_schemes_are_refused_with_their_index() {
    let config = Config::default();
    let mut ctx = Context::new(config, vec![Target::new(1)]).unwrap();
    let mut bad = Scheme::new(
        AccessPattern { min_sz: 2, max_sz: 1, ..AccessPattern::default() },
        Action::Stat,
    );
    let err =
        ctx.set_schemes(vec![Scheme::new(AccessPattern::default(), Action::Stat), bad.clone()]);
    assert_eq!(
        err.unwrap_err().to_string(),
        "scheme 1: the access pattern's minimum exceeds its maximum"
    );
    bad.pattern = AccessPattern::default();
    bad.quota.goals = vec![Goal::new(Metric::UserInput, 0, 0)];
    assert!(ctx.set_schemes(vec![bad]).unwrap_err().to_string().contains("target of 0"));
    assert_eq!("migrate_hot".parse::<Action>().unwrap(), Action::MigrateHot);
    assert!(
        "evict".parse::<Action>().unwrap_err().to_string().starts_with("unknown action `evict`")
    );
}

#[test]
fn memory_an_address_filter_allows_skips_the_page_filters() {
    let mut scheme = Scheme::new(AccessPattern::default(), Action::Cold);
    scheme.filters = vec![
        Filter { kind: FilterKind::Addr(10 * MIB, 20 * MIB), matching: true, allow: true },
        Filter { kind: FilterKind::Anon, matching: true, allow: false },
    ];
    let (mut ctx, mut ops) = context(vec![scheme]);
    aggregations(&mut ctx, &mut ops, 1);
    let stats = ctx.scheme_status()[0].stats;
    // 10..20 MiB whole (allowed by address); elsewhere the page filter passes 20..64 MiB.
    assert_eq!((stats.sz_tried, stats.sz_ops_filter_passed), (64 * MIB, 10 * MIB + 44 * MIB));
}

#[test]
fn target_filters_number_targets_in_the_order_first_seen() {
    let mut scheme = Scheme::new(AccessPattern::default(), Action::Cold);
    scheme.filters = vec![Filter { kind: FilterKind::Target(1), matching: true, allow: false }];
    let mut schemes = vec![Running::new(scheme)];
    let target = |id: u64| Target::with_ranges(id, &[(id * 16 * MIB, (id + 1) * 16 * MIB)]);
    let mut targets = vec![target(0), target(1), target(2)];
    let mut ops = Half::default();
    let env = env_at(0);
    apply(&mut schemes, &mut targets, &mut ops, &env);
    let starts = |ops: &Half| ops.applied.iter().map(|a| a.0 / (16 * MIB)).collect::<Vec<_>>();
    assert_eq!(starts(&ops), [0, 2], "the second target is spared");
    // The first exits: the one spared is still the second seen, not the second left.
    targets.remove(0);
    ops.applied.clear();
    apply(&mut schemes, &mut targets, &mut ops, &env);
    assert_eq!(starts(&ops), [2]);
}

#[test]
fn a_time_quota_never_shrinks_to_nothing() {
    let mut charge = quota::Charge::new();
    // Work that took time but passed no filter: a throughput of 0 bytes per ms.
    charge.total_charged_ns = 5_000_000;
    charge.set_effective(&Quota { time_ms: 10, ..Quota::default() }, 4096);
    assert_eq!(charge.esz, 4096, "one page at least, so the quota is used and measured again");
}

#[test]
fn regions_whose_samples_all_read_unknown_are_not_idle_to_a_scheme() {
    let mut schemes = vec![Running::new(Scheme::new(idle(0), Action::Pageout))];
    let mut targets = vec![Target::with_ranges(1, &[(0, 16 * MIB), (16 * MIB, 32 * MIB)])];
    // The first region's every sample read unknown (0 accesses, not idle).
    targets[0].regions[0].unknown = 20;
    let mut ops = Half::default();
    let env = env_at(0);
    apply(&mut schemes, &mut targets, &mut ops, &env);
    assert_eq!(ops.applied, [(16 * MIB, 32 * MIB, Action::Pageout)]);
}
