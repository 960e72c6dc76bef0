//! `udamon reclaim`: proactive reclaim, the kernel's DAMON_RECLAIM from userspace. One pageout
//! scheme on memory idle for `--min-age`, under a time and a size quota (the oldest first),
//! an optional memory-pressure goal, and free-memory watermarks, over processes or a cgroup.

use std::{process::ExitCode, time::Instant};

use anyhow::Result;
use clap::Args;
use damon_engine::schemes::{
    AccessPattern, Action, Filter, FilterKind, Goal, Metric, Quota, Scheme, Watermarks, WmarkMetric,
};

use super::{
    Failure, emit,
    monitor::duration,
    options::{self, MonitoringArgs},
    print,
    schemes::status_line,
    targets::{ServeArgs, TargetArgs},
};
use crate::monitor::{Event, session};

/// Reclaim memory a workload has not touched for a while (DAMON_RECLAIM's defaults): page out
/// regions idle for --min-age, at most --quota-size per --quota-interval and as much as
/// --quota-time of work allows, the oldest first; only while free memory is between the
/// watermarks (below HIGH permil, above LOW; starting again below MID). Monitoring pauses while
/// the watermarks hold it off. Prints the scheme's totals every --report-every.
#[derive(Args)]
pub struct ReclaimArgs {
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    serve: ServeArgs,
    /// Page out memory idle at least this long.
    #[arg(long, default_value = "120s", value_name = "DURATION")]
    min_age: String,
    /// Time the pageouts may take per quota interval.
    #[arg(long, default_value = "10ms", value_name = "DURATION")]
    quota_time: String,
    /// Bytes that may be paged out per quota interval.
    #[arg(long, default_value = "128MiB", value_name = "SIZE")]
    quota_size: String,
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    quota_interval: String,
    /// Tune the quota so that tasks stall on memory for about this long per quota interval
    /// (PSI "some", µs or with a unit): more reclaim while there is less, less when there is more.
    /// Off by default, as in DAMON_RECLAIM.
    #[arg(long, value_name = "DURATION")]
    psi_goal: Option<String>,
    /// Free-memory watermarks in permil: HIGH MID LOW.
    #[arg(long, num_args = 3, value_names = ["HIGH", "MID", "LOW"], default_values = ["500", "400", "200"])]
    wmarks: Vec<u64>,
    /// How often the watermarks are read.
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    wmarks_interval: String,
    /// Reclaim whatever free memory is.
    #[arg(long, conflicts_with_all = ["wmarks"])]
    no_wmarks: bool,
    /// Leave anonymous memory alone (without swap it cannot be paged out anyway).
    #[arg(long)]
    skip_anon: bool,
    /// Stop after this long; default: until stopped.
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// How often the totals are printed.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    report_every: String,
    #[command(flatten)]
    monitoring: MonitoringArgs,
}

impl ReclaimArgs {
    fn scheme(&self) -> Result<Scheme> {
        let micros = |text: &str, option: &str| options::span(text, option);
        let pattern = AccessPattern {
            min_sz: 4096,
            max_nr_accesses: 0,
            min_age_us: options::offset(&self.min_age, "min-age")?,
            ..AccessPattern::default()
        };
        let mut scheme = Scheme::new(pattern, Action::Pageout);
        scheme.quota = Quota {
            time_ms: micros(&self.quota_time, "quota-time")? / 1000,
            sz: damon_engine::units::parse_size(&self.quota_size)
                .map_err(|err| anyhow::anyhow!("--quota-size: {err}"))?,
            reset_interval_ms: micros(&self.quota_interval, "quota-interval")? / 1000,
            weight_age: 1,
            goals: match &self.psi_goal {
                Some(goal) => vec![Goal::new(Metric::SomeMemPsiUs, micros(goal, "psi-goal")?, 0)],
                None => Vec::new(),
            },
            ..Quota::default()
        };
        if !self.no_wmarks {
            let [high, mid, low] = self.wmarks[..] else { unreachable!("three values") };
            scheme.wmarks = Watermarks {
                metric: Some(WmarkMetric::FreeMemRate),
                interval_us: micros(&self.wmarks_interval, "wmarks-interval")?,
                high,
                mid,
                low,
            };
        }
        if self.skip_anon {
            scheme.filters = vec![Filter { kind: FilterKind::Anon, matching: true, allow: false }];
        }
        super::schemes::check(&scheme)?;
        Ok(scheme)
    }
}

pub(super) fn run(args: ReclaimArgs) -> Result<ExitCode, Failure> {
    let scheme = args.scheme().map_err(Failure::Input)?;
    let mut config =
        args.monitoring.resolve().and_then(|s| s.monitor_config()).map_err(Failure::Input)?;
    config.schemes = vec![scheme];
    let duration = duration(args.duration.as_deref())?;
    let every = options::span(&args.report_every, "report-every").map_err(Failure::Input)?;
    let every = std::time::Duration::from_micros(every);
    let metrics = args.serve.addr()?;
    let targets = args.targets.resolve()?;
    let mut last_report = Instant::now();
    let mut last_line = None;
    let ran = session::runtime()?.block_on(session::run(
        config,
        &targets,
        duration,
        metrics,
        |event| {
            match event {
                Event::Snapshot(s) => {
                    last_line = s.schemes.first().map(|status| status_line(0, status));
                    if last_report.elapsed() >= every {
                        last_report = Instant::now();
                        print(last_line.as_deref().unwrap_or_default())?;
                    }
                }
                Event::TargetExited(pid) => say!("udamon: pid {pid} exited"),
                Event::TargetLeft(pid) => say!("udamon: pid {pid} left the cgroup"),
                Event::TargetAdded(_) | Event::Flush => {}
                Event::Paused => {
                    let free = crate::sys::memory::free_permil().unwrap_or_default();
                    say!(
                        "udamon: held off by the watermarks (free memory {:.1} %): sampling paused",
                        free as f64 / 10.0
                    );
                }
                Event::TargetRefused(pid, why) => {
                    say!("udamon: not reclaiming from pid {pid}: {why}")
                }
                Event::Problem(p) => say!("udamon: pid {}: {}", p.pid, p.message),
            }
            Ok(())
        },
    ))?;
    if let Some(line) = last_line {
        emit(&line)?;
    }
    args.targets.exit(ran.ended, ran.command, None)
}
