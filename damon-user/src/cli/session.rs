//! One monitoring run for `monitor`, `record` and `demo`: the sampler, page-fault hints, and the
//! end (duration, Ctrl-C/SIGTERM, or every target gone), with each event handed to the caller.

use std::time::Duration;

use anyhow::anyhow;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::SignalKind,
    sync::mpsc,
};

use super::Failure;
use crate::{
    check,
    faults::FaultStream,
    monitor::{Event, Monitor, MonitorConfig, Summary},
    vaddr::ops::TargetError,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Duration,
    Signal,
    /// Every target exited.
    TargetsGone,
}

/// Monitors `pids` until the end, calling `on_event` for each snapshot and target exit.
pub async fn run(
    config: MonitorConfig,
    pids: &[u32],
    duration: Option<Duration>,
    mut on_event: impl FnMut(Event) -> Result<(), Failure>,
) -> Result<(Summary, Ended), Failure> {
    check::require_monitoring().map_err(Failure::Runtime)?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let monitor = Monitor::start(config, pids, events_tx).map_err(|err| {
        match err.downcast_ref::<TargetError>() {
            Some(TargetError::Other(..) | TargetError::Exited(_)) | None => Failure::Runtime(err),
            Some(_) => Failure::Input(err),
        }
    })?;
    let mut faults = fault_stream(pids);
    let fault_feed = monitor.faults();
    let signal = |kind| tokio::signal::unix::signal(kind).map_err(|e| Failure::Runtime(e.into()));
    let (mut interrupt, mut terminate) =
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    let end = tokio::time::sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(end);
    let ended = loop {
        tokio::select! {
            _ = &mut end => break Ended::Duration,
            _ = interrupt.recv() => break Ended::Signal,
            _ = terminate.recv() => break Ended::Signal,
            event = events.recv() => match event {
                Some(event) => on_event(event)?,
                // The sampler ended: every target gone, or an error (join says which).
                None => break Ended::TargetsGone,
            },
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
        on_event(event)?;
    }
    let summary = monitor.join().map_err(Failure::Runtime)?;
    Ok((summary, ended))
}

/// Page faults are hints, not essential: go on without them if they cannot be had here.
fn fault_stream(pids: &[u32]) -> Option<AsyncFd<FaultStream>> {
    FaultStream::new()
        .and_then(|mut stream| {
            pids.iter().try_for_each(|&pid| stream.add_target(pid))?;
            // SAFETY: the descriptor is the stream's own ring buffer, open for as long as the
            // stream lives inside the AsyncFd.
            unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }
                .map_err(|err| anyhow!("cannot watch the fault ring buffer: {err}"))
        })
        .map_err(|err| eprintln!("udamon: going on without page-fault hints: {err:#}"))
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
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::Runtime(anyhow!("cannot start the runtime: {err}")))
}
