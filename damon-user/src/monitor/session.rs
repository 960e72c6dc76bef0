//! One monitoring run for `monitor`, `record` and `demo`: the data plane, the sampler,
//! page-fault hints, cgroup membership, the metrics endpoint, and the end (duration,
//! SIGINT/SIGTERM/SIGHUP, every target gone, or the cgroup removed), with each event handed to
//! the caller; SIGUSR1 asks the caller to write out what it keeps (`Event::Flush`).

use std::{
    collections::HashSet,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::anyhow;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::SignalKind,
    sync::mpsc,
};

use super::{Control, Event, Monitor, MonitorConfig, Summary, TargetError, command::Started};
use crate::{
    check,
    dataplane::{DataPlane, FaultStream},
    output::metrics::{Metrics, server},
    sys::{cgroup::Cgroup, signals},
    vaddr::VaddrOps,
};

/// Why a session could not run or ended badly.
#[derive(Debug)]
pub enum SessionError {
    /// What was asked cannot be done: a target that cannot be monitored, a taken address.
    Input(anyhow::Error),
    /// Something failed while working: privileges, the data plane, the sampler, an output.
    Runtime(anyhow::Error),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Input(err) | Self::Runtime(err) => write!(f, "{err:#}"),
        }
    }
}

impl std::error::Error for SessionError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Duration,
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
    /// Every target exited.
    TargetsGone,
    /// The cgroup followed was removed: an end nobody planned.
    CgroupRemoved,
}

/// What to monitor: processes by pid, or every process of a cgroup as they come and go.
pub enum Targets {
    Pids(Vec<u32>),
    Cgroup(Cgroup),
    /// A command (program and arguments) to start once monitoring can begin, and follow.
    Command(Vec<String>),
}

/// How a session ended: its summary, why, and the command it started (to read its status).
pub struct Ran {
    pub summary: Summary,
    pub ended: Ended,
    pub command: Option<Started>,
}

/// Monitors `targets` until the end, calling `on_event` for each snapshot, target change and
/// problem (an error it returns ends the session); serves metrics on `metrics` if given. A
/// command is started after the data plane loads, so a short one is not gone before the
/// sampler opens it.
pub async fn run(
    config: MonitorConfig,
    targets: &Targets,
    duration: Option<Duration>,
    metrics: Option<SocketAddr>,
    mut on_event: impl FnMut(Event) -> anyhow::Result<()>,
) -> Result<Ran, SessionError> {
    // Caught from the start, but held back until the sampler runs (see `signals`): one during
    // start-up is handled once the run begins.
    let signal =
        |kind| tokio::signal::unix::signal(kind).map_err(|e| SessionError::Runtime(e.into()));
    let (mut interrupt, mut terminate, mut hangup, mut flush) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
        signal(SignalKind::hangup())?,
        signal(SignalKind::user_defined1())?,
    );
    let held = signals::Held::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1]);
    check::require_monitoring().map_err(SessionError::Runtime)?;
    // A cgroup's members join through the first membership check, one by one: one that exits
    // meanwhile (or cannot be monitored) is refused alone instead of failing the start.
    let cgroup = match targets {
        Targets::Cgroup(cgroup) => Some(cgroup),
        Targets::Pids(_) | Targets::Command(_) => None,
    };
    let shared = match metrics {
        Some(addr) => {
            let shared = Arc::new(Mutex::new(Metrics::new(cgroup.map_or("", |c| c.name()))));
            let bound = server::serve(addr, shared.clone()).await.map_err(SessionError::Input)?;
            say!("udamon: metrics on http://{bound}/metrics");
            Some(shared)
        }
        None => None,
    };
    let (walker, faults) =
        DataPlane::load().and_then(|plane| plane.start(true)).map_err(SessionError::Runtime)?;
    let (pids, command) = match targets {
        Targets::Pids(pids) => (pids.clone(), None),
        Targets::Cgroup(_) => (Vec::new(), None),
        Targets::Command(command) => {
            let [program, args @ ..] = &command[..] else {
                return Err(SessionError::Input(anyhow!("an empty command")));
            };
            let started = Started::spawn(program, args)
                .map_err(|err| SessionError::Input(anyhow!("cannot run `{program}`: {err}")))?;
            (vec![started.pid()], Some(started))
        }
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let ops = VaddrOps::new(walker).with_backoff(config.reclaim_backoff);
    let update_every = Duration::from_micros(config.attrs.ops_update_us);
    let monitor =
        Monitor::start(config, ops, &pids, events_tx, cgroup.is_some()).map_err(|err| {
            match err.downcast_ref::<TargetError>() {
                Some(target) if target.is_input() => SessionError::Input(err),
                _ => SessionError::Runtime(err),
            }
        })?;
    drop(held);
    // Only now: a target that cannot be monitored is the one line to say.
    let mut faults = faults.and_then(|stream| watch_faults(stream, &pids));
    // The duration counts from the sampler's start, not from whatever start-up follows.
    let end = tokio::time::sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(end);
    let fault_feed = monitor.faults();
    let control = monitor.control();
    let mut members = Members { requested: pids.iter().copied().collect(), ..Members::default() };
    let mut membership = tokio::time::interval(update_every);
    // Whether the last membership read failed (said once, until one succeeds again).
    let mut unreadable = false;
    let mut output = Ok(());
    let ended = loop {
        let event = tokio::select! {
            _ = &mut end => break Ended::Duration,
            _ = interrupt.recv() => break Ended::Signal,
            _ = terminate.recv() => break Ended::Signal,
            _ = hangup.recv() => break Ended::Signal,
            _ = flush.recv() => Event::Flush,
            event = events.recv() => match event {
                Some(event) => event,
                // The sampler ended: every target gone, or an error (join says which).
                None => break Ended::TargetsGone,
            },
            _ = membership.tick(), if cgroup.is_some() => {
                let Some(group) = cgroup else { continue };
                match group.procs() {
                    Ok(now) => {
                        unreadable = false;
                        for change in members.changes(&now) {
                            let _ = control.send(change);
                        }
                    }
                    Err(err) if removed(&err) => break Ended::CgroupRemoved,
                    // Descriptors run out (EMFILE), say: the members stay as they were.
                    Err(err) => {
                        if !std::mem::replace(&mut unreadable, true) {
                            say!("udamon: {err:#}; following its members as last read");
                        }
                    }
                }
                continue;
            }
            _ = async {
                match faults.as_mut() {
                    Some(stream) => forward_faults(stream, &fault_feed).await,
                    None => std::future::pending().await,
                }
            } => continue,
        };
        if observe(&event, shared.as_ref(), faults.as_mut(), &mut members) {
            output = on_event(event);
        }
        // The caller's error ends the run; it is returned below.
        if output.is_err() {
            break Ended::Signal;
        }
    };
    monitor.stop();
    while let Ok(event) = events.try_recv() {
        if observe(&event, shared.as_ref(), faults.as_mut(), &mut members) && output.is_ok() {
            output = on_event(event);
        }
    }
    let summary = monitor.join().map_err(SessionError::Runtime)?;
    output.map_err(SessionError::Runtime)?;
    Ok(Ran { summary, ended, command })
}

/// Whether a failed read of a group's members says the group is gone.
fn removed(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// The processes asked for, those that cannot be monitored (not asked for again while they stay
/// in the group), those that failed to open for a passing reason (asked for again, said once),
/// and the problems already reported (each once per target).
#[derive(Default)]
struct Members {
    requested: HashSet<u32>,
    refused: HashSet<u32>,
    failing: HashSet<u32>,
    reported: HashSet<(u32, &'static str)>,
}

impl Members {
    /// What to change so that the targets follow `now`, the group's processes.
    fn changes(&mut self, now: &[u32]) -> Vec<Control> {
        let now: HashSet<u32> = now.iter().copied().collect();
        self.refused.retain(|pid| now.contains(pid));
        self.failing.retain(|pid| now.contains(pid));
        let mut changes = Vec::new();
        for &pid in now.difference(&self.requested) {
            if !self.refused.contains(&pid) {
                changes.push(Control::Add(pid));
            }
        }
        for &pid in self.requested.difference(&now) {
            changes.push(Control::Remove(pid));
        }
        self.requested = now.difference(&self.refused).copied().collect();
        changes
    }
}

/// Keeps the metrics, the fault filter and the membership in step with the sampler's events;
/// whether the caller should see the event (a problem already reported is only counted).
fn observe(
    event: &Event,
    metrics: Option<&server::Shared>,
    faults: Option<&mut AsyncFd<FaultStream>>,
    members: &mut Members,
) -> bool {
    let with_metrics = |f: &dyn Fn(&mut Metrics)| {
        if let Some(Ok(mut m)) = metrics.map(|m| m.lock()) {
            f(&mut m);
        }
    };
    match event {
        Event::Snapshot(s) => {
            // Read only for the metrics: a map lookup per aggregation otherwise wasted.
            if metrics.is_some() {
                let lost = faults.as_ref().and_then(|f| f.get_ref().lost().ok()).unwrap_or(0);
                with_metrics(&|m| m.update(s, lost));
            }
        }
        Event::TargetExited(pid) | Event::TargetLeft(pid) => {
            members.requested.remove(pid);
            members.reported.retain(|r| r.0 != *pid);
            with_metrics(&|m| m.remove(*pid));
            if let Some(f) = faults {
                let _ = f.get_mut().remove_target(*pid);
            }
        }
        Event::TargetAdded(pid) => {
            members.failing.remove(pid);
            if let Some(f) = faults {
                let _ = f.get_mut().add_target(*pid);
            }
        }
        Event::TargetRefused(pid, why) => {
            members.requested.remove(pid);
            // What failed in passing (EMFILE, say) is tried again at the next membership read.
            if !why.is_input() {
                return members.failing.insert(*pid);
            }
            members.refused.insert(*pid);
        }
        Event::Problem(problem) => {
            with_metrics(&|m| m.problem(problem));
            return members.reported.insert((problem.pid, problem.kind));
        }
        Event::Flush | Event::Paused => {}
    }
    true
}

/// Page faults are hints, not essential: go on without them if they cannot be had here.
fn watch_faults(stream: anyhow::Result<FaultStream>, pids: &[u32]) -> Option<AsyncFd<FaultStream>> {
    stream
        .and_then(|mut stream| {
            pids.iter().try_for_each(|&pid| stream.add_target(pid))?;
            // SAFETY: the descriptor is the stream's own ring buffer, open for as long as the
            // stream lives inside the AsyncFd.
            unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }
                .map_err(|err| anyhow!("cannot watch the fault ring buffer: {err}"))
        })
        .map_err(|err| say!("udamon: going on without page-fault hints: {err:#}"))
        .ok()
}

/// Waits for page faults and hands them to the sampler.
async fn forward_faults(
    stream: &mut AsyncFd<FaultStream>,
    feed: &std::sync::mpsc::Sender<(u32, u64)>,
) {
    if let Ok(mut ready) = stream.readable_mut().await {
        ready.get_inner_mut().drain(|fault| {
            let _ = feed.send((fault.tgid, fault.addr));
        });
        ready.clear_ready();
    }
}

/// A tokio runtime on this thread, for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, SessionError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| SessionError::Runtime(anyhow!("cannot start the runtime: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(changes: &[Control]) -> (Vec<u32>, Vec<u32>) {
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for c in changes {
            match c {
                Control::Add(p) => added.push(*p),
                Control::Remove(p) => removed.push(*p),
            }
        }
        added.sort_unstable();
        removed.sort_unstable();
        (added, removed)
    }

    #[test]
    fn membership_follows_the_group_and_does_not_retry_refusals() {
        let mut m = Members { requested: [1, 2].into(), ..Members::default() };
        assert_eq!(summary(&m.changes(&[1, 2])), (vec![], vec![]));
        assert_eq!(summary(&m.changes(&[2, 3, 4])), (vec![3, 4], vec![1]));
        // 4 could not be monitored: it is not asked for again while it stays.
        m.requested.remove(&4);
        m.refused.insert(4);
        assert_eq!(summary(&m.changes(&[2, 3, 4])), (vec![], vec![]));
        // Once it leaves and comes back, it is tried again.
        assert_eq!(summary(&m.changes(&[2, 3])), (vec![], vec![]));
        assert_eq!(summary(&m.changes(&[2, 3, 4])), (vec![4], vec![]));
    }

    #[test]
    fn members_failing_in_passing_are_retried_and_said_once() {
        let mut m = Members { requested: [5].into(), ..Members::default() };
        let mut see = |event: Event| observe(&event, None, None, &mut m);
        let emfile = || Event::TargetRefused(5, TargetError::Other(5, anyhow!("EMFILE")));
        assert!(see(emfile()), "said the first time");
        assert_eq!(summary(&m.changes(&[5])), (vec![5], vec![]), "asked for again");
        let mut see = |event: Event| observe(&event, None, None, &mut m);
        assert!(!see(emfile()), "not said again");
        assert_eq!(summary(&m.changes(&[5])), (vec![5], vec![]));
        assert!(observe(&Event::TargetAdded(5), None, None, &mut m));
        assert!(m.failing.is_empty());
        // A lasting refusal is not asked for again.
        assert!(observe(
            &Event::TargetRefused(5, TargetError::KernelThread(5)),
            None,
            None,
            &mut m
        ));
        assert_eq!(summary(&m.changes(&[5])), (vec![], vec![]));
    }
}
