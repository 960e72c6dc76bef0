//! One monitoring run for `monitor`, `record` and `demo`: the data plane, the sampler,
//! page-fault hints, cgroup membership, the metrics endpoint, and the end (duration,
//! Ctrl-C/SIGTERM, or every target gone), with each event handed to the caller.

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

use super::{Control, Event, Monitor, MonitorConfig, Summary, TargetError};
use crate::{
    check,
    dataplane::{DataPlane, FaultStream},
    output::metrics::{Metrics, server},
    sys::cgroup::Cgroup,
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
    Signal,
    /// Every target exited (or the cgroup went away).
    TargetsGone,
}

/// What to monitor: processes by pid, or every process of a cgroup as they come and go.
pub enum Targets {
    Pids(Vec<u32>),
    Cgroup(Cgroup),
}

/// Monitors `targets` until the end, calling `on_event` for each snapshot, target change and
/// problem (an error it returns ends the session); serves metrics on `metrics` if given.
pub async fn run(
    config: MonitorConfig,
    targets: &Targets,
    duration: Option<Duration>,
    metrics: Option<SocketAddr>,
    mut on_event: impl FnMut(Event) -> anyhow::Result<()>,
) -> Result<(Summary, Ended), SessionError> {
    check::require_monitoring().map_err(SessionError::Runtime)?;
    // A cgroup's members join through the first membership check, one by one: one that exits
    // meanwhile (or cannot be monitored) is refused alone instead of failing the start.
    let (pids, cgroup) = match targets {
        Targets::Pids(pids) => (pids.clone(), None),
        Targets::Cgroup(cgroup) => (Vec::new(), Some(cgroup)),
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
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let monitor = Monitor::start(config, VaddrOps::new(walker), &pids, events_tx, cgroup.is_some())
        .map_err(|err| match err.downcast_ref::<TargetError>() {
            Some(target) if target.is_input() => SessionError::Input(err),
            _ => SessionError::Runtime(err),
        })?;
    // Only now: a target that cannot be monitored is the one line to say.
    let mut faults = faults.and_then(|stream| watch_faults(stream, &pids));
    // The duration counts from the sampler's start, not from whatever start-up follows.
    let end = tokio::time::sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(end);
    let fault_feed = monitor.faults();
    let control = monitor.control();
    let mut members = Members {
        requested: pids.iter().copied().collect(),
        refused: HashSet::new(),
        reported: HashSet::new(),
    };
    let signal =
        |kind| tokio::signal::unix::signal(kind).map_err(|e| SessionError::Runtime(e.into()));
    let (mut interrupt, mut terminate) =
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    let mut membership = tokio::time::interval(Duration::from_micros(config.attrs.ops_update_us));
    let mut output = Ok(());
    let ended = loop {
        tokio::select! {
            _ = &mut end => break Ended::Duration,
            _ = interrupt.recv() => break Ended::Signal,
            _ = terminate.recv() => break Ended::Signal,
            event = events.recv() => match event {
                Some(event) => {
                    if observe(&event, shared.as_ref(), faults.as_mut(), &mut members) {
                        output = on_event(event);
                    }
                    // The caller's error ends the run; it is returned below.
                    if output.is_err() {
                        break Ended::Signal;
                    }
                }
                // The sampler ended: every target gone, or an error (join says which).
                None => break Ended::TargetsGone,
            },
            _ = membership.tick(), if cgroup.is_some() => {
                let Some(Ok(now)) = cgroup.map(Cgroup::procs) else { break Ended::TargetsGone };
                for change in members.changes(&now) {
                    let _ = control.send(change);
                }
            }
            _ = async {
                match faults.as_mut() {
                    Some(stream) => forward_faults(stream, &fault_feed).await,
                    None => std::future::pending().await,
                }
            } => {}
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
    Ok((summary, ended))
}

/// The processes asked for, those that could not be monitored (not asked for again while
/// they stay in the group), and the problems already reported (each once per target).
struct Members {
    requested: HashSet<u32>,
    refused: HashSet<u32>,
    reported: HashSet<(u32, &'static str)>,
}

impl Members {
    /// What to change so that the targets follow `now`, the group's processes.
    fn changes(&mut self, now: &[u32]) -> Vec<Control> {
        let now: HashSet<u32> = now.iter().copied().collect();
        self.refused.retain(|pid| now.contains(pid));
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
            let lost = faults.as_ref().and_then(|f| f.get_ref().lost().ok()).unwrap_or(0);
            with_metrics(&|m| m.update(s, lost));
        }
        Event::TargetGone(pid) => {
            members.requested.remove(pid);
            members.reported.retain(|r| r.0 != *pid);
            with_metrics(&|m| m.remove(*pid));
            if let Some(f) = faults {
                let _ = f.get_mut().remove_target(*pid);
            }
        }
        Event::TargetAdded(pid) => {
            if let Some(f) = faults {
                let _ = f.get_mut().add_target(*pid);
            }
        }
        Event::TargetRefused(pid, _) => {
            members.requested.remove(pid);
            members.refused.insert(*pid);
        }
        Event::Problem(problem) => {
            with_metrics(&|m| m.problem(problem));
            return members.reported.insert((problem.pid, problem.kind));
        }
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
        let mut m =
            Members { requested: [1, 2].into(), refused: HashSet::new(), reported: HashSet::new() };
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
}
