//! `udamon demo`: monitors a built-in workload whose layout is known, labelling what it reports.

use std::{
    io::BufRead as _,
    process::{Child, Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use clap::Args;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::SignalKind,
    sync::mpsc,
};

use super::{Failure, emit, options::MonitoringArgs};
use crate::{
    check,
    engine::Attrs,
    faults::FaultStream,
    monitor::{Event, Monitor, MonitorConfig, Snapshot, Summary},
    table::{self, Align},
    units::{format_size, parse_duration_us},
    workload::Layout,
};

/// Run a built-in workload with a known layout (hot and cold anonymous memory, a THP-backed hot
/// area, a file-backed hot area, and an untouched hole in the hot area that turns hot after a few
/// seconds), monitor it, and print one snapshot per aggregation with each region's access rate
/// (% of samples that found an access), age (aggregations), page faults and the workload area it
/// lies in.
#[derive(Args)]
pub struct DemoArgs {
    /// How long to monitor.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    duration: String,
    /// When the cold hole in the hot area turns hot.
    #[arg(long, default_value = "4s", value_name = "DURATION")]
    phase_change: String,
    /// Print only every Nth aggregation.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// JSON lines: the layout, one snapshot per aggregation, then the summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    monitoring: MonitoringArgs,
}

/// The workload child, killed when the demo ends however it ends.
struct Workload(Child);

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn run(args: DemoArgs) -> Result<ExitCode, Failure> {
    let input = |r: anyhow::Result<u64>, what: &str| {
        r.with_context(|| format!("--{what}")).map_err(Failure::Input)
    };
    let duration = Duration::from_micros(input(parse_duration_us(&args.duration), "duration")?);
    let phase_change =
        Duration::from_micros(input(parse_duration_us(&args.phase_change), "phase-change")?);
    let mut attrs = Attrs::default();
    args.monitoring.apply(&mut attrs).map_err(Failure::Input)?;
    attrs.validate().map_err(Failure::Input)?;
    check::require_monitoring().map_err(Failure::Runtime)?;
    let config = MonitorConfig {
        attrs,
        policy: args.monitoring.policy,
        version: args.monitoring.core_version,
        seed: args.monitoring.seed.unwrap_or_else(rand_seed),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .map_err(Failure::Runtime)?;
    runtime.block_on(demo(&args, config, duration, phase_change))
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn spawn_workload(phase_change: Duration) -> anyhow::Result<(Workload, Layout)> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let child = Command::new(exe)
        .args(["workload", "--phase-change", &format!("{}us", phase_change.as_micros())])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the demo workload")?;
    let mut workload = Workload(child);
    let stdout = workload.0.stdout.take().context("no pipe from the workload")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .context("cannot read the workload's layout")?;
    let layout = serde_json::from_str(&line)
        .map_err(|_| anyhow!("the workload did not report its layout"))?;
    Ok((workload, layout))
}

async fn demo(
    args: &DemoArgs,
    config: MonitorConfig,
    duration: Duration,
    phase_change: Duration,
) -> Result<ExitCode, Failure> {
    let (_workload, layout) = spawn_workload(phase_change).map_err(Failure::Runtime)?;
    if args.json {
        emit(&(serde_json::json!({ "layout": layout }).to_string() + "\n"))?;
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let monitor = Monitor::start(config, &[layout.pid], events_tx).map_err(Failure::Runtime)?;
    // Page faults are hints, not essential: go on without them if they cannot be had here.
    let mut faults = FaultStream::new()
        .and_then(|mut stream| {
            stream.add_target(layout.pid)?;
            // SAFETY: the descriptor is the stream's own ring buffer, open for as long as the
            // stream lives inside the AsyncFd.
            unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }
                .map_err(|err| anyhow!("cannot watch the fault ring buffer: {err}"))
        })
        .map_err(|err| eprintln!("udamon: going on without page-fault hints: {err:#}"))
        .ok();
    let fault_feed = monitor.faults();
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())
        .map_err(|e| Failure::Runtime(e.into()))?;
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())
        .map_err(|e| Failure::Runtime(e.into()))?;
    let end = tokio::time::sleep(duration);
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            event = events.recv() => match event {
                Some(event) => show(args, &layout, event)?,
                None => break, // the sampler ended: every target gone, or an error
            },
            _ = async {
                match faults.as_mut() {
                    Some(stream) => forward_faults(stream, &fault_feed).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    monitor.stop();
    while let Ok(event) = events.try_recv() {
        show(args, &layout, event)?;
    }
    let summary = monitor.join().map_err(Failure::Runtime)?;
    let text = if args.json {
        serde_json::json!({ "summary": summary }).to_string() + "\n"
    } else {
        summary_line(&summary)
    };
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
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

fn show(args: &DemoArgs, layout: &Layout, event: Event) -> Result<(), Failure> {
    match event {
        Event::TargetGone(pid) => emit(&format!("pid {pid} exited\n")),
        Event::Snapshot(s) if s.aggregation % args.every != 0 => Ok(()),
        Event::Snapshot(s) if args.json => {
            emit(&(serde_json::json!({ "snapshot": s }).to_string() + "\n"))
        }
        Event::Snapshot(s) => emit(&snapshot_table(&s, layout)),
    }
}

fn snapshot_table(s: &Snapshot, layout: &Layout) -> String {
    let mut out = format!(
        "aggregation {} at {:.1} s: {} regions\n",
        s.aggregation,
        s.elapsed.as_secs_f64(),
        s.nr_regions()
    );
    for target in &s.targets {
        let rows: Vec<Vec<String>> = target
            .regions
            .iter()
            .map(|r| {
                vec![
                    format!("{:x}", r.start),
                    format!("{:x}", r.end),
                    format_size(r.end - r.start),
                    format!("{:.0} %", 100.0 * r.nr_accesses as f64 / s.samples as f64),
                    r.age.to_string(),
                    r.faults.to_string(),
                    layout.label(r.start, r.end).unwrap_or("-").to_owned(),
                ]
            })
            .collect();
        use Align::{Left, Right};
        out.push_str(&table::render(
            &["start", "end", "size", "access", "age", "faults", "area"],
            &[Left, Left, Right, Right, Right, Right, Left],
            &rows,
        ));
    }
    out
}

fn summary_line(s: &Summary) -> String {
    let per_check = s.process_cpu.as_nanos() as f64 / s.counters.checks.max(1) as f64;
    format!(
        "{} aggregations, {} checks ({} unknown); udamon CPU {:.0} ms ({per_check:.0} ns per check); late ticks {} of {}\n",
        s.counters.aggregations,
        s.counters.checks,
        s.counters.unknown,
        s.process_cpu.as_secs_f64() * 1e3,
        s.late_ticks,
        s.ticks
    )
}
