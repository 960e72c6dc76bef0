//! Gentle on the monitored process: memory the clear refuses (mlocked, hugetlb, PFN-mapped
//! `[vvar]`, memory locked while monitored) reads unknown, never ends the target, and leaves
//! the hot and cold areas beside it classified as well as without it.

use std::time::{Duration, Instant};

use damon_engine::Attrs;
use damon_user::{
    monitor::{Event, Monitor, MonitorConfig},
    snapshot::Snapshot,
    vaddr::VaddrOps,
};
use tests::{HugePages, Odd, OddChild};

/// The share of `area`'s bytes in regions of `pid` that satisfy `pred` (rate: accesses per
/// sample).
fn share(
    s: &Snapshot,
    pid: u32,
    (start, end): (u64, u64),
    pred: impl Fn(f64, bool) -> bool,
) -> f64 {
    let Some(t) = s.targets.iter().find(|t| t.pid == pid) else { return 0.0 };
    let covered: u64 = t
        .regions
        .iter()
        .filter(|r| pred(r.nr_accesses as f64 / s.samples as f64, r.unknown))
        .map(|r| r.end.min(end).saturating_sub(r.start.max(start)))
        .sum();
    covered as f64 / (end - start) as f64
}

fn hot(rate: f64, unknown: bool) -> bool {
    !unknown && rate >= 0.5
}

fn idle(rate: f64, unknown: bool) -> bool {
    !unknown && rate <= 0.1
}

fn unknown(_: f64, unknown: bool) -> bool {
    unknown
}

/// An expectation: this share of the area's bytes satisfies the predicate.
type Expect = (&'static str, (u64, u64), fn(f64, bool) -> bool);

/// Monitors `child` until every expectation has held for three aggregations in a row (at most
/// 60 s: emulated guests are slow), failing on an exit report or a problem. `from` delays the
/// checks (for memory that changes kind while monitored).
fn watch(child: &OddChild, expect: &[Expect], from: Duration) {
    let attrs = Attrs { ops_update_us: 1_000_000, ..Attrs::default() };
    let config =
        MonitorConfig { attrs, policy: Default::default(), version: Default::default(), seed: 1 };
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let ops = VaddrOps::load().expect("the data plane");
    let monitor = Monitor::start(config, ops, &[child.pid], tx, false).expect("monitor");
    let (started, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(60));
    let (mut streak, mut last) = (0, String::new());
    while streak < 3 {
        assert!(Instant::now() < deadline, "never classified as expected; last: {last}");
        let Ok(event) = events.try_recv() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        match event {
            Event::Snapshot(s) if started.elapsed() >= from => {
                let shares: Vec<f64> = expect
                    .iter()
                    .map(|(_, area, pred)| share(&s, child.pid, *area, pred))
                    .collect();
                last = expect
                    .iter()
                    .zip(&shares)
                    .map(|((name, ..), share)| format!("{name} {share:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                streak = if shares.iter().all(|&s| s >= 0.75) { streak + 1 } else { 0 };
            }
            Event::Snapshot(_) => {}
            Event::TargetExited(pid) => panic!("pid {pid} reported gone while alive"),
            Event::Problem(problem) => panic!("a problem reported: {problem:?}"),
            Event::TargetAdded(_)
            | Event::TargetLeft(_)
            | Event::TargetRefused(..)
            | Event::Flush => {
                panic!("an unasked target change")
            }
        }
    }
    monitor.join().expect("the sampler");
}

#[test]
fn plain_memory_is_classified() {
    if !damon_user::test_support::privileged("plain_memory_is_classified") {
        return;
    }
    let child = OddChild::spawn(Odd::default());
    watch(&child, &[("hot", child.hot, hot), ("cold", child.cold, idle)], Duration::ZERO);
}

#[test]
fn memory_the_clear_refuses_reads_unknown_beside_classified_memory() {
    if !damon_user::test_support::privileged(
        "memory_the_clear_refuses_reads_unknown_beside_classified_memory",
    ) {
        return;
    }
    let pages = HugePages::reserve(2);
    if pages.is_none() {
        assert!(!damon_user::test_support::in_ci(), "no huge pages for the hugetlb area under CI");
        eprintln!("note: no free huge pages here: testing without a hugetlb area");
    }
    let odd = Odd { locked: true, hugetlb: pages.is_some(), prot_none: true, ..Odd::default() };
    let child = OddChild::spawn(odd);
    let mut expect: Vec<Expect> = vec![
        ("hot", child.hot, hot),
        ("cold", child.cold, idle),
        ("locked", child.locked.unwrap(), unknown),
        // Nothing can touch it: truly idle, and the clear works there.
        ("PROT_NONE", child.prot_none.unwrap(), idle),
    ];
    if let Some(area) = child.hugetlb {
        expect.push(("hugetlb", area, unknown));
    }
    watch(&child, &expect, Duration::ZERO);
    drop(child);
    drop(pages);
}

#[test]
fn memory_locked_while_monitored_turns_unknown_without_a_problem() {
    if !damon_user::test_support::privileged(
        "memory_locked_while_monitored_turns_unknown_without_a_problem",
    ) {
        return;
    }
    let after = Duration::from_secs(1);
    let child = OddChild::spawn(Odd { lock_hot_after: Some(after), ..Odd::default() });
    watch(&child, &[("hot, locked", child.hot, unknown), ("cold", child.cold, idle)], after);
    let child =
        OddChild::spawn(Odd { lock_hot_after: Some(after), lock_all: true, ..Odd::default() });
    let expect: [Expect; 3] = [
        ("hot", child.hot, unknown),
        // Locked, but its accessed bits were clear: proven idle all the same.
        ("cold, locked by mlockall", child.cold, idle),
        ("mapped after mlockall(MCL_FUTURE)", child.late.unwrap(), unknown),
    ];
    watch(&child, &expect, after);
}
