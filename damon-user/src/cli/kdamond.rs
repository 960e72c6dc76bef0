//! `udamon kdamond`: the kernel's own DAMON, observed (see `crate::kdamond`).

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::anyhow;
use clap::Args;
use damon_engine::units::format_size;
use tokio::signal::unix::SignalKind;

use super::{Failure, emit, monitor::duration, options, targets::ServeArgs};
use crate::{
    dataplane::kdamond::KdamondProbe,
    kdamond::{self, Aggregation, Observer, Scheme, metrics::KdamondMetrics, recorder::Recorder},
    output::{
        metrics::server,
        record::{Format, Intervals, writer::RecordWriter},
    },
    sys::{damon_sysfs, signals},
    util::atomic_file::Output,
};

/// How often the kernel maps are read: a quarter of the fastest aggregation interval seen,
/// within these bounds (aggregations faster than the least are counted, not shown); while
/// recording, always the least, so the region stream's 4 MiB never fills between reads.
const POLL: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Observe the kernel's own DAMON (kdamonds started through sysfs or damo, or by DAMON_RECLAIM
/// and the like) through its damon:damon_aggregated tracepoint. Per target and aggregation: the
/// region count, monitored and working-set bytes, and idle-time percentiles, summed in the kernel
/// by an eBPF program (no per-region event leaves the kernel unless recording). Only reads: it
/// never starts, stops or tunes a kdamond. Stops on Ctrl-C, SIGTERM or SIGHUP, or after
/// --duration.
#[derive(Args)]
pub struct KdamondArgs {
    /// Only this kdamond: its number under /sys/kernel/mm/damon/admin/kdamonds. Default: every
    /// kdamond, those started later included.
    #[arg(long, value_name = "N")]
    kdamond: Option<u32>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Also record every region of every aggregation into FILE, damo's record format (one
    /// kdamond: --kdamond N when several run).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// The record's format: damo's json_compressed (default), json, or perf_script.
    #[arg(long, value_enum, default_value_t = Format::JsonCompressed, requires = "record")]
    format: Format,
    /// How often the record is rewritten: a crash loses at most this much.
    #[arg(long, default_value = "10s", value_name = "DURATION", requires = "record")]
    flush_every: String,
    /// Stop after this long (e.g. 30s, 5m); default: until stopped.
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// JSON lines: one object per target and aggregation.
    #[arg(long)]
    json: bool,
    /// Print nothing per aggregation (with --metrics: an exporter).
    #[arg(long, conflicts_with = "json")]
    quiet: bool,
}

pub(super) fn run(args: KdamondArgs) -> Result<ExitCode, Failure> {
    let duration = duration(args.duration.as_deref())?;
    let flush_every = options::span(&args.flush_every, "flush-every")
        .map(Duration::from_micros)
        .map_err(Failure::Input)?;
    let metrics = args.serve.addr()?;
    if !damon_sysfs::present() {
        return Err(Failure::Runtime(anyhow!(
            "this kernel has no DAMON ({} is missing)",
            damon_sysfs::ADMIN
        )));
    }
    let only = match (args.kdamond, &args.record) {
        (None, Some(_)) => Some(only_running()?),
        (only, _) => only,
    };
    let pid = kdamond::choose(only).map_err(Failure::Input)?;
    let mut writer = match &args.record {
        Some(path) => {
            let output = Output::new(path).map_err(Failure::Input)?;
            let context = damon_sysfs::kdamonds()
                .into_iter()
                .find(|k| Some(k.index) == only)
                .and_then(|k| k.context)
                .unwrap_or_default();
            let intervals = Intervals {
                sample_us: context.sample_us,
                aggr_us: context.aggr_us,
                ops_update_us: context.update_us,
            };
            let recorder = Recorder::new(monotonic_ns(), context.aggr_us);
            Some((RecordWriter::new(output, args.format, intervals, flush_every), recorder))
        }
        None => None,
    };
    let runtime = crate::monitor::session::runtime()?;
    let result = runtime.block_on(async {
        let signal = |kind| tokio::signal::unix::signal(kind).map_err(|e| Failure::Runtime(e.into()));
        let (mut interrupt, mut terminate, mut hangup) =
            (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
        let held = signals::Held::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
        let shared = match metrics {
            Some(addr) => {
                let shared = Arc::new(Mutex::new(KdamondMetrics::default()));
                let bound = server::serve(addr, shared.clone()).await.map_err(Failure::Input)?;
                say!("udamon: metrics on http://{bound}/metrics");
                Some(shared)
            }
            None => None,
        };
        let probe = KdamondProbe::attach(pid, writer.is_some()).map_err(Failure::Runtime)?;
        drop(held);
        if probe.scheme_events.is_empty() {
            say!("udamon: this kernel has no DAMOS tracepoints (before 6.7): schemes are not followed");
        }
        if !probe.live_intervals {
            say!("udamon: this kernel's BTF does not lead to a kdamond's context: intervals are sysfs's");
        }
        let mut observer = Observer::new(probe);
        let end = tokio::time::sleep(duration.unwrap_or(Duration::MAX / 4));
        tokio::pin!(end);
        let mut poll = POLL.0;
        let mut fastest_us = u64::MAX;
        let mut observed = 0u64;
        loop {
            tokio::select! {
                _ = &mut end => break,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => break,
                _ = tokio::time::sleep(poll) => {}
            }
            if let Some((writer, recorder)) = writer.as_mut() {
                let mut complete = Vec::new();
                observer.probe_mut().drain(|r| complete.extend(recorder.push(r)));
                for (key, snapshot) in complete {
                    writer.push_target(key.target.into(), snapshot).map_err(Failure::Runtime)?;
                }
            }
            let polled = observer.poll();
            if let Some(shared) = &shared {
                let mut m = shared.lock().expect("metrics lock");
                polled.aggregations.iter().for_each(|a| m.update(a));
                polled.schemes.iter().for_each(|s| m.update_scheme(s));
                for (who, targets, schemes) in &polled.gone {
                    targets.iter().for_each(|&t| m.remove(who, t));
                    schemes.iter().for_each(|&s| m.remove_scheme(who, s));
                }
                m.set_lost(observer.probe_mut().lost());
            }
            observed += polled.aggregations.len() as u64;
            fastest_us = polled.aggregations.iter().map(|a| a.aggr_us).fold(fastest_us, u64::min);
            if writer.is_none() && fastest_us != u64::MAX {
                poll = Duration::from_micros(fastest_us / 4).clamp(POLL.0, POLL.1);
            }
            if args.quiet {
                continue;
            }
            let mut text = String::new();
            for a in &polled.aggregations {
                text += &if args.json { json_line("aggregation", a) } else { line(a) };
            }
            for s in &polled.schemes {
                text += &if args.json { json_line("scheme", s) } else { scheme_line(s) };
            }
            for (who, targets, schemes) in &polled.gone {
                text += &if args.json {
                    let gone = serde_json::json!({"kdamond": who.label(), "targets": targets, "schemes": schemes});
                    format!("{}\n", serde_json::json!({ "gone": gone }))
                } else {
                    format!("kdamond {}: ended\n", who.label())
                };
            }
            emit(&text)?;
        }
        Ok::<u64, Failure>(observed)
    });
    let recorded = writer.as_mut().map(|(w, r)| (w.finish(), w.snapshots(), r.incomplete));
    let observed = result?;
    if let Some((flushed, snapshots, incomplete)) = recorded {
        flushed.map_err(Failure::Runtime)?;
        let path = args.record.as_deref().unwrap_or_else(|| "".as_ref()).display();
        // As `record`: a run asked for a file and got none.
        if snapshots == 0 {
            return Err(Failure::Runtime(anyhow!(
                "no complete aggregation recorded, no file written"
            )));
        }
        say!("udamon: {snapshots} snapshots written to {path} ({})", args.format);
        // The first is expected: attached midway through an aggregation.
        if incomplete > 1 {
            say!(
                "udamon: {incomplete} aggregations left out incomplete (regions lost or attached midway)"
            );
        }
    }
    if observed == 0 && !args.quiet {
        say!("udamon: no kdamond finished an aggregation");
    }
    Ok(ExitCode::SUCCESS)
}

/// The one running kdamond, for a record.
fn only_running() -> Result<u32, Failure> {
    let running: Vec<u32> =
        damon_sysfs::kdamonds().iter().filter(|k| k.pid.is_some()).map(|k| k.index).collect();
    match running[..] {
        [one] => Ok(one),
        [] => Err(Failure::Runtime(anyhow!("no kdamond is running: nothing to record"))),
        _ => Err(Failure::Input(anyhow!(
            "kdamonds {running:?} are running: choose the one to record with --kdamond N"
        ))),
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn json_line(kind: &str, value: &impl serde::Serialize) -> String {
    format!("{}\n", serde_json::json!({ kind: value }))
}

fn scheme_line(s: &Scheme) -> String {
    let quota =
        s.quota_bytes.map(|q| format!(", effective quota {}", format_size(q))).unwrap_or_default();
    format!(
        "kdamond {} scheme {}: tried on {} regions, {} since attached{quota}\n",
        s.who.label(),
        s.scheme,
        s.tried_regions,
        format_size(s.tried_bytes),
    )
}

fn line(a: &Aggregation) -> String {
    let ops = a.who.ops.as_deref().unwrap_or("?");
    let [p50, p90, p99] = a.idle_seconds.map(seconds);
    format!(
        "kdamond {} ({ops}) target {}: {} regions over {}, working set {}, idle p50 {p50} p90 {p90} p99 {p99}\n",
        a.who.label(),
        a.target,
        a.nr_regions,
        format_size(a.total_bytes),
        format_size(a.working_set_bytes),
    )
}

fn seconds(s: f64) -> String {
    if s >= 120.0 { format!("{:.1} min", s / 60.0) } else { format!("{s:.1} s") }
}
