//! Monitoring processes: the engine with the vaddr operations, driven by a dedicated sampler
//! thread on drift-free ticks. Snapshots, target exits and the end come back as events.

pub mod snapshot;
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
use serde::Serialize;

pub use self::snapshot::{RegionSnapshot, SamplerStats, Snapshot, TargetSnapshot};
use self::ticker::Ticker;
use crate::{
    engine::{Attrs, Config, Context, CoreVersion, Counters, SplitPolicy},
    vaddr::{
        ops::VaddrOps,
        walker::{CallTimes, Walker},
    },
};

#[derive(Clone, Copy, Debug)]
pub struct MonitorConfig {
    pub attrs: Attrs,
    pub policy: SplitPolicy,
    pub version: CoreVersion,
    pub seed: u64,
}

/// Where the sampler sends its events (a tokio channel: the sampler thread sends without
/// blocking, async code awaits).
pub type Events = tokio::sync::mpsc::UnboundedSender<Event>;

pub enum Event {
    Snapshot(Snapshot),
    /// A monitored process exited or was removed; the others go on.
    TargetGone(u32),
    /// A process added while monitoring (`Control::Add`) is monitored from now on.
    TargetAdded(u32),
    /// A process could not be added, and why.
    TargetRefused(u32, String),
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
    /// Time the eBPF walker itself spent, and on how many addresses.
    pub walk_time: Duration,
    pub walked_addresses: u64,
    /// The sampler's system calls: walk requests and calls, and clears.
    pub calls: CallTimes,
}

pub struct Monitor {
    stop: Arc<AtomicBool>,
    faults: mpsc::Sender<(u32, u64)>,
    control: mpsc::Sender<Control>,
    sampler: JoinHandle<Result<Summary>>,
}

impl Monitor {
    /// Loads the data plane, opens the targets and starts sampling; events arrive on `events`.
    /// Sampling ends when every target is gone, unless `follow` (targets come and go through
    /// `control`).
    pub fn start(
        config: MonitorConfig,
        pids: &[u32],
        events: Events,
        follow: bool,
    ) -> Result<Self> {
        let mut ops = VaddrOps::new(Walker::new()?);
        let targets = pids.iter().map(|&pid| ops.add(pid)).collect::<Result<Vec<_>, _>>()?;
        let engine = Config {
            attrs: config.attrs,
            policy: config.policy,
            version: config.version,
            seed: config.seed,
            ..Config::default()
        };
        let ctx = Context::new(engine, targets)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (faults, fault_feed) = mpsc::channel();
        let (control, controls) = mpsc::channel();
        let sampler = {
            let stop = stop.clone();
            let inputs = Inputs { faults: fault_feed, controls, follow };
            std::thread::Builder::new()
                .name("udamon-sampler".into())
                .spawn(move || sample(ctx, ops, &stop, &events, &inputs))
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

fn sample(
    mut ctx: Context,
    mut ops: VaddrOps,
    stop: &AtomicBool,
    events: &Events,
    inputs: &Inputs,
) -> Result<Summary> {
    ctx.start(&mut ops)?;
    raise_priority();
    let started = Instant::now();
    let mut ticker = Ticker::new();
    while !stop.load(Ordering::Acquire) && (inputs.follow || !ctx.targets().is_empty()) {
        ticker.wait(Duration::from_micros(ctx.attrs().sample_us));
        while let Ok((pid, addr)) = inputs.faults.try_recv() {
            ctx.record_fault(pid as u64, addr);
        }
        let step = ctx.step(&mut ops, |ctx, ops| {
            let mut snapshot = Snapshot::of(ctx, started.elapsed());
            snapshot.stats = SamplerStats {
                counters: *ctx.counters(),
                ticks: ticker.ticks,
                late_ticks: ticker.late,
                cpu_seconds: cpu(libc::RUSAGE_THREAD).as_secs_f64(),
                walk_lost: ops.walker().stats().map_or(0, |s| s.lost),
            };
            let _ = events.send(Event::Snapshot(snapshot));
        })?;
        for pid in step.dropped {
            ops.remove(pid as u32);
            let _ = events.send(Event::TargetGone(pid as u32));
        }
        if step.aggregation.is_some() {
            apply_controls(&mut ctx, &mut ops, &inputs.controls, events);
        }
    }
    let walk = ops.walker().stats().unwrap_or_default();
    Ok(Summary {
        counters: *ctx.counters(),
        ticks: ticker.ticks,
        late_ticks: ticker.late,
        sampler_cpu: cpu(libc::RUSAGE_THREAD),
        process_cpu: process_cpu(),
        walk_time: Duration::from_nanos(walk.nanoseconds),
        walked_addresses: walk.addresses,
        calls: ops.walker().call_times(),
    })
}

/// Adds and removes targets as asked, at an aggregation boundary where counts restart.
fn apply_controls(
    ctx: &mut Context,
    ops: &mut VaddrOps,
    controls: &mpsc::Receiver<Control>,
    events: &Events,
) {
    while let Ok(control) = controls.try_recv() {
        let event = match control {
            Control::Add(pid) => {
                match ops.add(pid).map_err(anyhow::Error::from).and_then(|t| ctx.add_target(ops, t))
                {
                    Ok(()) => Event::TargetAdded(pid),
                    Err(err) => {
                        // Forget the process only if the engine does not monitor it already.
                        if ctx.targets().iter().all(|t| t.id != pid as u64) {
                            ops.remove(pid);
                        }
                        Event::TargetRefused(pid, format!("{err:#}"))
                    }
                }
            }
            Control::Remove(pid) => {
                ctx.remove_target(pid as u64);
                ops.remove(pid);
                Event::TargetGone(pid)
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
