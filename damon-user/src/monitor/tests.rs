//! The monitor without root: the sampler thread, target control and the target-gone path over
//! the simulator's operations.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use damon_engine::{
    Access, Attrs, Operations, Target,
    sim::{SimOps, truth::Truth},
};

use super::*;

const SIZE: u64 = 64 << 20;

/// Simulated processes: every pid maps the same 64 MiB, its first quarter hot; alive while in
/// `alive`; a pid in `broken` reports a problem every aggregation; one in `exited` is a zombie.
struct Simulated {
    ops: SimOps,
    alive: Arc<Mutex<HashSet<u32>>>,
    broken: HashSet<u32>,
    exited: HashSet<u32>,
    open: HashSet<u32>,
}

impl Simulated {
    fn new(alive: &[u32]) -> (Self, Arc<Mutex<HashSet<u32>>>) {
        Self::with_hot(alive, SIZE / 4)
    }

    /// The same with the first `hot` bytes hot.
    fn with_hot(alive: &[u32], hot: u64) -> (Self, Arc<Mutex<HashSet<u32>>>) {
        let mut truth = Truth::new(SIZE);
        truth.set(0, hot, 1.0);
        let alive = Arc::new(Mutex::new(alive.iter().copied().collect()));
        let ops = Self {
            ops: SimOps::new(truth, 1),
            alive: alive.clone(),
            broken: HashSet::new(),
            exited: HashSet::new(),
            open: HashSet::new(),
        };
        (ops, alive)
    }
}

impl Operations for Simulated {
    fn init(&mut self, _: &mut [Target]) -> anyhow::Result<()> {
        Ok(())
    }
    fn update(&mut self, _: &mut [Target]) -> anyhow::Result<()> {
        Ok(())
    }
    fn prepare_access_checks(&mut self, targets: &[Target], addrs: &[u64]) {
        self.ops.prepare_access_checks(targets, addrs);
    }
    fn check_accesses(&mut self, targets: &[Target], results: &mut [Access]) {
        self.ops.check_accesses(targets, results);
    }
    fn target_valid(&mut self, target: &Target) -> bool {
        self.alive.lock().unwrap().contains(&(target.id as u32))
    }
}

impl Source for Simulated {
    fn open(&mut self, pid: u32) -> Result<Target, TargetError> {
        if self.exited.contains(&pid) {
            return Err(TargetError::Exited(pid));
        }
        if !self.alive.lock().unwrap().contains(&pid) {
            return Err(TargetError::NoSuchProcess(pid));
        }
        self.open.insert(pid);
        Ok(Target::with_ranges(pid as u64, &[(0, SIZE)]))
    }
    fn close(&mut self, pid: u32) {
        self.open.remove(&pid);
    }
    fn problems(&mut self) -> Vec<Problem> {
        let broken = self.broken.iter().filter(|pid| self.open.contains(pid));
        broken
            .map(|&pid| Problem { pid, kind: "clear_refused", message: "refused".into(), count: 1 })
            .collect()
    }
}

fn config() -> MonitorConfig {
    let attrs = Attrs { sample_us: 1_000, aggr_us: 20_000, ..Attrs::default() };
    MonitorConfig { attrs, seed: 1, ..Default::default() }
}

/// Events until `done` says so (or 5 s pass).
fn collect(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while !done(&seen) && Instant::now() < deadline {
        match events.try_recv() {
            Ok(event) => seen.push(event),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    seen
}

fn snapshots(events: &[Event]) -> Vec<&Snapshot> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Snapshot(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn snapshots_come_on_the_ticks_schedule_with_real_window_times() {
    let (source, _) = Simulated::new(&[7]);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let monitor = Monitor::start(config(), source, &[7], tx, false).unwrap();
    let seen = collect(&mut events, |e| snapshots(e).len() >= 10);
    let summary = monitor.join().unwrap();
    let shots = snapshots(&seen);
    assert!(shots.len() >= 10, "{} snapshots", shots.len());
    for (i, s) in shots.iter().enumerate() {
        assert_eq!(s.aggregation, i as u64);
        assert_eq!(s.targets[0].pid, 7);
        // Windows end on the drift-free schedule (one after a late end is shorter), never
        // before it.
        let end = shots[0].started + Duration::from_millis(20 * (i as u64 + 1));
        assert!(s.elapsed + Duration::from_millis(1) >= end, "{s:?}");
        if i > 0 {
            assert_eq!(s.started, shots[i - 1].elapsed, "windows follow each other");
        }
    }
    // The hot quarter is seen hot, the rest idle.
    let last = shots.last().unwrap();
    let hot: u64 =
        last.targets[0].regions.iter().filter(|r| r.nr_accesses > 10).map(|r| r.size()).sum();
    assert!(hot.abs_diff(SIZE / 4) <= SIZE / 16, "{hot} bytes hot");
    assert!(summary.counters.samples >= 200 && summary.counters.aggregations >= 10);
    // Adaptive sampling checks each region as often as its rate needs: fewer checks than every
    // region every interval. (The region across the hot edge needs every interval.)
    let every = summary.counters.samples * config().attrs.min_nr_regions as u64;
    assert!(summary.counters.checks < every, "{summary:?}");
}

#[test]
fn idle_memory_is_slept_through() {
    let (source, _) = Simulated::with_hot(&[7], 0);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let monitor = Monitor::start(config(), source, &[7], tx, false).unwrap();
    collect(&mut events, |e| snapshots(e).len() >= 10);
    let summary = monitor.join().unwrap();
    // After the first window (every interval) every region is sampled quietly, in pairs: one
    // wake-up a window, at its end.
    let window = config().attrs.aggr_us / config().attrs.sample_us;
    assert!(summary.ticks <= window + summary.counters.aggregations, "{summary:?}");
}

#[test]
fn a_gone_target_is_reported_once_and_the_others_go_on() {
    let (source, alive) = Simulated::new(&[1, 2]);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let monitor = Monitor::start(config(), source, &[1, 2], tx, false).unwrap();
    collect(&mut events, |e| snapshots(e).len() >= 2);
    alive.lock().unwrap().remove(&1);
    let seen = collect(&mut events, |e| snapshots(e).len() >= 5);
    let gone: Vec<u32> = seen
        .iter()
        .filter_map(|e| if let Event::TargetExited(p) = e { Some(*p) } else { None })
        .collect();
    assert_eq!(gone, [1]);
    let last = snapshots(&seen).last().unwrap().targets.iter().map(|t| t.pid).collect::<Vec<_>>();
    assert_eq!(last, [2]);
    // The last target gone ends the sampler by itself.
    alive.lock().unwrap().remove(&2);
    let summary = monitor.join().unwrap();
    assert!(summary.counters.aggregations >= 5);
}

#[test]
fn a_target_gone_before_the_start_is_an_exit_and_the_others_go_on() {
    let (mut source, _) = Simulated::new(&[2]);
    source.exited.insert(1);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let monitor = Monitor::start(config(), source, &[1, 2], tx, false).unwrap();
    let seen = collect(&mut events, |e| snapshots(e).len() >= 2);
    monitor.join().unwrap();
    assert!(matches!(seen[0], Event::TargetExited(1)), "{seen:?}");
    assert!(snapshots(&seen).iter().all(|s| s.targets.iter().map(|t| t.pid).eq([2])));
    // With none left the sampler ends by itself.
    let (mut source, _) = Simulated::new(&[]);
    source.exited.insert(1);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let monitor = Monitor::start(config(), source, &[1], tx, false).unwrap();
    assert_eq!(monitor.join().unwrap().counters.aggregations, 0);
    assert!(matches!(events.try_recv(), Ok(Event::TargetExited(1))));
}

#[test]
fn targets_are_added_and_removed_at_aggregations_and_refusals_reported() {
    let (source, alive) = Simulated::new(&[1]);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let monitor = Monitor::start(config(), source, &[], tx, true).unwrap();
    let control = monitor.control();
    control.send(Control::Add(1)).unwrap();
    control.send(Control::Add(99)).unwrap(); // no such process
    let seen = collect(&mut events, |e| e.iter().any(|e| matches!(e, Event::TargetRefused(..))));
    assert!(seen.iter().any(|e| matches!(e, Event::TargetAdded(1))));
    let refused = seen.iter().find_map(|e| match e {
        Event::TargetRefused(pid, why) => Some((*pid, why.to_string())),
        _ => None,
    });
    assert_eq!(refused, Some((99, "no process with pid 99".into())));
    control.send(Control::Remove(1)).unwrap();
    let seen = collect(&mut events, |e| e.iter().any(|e| matches!(e, Event::TargetLeft(1))));
    assert!(seen.iter().any(|e| matches!(e, Event::TargetLeft(1))));
    // Following a group, the sampler stays up with no target at all.
    let later = collect(&mut events, |e| snapshots(e).len() >= 2);
    assert!(snapshots(&later).iter().all(|s| s.targets.is_empty()));
    drop(alive);
    monitor.join().unwrap();
}

#[test]
fn problems_are_reported_without_ending_the_target() {
    let (mut source, _) = Simulated::new(&[3]);
    source.broken.insert(3);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let monitor = Monitor::start(config(), source, &[3], tx, false).unwrap();
    let seen = collect(&mut events, |e| snapshots(e).len() >= 5);
    monitor.join().unwrap();
    let problems = seen.iter().filter(|e| matches!(e, Event::Problem(p) if p.pid == 3)).count();
    assert!(problems >= 4, "{problems} problems reported");
    assert!(!seen.iter().any(|e| matches!(e, Event::TargetExited(_) | Event::TargetLeft(_))));
    assert!(snapshots(&seen).iter().all(|s| s.targets.len() == 1));
}
