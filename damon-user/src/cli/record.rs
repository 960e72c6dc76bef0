//! `udamon record`: snapshots into a damo-format record file, flushed as it goes.

use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Args;

use super::{
    Failure,
    monitor::duration,
    options::{self, MonitoringArgs},
    schemes::SchemeArgs,
    targets::{ServeArgs, TargetArgs},
};
use crate::{
    monitor::{Event, session},
    output::record::{Format, Intervals, writer::RecordWriter},
    util::atomic_file::Output,
};

/// Record processes' access snapshots (one per aggregation interval) into a file damo can read.
/// The file is rewritten atomically every --flush-every, when a target exits or leaves the
/// cgroup, on SIGUSR1 (recording goes on), and at the end: Ctrl-C, SIGTERM or SIGHUP,
/// --duration, or every target gone (with -- CMD: exits with the command's status). A removed
/// --cgroup ends it with exit code 1, the file written.
#[derive(Args)]
pub struct RecordArgs {
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    serve: ServeArgs,
    /// The record file (a symlink is followed; a device or FIFO gets the record once, at the
    /// end, since it cannot be rewritten).
    #[arg(short, long, default_value = "damon.data", value_name = "FILE")]
    output: PathBuf,
    /// File format: damo's json_compressed (default), json, or perf_script trace text.
    #[arg(long, value_enum, default_value_t = Format::JsonCompressed)]
    format: Format,
    /// Stop after this long (e.g. 30s, 5m); a progress bar shows on a terminal.
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// How often the file is rewritten while recording: a crash loses at most this much.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    flush_every: String,
    #[command(flatten)]
    monitoring: MonitoringArgs,
    #[command(flatten)]
    schemes: SchemeArgs,
}

pub(super) fn run(args: RecordArgs) -> Result<ExitCode, Failure> {
    let config = args.schemes.config(&args.monitoring).map_err(Failure::Input)?;
    let duration = duration(args.duration.as_deref())?;
    let flush_every = options::span(&args.flush_every, "flush-every")
        .map(Duration::from_micros)
        .map_err(Failure::Input)?;
    let output = Output::new(&args.output).map_err(Failure::Input)?;
    let metrics = args.serve.addr()?;
    let targets = args.targets.resolve()?;
    let intervals = Intervals::from(&config.attrs);
    let mut writer = RecordWriter::new(output, args.format, intervals, flush_every);
    let progress =
        duration.filter(|_| std::io::stderr().is_terminal()).map(|d| (Instant::now(), d));
    let result =
        session::runtime()?.block_on(session::run(config, &targets, duration, metrics, |event| {
            match event {
                Event::Snapshot(s) => writer.push(&s)?,
                Event::TargetExited(pid) => {
                    writer.checkpoint()?;
                    say!("\rudamon: pid {pid} exited");
                }
                Event::TargetLeft(pid) => {
                    writer.checkpoint()?;
                    say!("\rudamon: pid {pid} left the cgroup");
                }
                Event::Flush => writer.checkpoint()?,
                // Nothing to record while paused: the record's times show the gap.
                Event::Paused => {}
                Event::TargetAdded(pid) => say!("\rudamon: pid {pid} added"),
                Event::TargetRefused(pid, why) => {
                    say!("\rudamon: not monitoring pid {pid}: {why}")
                }
                Event::Problem(problem) => {
                    say!("\rudamon: pid {}: {}", problem.pid, problem.message)
                }
            }
            if let Some((started, total)) = progress {
                draw_progress(started.elapsed(), total, writer.snapshots());
            }
            Ok(())
        }));
    if progress.is_some() {
        say!();
    }
    // Whatever ended the run, keep what was recorded.
    let flushed = writer.finish();
    let session::Ran { ended, command, .. } = result?;
    flushed.map_err(Failure::Runtime)?;
    let nothing = (writer.snapshots() == 0).then_some("nothing recorded, no file written");
    let code = args.targets.exit(ended, command, nothing);
    if nothing.is_none() {
        say!(
            "udamon: {} snapshots written to {} ({})",
            writer.snapshots(),
            args.output.display(),
            args.format
        );
    }
    code
}

fn draw_progress(elapsed: Duration, total: Duration, snapshots: usize) {
    const WIDTH: usize = 30;
    let done = (elapsed.as_secs_f64() / total.as_secs_f64().max(1e-9)).min(1.0);
    let filled = (done * WIDTH as f64) as usize;
    let mut stderr = std::io::stderr().lock();
    let _ = write!(
        stderr,
        "\r[{}{}] {:.0}/{:.0} s, {snapshots} snapshots ",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        elapsed.as_secs_f64(),
        total.as_secs_f64()
    );
    let _ = stderr.flush();
}
