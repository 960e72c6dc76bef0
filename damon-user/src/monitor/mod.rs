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

pub use self::snapshot::{RegionSnapshot, Snapshot, TargetSnapshot};
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
    /// A monitored process exited; the others go on.
    TargetGone(u32),
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
    sampler: JoinHandle<Result<Summary>>,
}

impl Monitor {
    /// Loads the data plane, opens the targets and starts sampling; events arrive on `events`.
    pub fn start(config: MonitorConfig, pids: &[u32], events: Events) -> Result<Self> {
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
        let sampler = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("udamon-sampler".into())
                .spawn(move || sample(ctx, ops, &stop, &events, &fault_feed))
                .context("cannot start the sampler thread")?
        };
        Ok(Self { stop, faults, sampler })
    }

    /// A sender for page faults `(pid, address)`, applied at the next tick.
    pub fn faults(&self) -> mpsc::Sender<(u32, u64)> {
        self.faults.clone()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn join(self) -> Result<Summary> {
        self.stop();
        self.sampler.join().map_err(|_| anyhow::anyhow!("the sampler thread panicked"))?
    }
}

fn sample(
    mut ctx: Context,
    mut ops: VaddrOps,
    stop: &AtomicBool,
    events: &Events,
    faults: &mpsc::Receiver<(u32, u64)>,
) -> Result<Summary> {
    ctx.start(&mut ops)?;
    raise_priority();
    let started = Instant::now();
    let mut ticker = Ticker::new();
    while !stop.load(Ordering::Acquire) && !ctx.targets().is_empty() {
        ticker.wait(Duration::from_micros(ctx.attrs().sample_us));
        while let Ok((pid, addr)) = faults.try_recv() {
            ctx.record_fault(pid as u64, addr);
        }
        let step = ctx.step(&mut ops, |ctx, _| {
            let _ = events.send(Event::Snapshot(Snapshot::of(ctx, started.elapsed())));
        })?;
        for pid in step.dropped {
            let _ = events.send(Event::TargetGone(pid as u32));
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
