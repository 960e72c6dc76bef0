//! `udamon demo`: monitors a built-in workload whose layout is known, labelling what it reports.

use std::{
    io::BufRead as _,
    process::{Child, Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use clap::Args;

use damon_engine::units::format_size;

use super::{
    Failure, emit,
    options::{self, MonitoringArgs},
    print,
};
use crate::{
    monitor::{Event, Summary, session},
    snapshot::Snapshot,
    sys::process,
    util::table::{self, Align},
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
    /// When the cold hole in the hot area turns hot, before the end (0s: hot from the start);
    /// `never` keeps it cold [default: 4s, or half the duration if that is sooner].
    #[arg(long, value_name = "DURATION|never")]
    phase_change: Option<String>,
    /// Print only every Nth aggregation.
    #[arg(long, default_value_t = 1, value_parser = options::at_least_one)]
    every: u64,
    /// JSON lines: the layout, one snapshot per aggregation, then the summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    monitoring: MonitoringArgs,
}

const DEFAULT_PHASE_CHANGE: Duration = Duration::from_secs(4);

/// The workload child, killed when the demo ends however it ends.
struct Workload(Child);

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn run(args: DemoArgs) -> Result<ExitCode, Failure> {
    let duration = options::span(&args.duration, "duration")
        .map(Duration::from_micros)
        .map_err(Failure::Input)?;
    let phase_change = match args.phase_change.as_deref() {
        None => DEFAULT_PHASE_CHANGE.min(duration / 2),
        // After the end: the workload is stopped first.
        Some("never") => duration.saturating_mul(2),
        Some(text) => {
            let at = options::offset(text, "phase-change")
                .map(Duration::from_micros)
                .map_err(Failure::Input)?;
            if at >= duration {
                return Err(Failure::Input(anyhow!(
                    "--phase-change {text} is not before the demo's end (--duration {}): the change would not be seen (`never` keeps the hole cold)",
                    args.duration
                )));
            }
            at
        }
    };
    let config =
        args.monitoring.resolve().and_then(|s| s.monitor_config()).map_err(Failure::Input)?;
    // Whether monitoring can work is checked once, by the session (the workload is cheap to
    // start and stops with the demo).
    let (_workload, layout) = spawn_workload(phase_change).map_err(Failure::Runtime)?;
    if args.json {
        emit(&(serde_json::json!({ "layout": layout }).to_string() + "\n"))?;
    }
    let targets = session::Targets::Pids(vec![layout.pid]);
    let run = session::run(config, &targets, Some(duration), None, |e| show(&args, &layout, e));
    let summary = session::runtime()?.block_on(run)?.summary;
    let text = if args.json {
        serde_json::json!({ "summary": summary }).to_string() + "\n"
    } else {
        summary_line(&summary)
    };
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn spawn_workload(phase_change: Duration) -> anyhow::Result<(Workload, Layout)> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    // Spawned from the main thread: it dies with udamon, even one killed outright.
    let child = process::die_with_parent(&mut Command::new(exe))
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

fn show(args: &DemoArgs, layout: &Layout, event: Event) -> anyhow::Result<()> {
    match event {
        Event::TargetExited(pid) => print(&format!("pid {pid} exited\n")),
        // The demo's one target is never added, removed or refused while running, and it has
        // no schemes to pause for; every snapshot is printed as it comes.
        Event::Paused
        | Event::TargetAdded(_)
        | Event::TargetLeft(_)
        | Event::TargetRefused(..)
        | Event::Flush => Ok(()),
        Event::Problem(problem) => {
            say!("udamon: pid {}: {}", problem.pid, problem.message);
            Ok(())
        }
        Event::Snapshot(s) if s.aggregation % args.every != 0 => Ok(()),
        Event::Snapshot(s) if args.json => {
            print(&(serde_json::json!({ "snapshot": s }).to_string() + "\n"))
        }
        Event::Snapshot(s) => print(&snapshot_table(&s, layout)),
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
