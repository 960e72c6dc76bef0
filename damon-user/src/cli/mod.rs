//! The `udamon` command line. Exit codes: 0 success, 1 a runtime failure (or `check` finding
//! monitoring impossible, or a run that ended unplanned, or an output that failed after the
//! start-up check passed, e.g. a full disk), 2 bad input (usage, options, files, an output that
//! cannot be written at start-up); after `-- CMD` exited, the command's status as the shell
//! gives it.

mod convert;
mod demo;
mod kdamond;
mod monitor;
pub(crate) mod options;
mod reclaim;
mod record;
mod report;
mod schemes;
mod sim;
mod targets;

use std::{
    io::{self, Write as _},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

use crate::{check, monitor::session::SessionError};

#[derive(Parser)]
#[command(version, about = "DAMON-style memory access monitoring from userspace, with eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check this machine: privileges, kernel features and which BPF program types work here.
    /// Exits 0 when monitoring can work, 1 when it cannot.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    Monitor(monitor::MonitorArgs),
    Record(record::RecordArgs),
    Reclaim(reclaim::ReclaimArgs),
    Report(report::ReportArgs),
    Convert(convert::ConvertArgs),
    Sim(sim::SimArgs),
    Demo(demo::DemoArgs),
    Kdamond(kdamond::KdamondArgs),
    /// Print a shell completion script (e.g. `udamon completions bash > /etc/bash_completion.d/udamon`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The demo's workload (internal).
    #[command(hide = true)]
    Workload {
        #[arg(long, default_value = "4s")]
        phase_change: String,
        /// Instead: a memory-bound loop over this many bytes, printing sweeps per second.
        #[arg(long, value_name = "SIZE")]
        memory_loop: Option<String>,
    },
}

/// A failure and the exit code it deserves.
pub(crate) enum Failure {
    /// Bad input: exit 2.
    Input(anyhow::Error),
    /// Something went wrong while working: exit 1.
    Runtime(anyhow::Error),
    /// The command followed failed the run: the command's exit status (never 0).
    Command(anyhow::Error, u8),
}

impl From<SessionError> for Failure {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Input(err) => Self::Input(err),
            SessionError::Runtime(err) => Self::Runtime(err),
        }
    }
}

pub fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Check { json } => run_check(json),
        Command::Monitor(args) => monitor::run(args),
        Command::Record(args) => record::run(args),
        Command::Reclaim(args) => reclaim::run(args),
        Command::Report(args) => report::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "udamon",
                &mut script,
            );
            emit(&String::from_utf8_lossy(&script)).map(|()| ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(args),
        Command::Kdamond(args) => kdamond::run(args),
        Command::Workload { phase_change, memory_loop } => {
            run_workload(&phase_change, memory_loop.as_deref())
        }
    };
    let (err, code) = match result {
        Ok(code) => return code,
        Err(Failure::Input(err)) => (err, ExitCode::from(2)),
        Err(Failure::Runtime(err)) => (err, ExitCode::FAILURE),
        Err(Failure::Command(err, status)) => (err, ExitCode::from(status)),
    };
    say!("udamon: {}", crate::util::one_line(&format!("{err:#}")));
    code
}

fn run_workload(phase_change: &str, memory_loop: Option<&str>) -> Result<ExitCode, Failure> {
    let result = match memory_loop {
        Some(size) => {
            let size = damon_engine::units::parse_size(size).map_err(Failure::Input)?;
            crate::workload::memory_loop(size as usize)
        }
        None => {
            let phase_change =
                options::offset(phase_change, "phase-change").map_err(Failure::Input)?;
            crate::workload::run(std::time::Duration::from_micros(phase_change))
        }
    };
    result.map_err(Failure::Runtime)?;
    Ok(ExitCode::SUCCESS)
}

fn run_check(json: bool) -> Result<ExitCode, Failure> {
    let report = check::run();
    emit(&if json { check::json(&report) + "\n" } else { check::table(&report) })?;
    Ok(if report.monitoring_possible { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Writes to stdout; a reader that went away (`| head`) is not an error, a full disk is.
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write the output: {err}"))
        }
        _ => Ok(()),
    }
}

/// `print` for a command's own output: a failure is a runtime one.
pub(crate) fn emit(text: &str) -> Result<(), Failure> {
    print(text).map_err(Failure::Runtime)
}
