//! Monitoring: the engine driven by a dedicated sampler thread on drift-free ticks, over any
//! [`Source`] of targets (the vaddr operations on processes; the simulator in tests), with
//! snapshots, target changes and problems coming back as events. `session` runs a whole
//! monitoring command around it.

pub mod command;
pub mod session;
mod source;
mod ticker;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use damon_engine::{
    Attrs, Config, Context, CoreVersion, Counters, Sampling, SplitPolicy, schemes::Scheme,
};
use serde::Serialize;

pub use self::source::{OpsStats, Problem, Source, TargetError};
use self::ticker::Ticker;
use crate::snapshot::{SamplerStats, Snapshot};

#[derive(Clone, Debug)]
pub struct MonitorConfig {
    pub attrs: Attrs,
    pub policy: SplitPolicy,
    pub sampling: Sampling,
    pub version: CoreVersion,
    pub seed: u64,
    /// Memory pressure (PSI "some avg10", %) from which the clears back off; `None`: never.
    pub reclaim_backoff: Option<f64>,
    /// DAMOS schemes applied at every aggregation.
    pub schemes: Vec<Scheme>,
}

/// The default backoff threshold: a tenth of the time stalled on memory.
pub const DEFAULT_RECLAIM_BACKOFF: f64 = 10.0;

impl Default for MonitorConfig {
    /// The kernel's attributes and udamon's choices: the default policy, adaptive sampling.
    fn default() -> Self {
        Self {
            attrs: Attrs::default(),
            policy: SplitPolicy::default(),
            sampling: Sampling::Adaptive,
            version: CoreVersion::default(),
            seed: 0,
            reclaim_backoff: Some(DEFAULT_RECLAIM_BACKOFF),
            schemes: Vec::new(),
        }
    }
}

/// Where the sampler sends its events (a tokio channel: the sampler thread sends without
/// blocking, async code awaits).
pub type Events = tokio::sync::mpsc::UnboundedSender<Event>;

#[derive(Debug)]
pub enum Event {
    Snapshot(Snapshot),
    /// A monitored process exited; the others go on.
    TargetExited(u32),
    /// A process removed while monitoring (`Control::Remove`: it left the cgroup).
    TargetLeft(u32),
    /// A process added while monitoring (`Control::Add`) is monitored from now on.
    TargetAdded(u32),
    /// A process could not be added, and why.
    TargetRefused(u32, TargetError),
    /// Something went wrong for a target without ending it (its samples read unknown).
    Problem(Problem),
    /// Write out what is kept now (SIGUSR1): from the session, never the sampler.
    Flush,
    /// Every scheme is held off by its watermarks: sampling pauses (no snapshots) until one
    /// may act again.
    Paused,
}

/// Changes to the targets while monitoring; applied right after the next aggregation.
pub enum Control {
    Add(u32),
    Remove(u32),
}

/// What a monitoring run cost and did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub counters: Counters,
    pub ticks: u64,
    /// Ticks that started late (see `Ticker`): counted, not hidden.
    pub late_ticks: u64,
    /// CPU time of the sampler thread, user and system.
    pub sampler_cpu: Duration,
    /// CPU time of the whole process so far, every thread, user and system.
    pub process_cpu: Duration,
    /// What the operations spent, as far as they know.
    #[serde(flatten)]
    pub ops: OpsStats,
}

pub struct Monitor {
    stop: Arc<AtomicBool>,
    faults: mpsc::Sender<(u32, u64)>,
    control: mpsc::Sender<Control>,
    sampler: JoinHandle<Result<Summary>>,
}

impl Monitor {
    /// Opens the targets with `source` and starts sampling; events arrive on `events`.
    /// Sampling ends when every target is gone, unless `follow` (targets come and go through
    /// `control`). A target that cannot be opened fails the start with its `TargetError`, but
    /// one that exited already is an exit like a later one: reported, and the others go on.
    pub fn start<S: Source>(
        config: MonitorConfig,
        mut source: S,
        pids: &[u32],
        events: Events,
        follow: bool,
    ) -> Result<Self> {
        let mut targets = Vec::with_capacity(pids.len());
        for &pid in pids {
            match source.open(pid) {
                Ok(target) => targets.push(target),
                Err(TargetError::Exited(pid)) => {
                    let _ = events.send(Event::TargetExited(pid));
                }
                Err(err) => return Err(err.into()),
            }
        }
        let engine = Config {
            attrs: config.attrs,
            policy: config.policy,
            sampling: config.sampling,
            version: config.version,
            seed: config.seed,
            ..Config::default()
        };
        let mut ctx = Context::new(engine, targets)?;
        ctx.set_schemes(config.schemes)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (faults, fault_feed) = mpsc::channel();
        let (control, controls) = mpsc::channel();
        let sampler = {
            let stop = stop.clone();
            let inputs = Inputs { faults: fault_feed, controls, follow };
            std::thread::Builder::new()
                .name("udamon-sampler".into())
                .spawn(move || sample(ctx, source, &stop, &events, &inputs))
                .context("cannot start the sampler thread")?
        };
        Ok(Self { stop, faults, control, sampler })
    }

    /// A sender for page faults `(pid, address)`, applied at the next tick.
    pub fn faults(&self) -> mpsc::Sender<(u32, u64)> {
        self.faults.clone()
    }

    /// A sender of target changes, applied after the next aggregation.
    pub fn control(&self) -> mpsc::Sender<Control> {
        self.control.clone()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn join(self) -> Result<Summary> {
        self.stop();
        self.sampler.join().map_err(|_| anyhow::anyhow!("the sampler thread panicked"))?
    }
}

/// What reaches the sampler thread besides the clock.
struct Inputs {
    faults: mpsc::Receiver<(u32, u64)>,
    controls: mpsc::Receiver<Control>,
    follow: bool,
}

fn sample<S: Source>(
    mut ctx: Context,
    mut source: S,
    stop: &AtomicBool,
    events: &Events,
    inputs: &Inputs,
) -> Result<Summary> {
    ctx.start(&mut source)?;
    raise_priority();
    let started = Instant::now();
    let mut ticker = Ticker::new();
    // When the window being sampled began: snapshots carry real times, late ticks and all.
    let mut window_start = Duration::ZERO;
    while !stop.load(Ordering::Acquire) && (inputs.follow || !ctx.targets().is_empty()) {
        // Intervals with nothing due (adaptive sampling) pass asleep.
        let idle = ctx.idle_ticks();
        ticker.wait(Duration::from_micros(ctx.attrs().sample_us) * (idle as u32 + 1));
        ctx.skip(idle);
        while let Ok((pid, addr)) = inputs.faults.try_recv() {
            ctx.record_fault(pid as u64, addr);
        }
        let step = ctx.step(&mut source, |ctx, _| {
            let now = started.elapsed();
            let stats = SamplerStats {
                counters: *ctx.counters(),
                ticks: ticker.ticks,
                late_ticks: ticker.late,
                cpu_seconds: cpu(libc::RUSAGE_THREAD).as_secs_f64(),
            };
            let _ = events.send(Event::Snapshot(Snapshot::of(ctx, window_start, now, stats)));
            window_start = now;
        })?;
        for pid in step.dropped {
            source.close(pid as u32);
            let _ = events.send(Event::TargetExited(pid as u32));
        }
        if let Some(wait_us) = ctx.pause_us() {
            let _ = events.send(Event::Paused);
            pause(&mut ctx, &mut source, stop, wait_us);
            ticker.restart();
        }
        if step.aggregation.is_some() {
            for problem in source.problems() {
                let _ = events.send(Event::Problem(problem));
            }
            apply_controls(&mut ctx, &mut source, &inputs.controls, events);
        }
    }
    Ok(Summary {
        counters: *ctx.counters(),
        ticks: ticker.ticks,
        late_ticks: ticker.late,
        sampler_cpu: cpu(libc::RUSAGE_THREAD),
        process_cpu: process_cpu(),
        ops: source.stats(),
    })
}

/// Every scheme is held off by its watermarks: monitoring serves nothing until they let one act
/// again (as the kernel's kdamond waits), so the sampler sleeps, reading them when due, and
/// looking for exits.
fn pause<S: Source>(ctx: &mut Context, source: &mut S, stop: &AtomicBool, mut wait_us: u64) {
    const NAP: Duration = Duration::from_millis(100);
    while !stop.load(Ordering::Acquire) {
        let nap = Duration::from_micros(wait_us).min(NAP);
        std::thread::sleep(nap);
        let slept = nap.as_micros() as u64;
        // A target's exit ends the pause: the next aggregation drops it.
        if ctx.resume_after(source, slept) || source.poll_exits() {
            return;
        }
        wait_us = ctx.pause_us().unwrap_or(0).max(1);
    }
}

/// Adds and removes targets as asked, at an aggregation boundary where counts restart.
fn apply_controls<S: Source>(
    ctx: &mut Context,
    source: &mut S,
    controls: &mpsc::Receiver<Control>,
    events: &Events,
) {
    while let Ok(control) = controls.try_recv() {
        let event = match control {
            Control::Add(pid) => {
                let added = source.open(pid).and_then(|target| {
                    ctx.add_target(source, target).map_err(|err| TargetError::Other(pid, err))
                });
                match added {
                    Ok(()) => Event::TargetAdded(pid),
                    Err(err) => {
                        // Forget the process only if the engine does not monitor it already.
                        if ctx.targets().iter().all(|t| t.id != pid as u64) {
                            source.close(pid);
                        }
                        Event::TargetRefused(pid, err)
                    }
                }
            }
            Control::Remove(pid) => {
                ctx.remove_target(pid as u64);
                source.close(pid);
                Event::TargetLeft(pid)
            }
        };
        let _ = events.send(event);
    }
}

/// Ticks wake on time more often at a higher priority (nice −10 measured about a third as
/// many late ticks as nice 0 on a busy machine); best effort: it needs CAP_SYS_NICE.
fn raise_priority() {
    // SAFETY: gettid cannot fail; setpriority on our own thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10) };
}

/// CPU time (user + system) of this process so far, every thread.
pub fn process_cpu() -> Duration {
    cpu(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of the calling thread or of the process.
fn cpu(who: libc::c_int) -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

#[cfg(test)]
mod tests;
