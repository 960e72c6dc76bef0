//! `udamon monitor`: the live view, one snapshot per aggregation interval (or every Nth).

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Args;

use super::{
    Failure, emit,
    options::{self, MonitoringArgs},
    print,
    schemes::{SchemeArgs, status_line},
    targets::{ServeArgs, TargetArgs},
};
use crate::{
    monitor::{
        Event, process_cpu,
        session::{self, Ended},
    },
    output::{
        record::{Intervals, RecordedSnapshot},
        report::access,
    },
    snapshot::Snapshot,
};

/// Watch processes live: for each aggregation interval, every region's start address, size,
/// access rate (% of the interval's samples that found an access, and accesses per second),
/// and age (aggregation intervals the rate has held); a one-line heatmap; the region count; the
/// working-set size (bytes of regions with any access); udamon's own CPU use; and a line when
/// sample ticks were late (the window then ran long: its times are real). Stops on Ctrl-C,
/// SIGTERM or SIGHUP, after --duration, or when every target has exited (with -- CMD: exits
/// with the command's status). A removed --cgroup ends it with exit code 1.
#[derive(Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    serve: ServeArgs,
    /// Show only every Nth aggregation.
    #[arg(long, default_value_t = 1, value_parser = options::at_least_one)]
    every: u64,
    /// Stop after this long (e.g. 30s, 5m); default: until stopped.
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// JSON lines instead of tables: one object per target and shown aggregation.
    #[arg(long)]
    json: bool,
    /// Print nothing per aggregation (with --metrics: a service that only serves metrics).
    #[arg(long, conflicts_with_all = ["json", "every"])]
    quiet: bool,
    /// Cells in the one-line heatmap.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=1024))]
    heatmap_width: u64,
    #[command(flatten)]
    monitoring: MonitoringArgs,
    #[command(flatten)]
    schemes: SchemeArgs,
}

/// `--duration`, if given (a unit is required).
pub fn duration(text: Option<&str>) -> Result<Option<Duration>, Failure> {
    text.map(|t| options::span(t, "duration").map(Duration::from_micros).map_err(Failure::Input))
        .transpose()
}

pub(super) fn run(args: MonitorArgs) -> Result<ExitCode, Failure> {
    let config = args.schemes.config(&args.monitoring).map_err(Failure::Input)?;
    let duration = duration(args.duration.as_deref())?;
    let metrics = args.serve.addr()?;
    let targets = args.targets.resolve()?;
    let intervals = Intervals::from(&config.attrs);
    // CPU share since the previous shown snapshot; none for the first, which would mostly
    // measure loading the eBPF programs.
    let mut cpu: Option<(Instant, Duration)> = None;
    // Late ticks as of the last view shown.
    let mut late = 0;
    let mut seen = 0u64;
    let session::Ran { summary, ended, command } = session::runtime()?.block_on(session::run(
        config,
        &targets,
        duration,
        metrics,
        |event| match event {
            Event::TargetExited(pid) => gone(pid, "exited", args.json),
            Event::TargetLeft(pid) => gone(pid, "left the cgroup", args.json),
            Event::TargetAdded(pid) => print(&if args.json {
                serde_json::json!({ "added": pid }).to_string() + "\n"
            } else {
                format!("pid {pid} added\n")
            }),
            Event::TargetRefused(pid, why) => {
                say!("udamon: not monitoring pid {pid}: {why}");
                Ok(())
            }
            Event::Problem(problem) => {
                if args.json {
                    print(&(serde_json::json!({ "problem": problem }).to_string() + "\n"))
                } else {
                    say!("udamon: pid {}: {}", problem.pid, problem.message);
                    Ok(())
                }
            }
            Event::Snapshot(s) => {
                seen += 1;
                if args.quiet || s.aggregation % args.every != 0 {
                    return Ok(());
                }
                let now = (Instant::now(), process_cpu());
                let share = cpu.map(|(wall, used)| {
                    (now.1 - used).as_secs_f64() / (now.0 - wall).as_secs_f64().max(1e-9)
                });
                cpu = Some(now);
                let late_since =
                    s.stats.late_ticks - std::mem::replace(&mut late, s.stats.late_ticks);
                print(&view(&s, &intervals, share, late_since, &args))
            }
            // Nothing is kept: every snapshot is printed as it comes.
            Event::Flush => Ok(()),
            Event::Paused if args.quiet => Ok(()),
            Event::Paused => print(&if args.json {
                serde_json::json!({ "paused": "every scheme is held off by its watermarks" })
                    .to_string()
                    + "\n"
            } else {
                "sampling paused: every scheme is held off by its watermarks\n".to_owned()
            }),
        },
    ))?;
    // Stopping early is the user's choice; no target left to show is not.
    let nothing = (seen == 0 && !matches!(ended, Ended::Duration | Ended::Signal))
        .then_some("nothing to show");
    let code = args.targets.exit(ended, command, nothing)?;
    if !args.json {
        emit(&format!(
            "{} aggregations; udamon CPU {:.2} s; late sample ticks {} of {}\n",
            summary.counters.aggregations,
            summary.process_cpu.as_secs_f64(),
            summary.late_ticks,
            summary.ticks
        ))?;
    }
    Ok(code)
}

/// A target that is no longer monitored, and why.
fn gone(pid: u32, why: &str, json: bool) -> anyhow::Result<()> {
    print(&if json {
        serde_json::json!({ "gone": pid, "why": why }).to_string() + "\n"
    } else {
        format!("pid {pid} {why}\n")
    })
}

/// One shown snapshot; `late` ticks started late since the last one shown.
fn view(
    s: &Snapshot,
    intervals: &Intervals,
    cpu_share: Option<f64>,
    late: u64,
    args: &MonitorArgs,
) -> String {
    let mut out = String::new();
    for target in &s.targets {
        let Some(recorded) = RecordedSnapshot::of(s, target.pid as u64) else { continue };
        // The intervals of this aggregation: auto-tuning changes them.
        let intervals = &Intervals { sample_us: s.sample_us, aggr_us: s.aggr_us, ..*intervals };
        let report =
            access::report(target.pid as u64, s.aggregation as usize, &recorded, intervals);
        if args.json {
            let mut value = serde_json::to_value(&report).expect("reports serialize");
            value["udamon_cpu_percent"] = cpu_share.map(|c| 100.0 * c).into();
            // Since monitoring began: a window with late ticks ran longer than the interval.
            value["ticks"] = s.stats.ticks.into();
            value["late_ticks"] = s.stats.late_ticks.into();
            value["access_checks"] = s.stats.counters.checks.into();
            value["sample_us"] = s.sample_us.into();
            value["aggr_us"] = s.aggr_us.into();
            if !s.schemes.is_empty() {
                value["schemes"] = serde_json::to_value(&s.schemes).expect("stats serialize");
            }
            out.push_str(&(value.to_string() + "\n"));
        } else {
            out.push_str(&access::render(
                &report,
                &recorded,
                intervals,
                args.heatmap_width as usize,
            ));
        }
    }
    if !args.json {
        for (i, scheme) in s.schemes.iter().enumerate() {
            out.push_str(&status_line(i, scheme));
        }
        if late > 0 {
            out.push_str(&format!(
                "{late} sample ticks late since the last view: windows ran longer than {} ms\n",
                intervals.aggr_us as f64 / 1e3
            ));
        }
        match cpu_share {
            Some(share) => out.push_str(&format!("udamon CPU {:.1} %\n\n", 100.0 * share)),
            None => out.push_str("udamon CPU: starting\n\n"),
        }
    }
    out
}
