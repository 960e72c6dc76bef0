//! What `monitor` and `record` watch: running processes by pid, or a command udamon starts
//! and follows until it exits.

use std::{
    os::unix::process::ExitStatusExt as _,
    process::{Child, Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::anyhow;
use clap::Args;

use super::Failure;
use crate::{
    monitor::session::{Ended, Targets},
    output::metrics::server,
    sys::{cgroup::Cgroup, process},
};

#[derive(Args)]
pub struct TargetArgs {
    /// Processes to monitor, by pid.
    #[arg(value_name = "PID")]
    pids: Vec<u32>,
    /// Or every process of this cgroup v2 group (a path, absolute or below /sys/fs/cgroup),
    /// followed as processes join and leave it.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<String>,
    /// Or a command to start and monitor until it exits: `-- CMD ARGS...`. udamon then exits
    /// with the command's status (as the shell: 128 + N after signal N); the command is killed
    /// if udamon dies (a parent-death signal).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// A command udamon started: stopped (SIGTERM, then SIGKILL after 2 s) if it outlives the run,
/// and killed by the kernel if udamon dies first (see `spawn`).
pub struct Started {
    child: Child,
    program: String,
}

impl Started {
    /// Starts `program`, to die with udamon (see `die_with_parent`): spawned from the main
    /// thread, which lives as long as udamon does.
    fn spawn(program: &str, args: &[String]) -> std::io::Result<Self> {
        let mut command = Command::new(program);
        process::die_with_parent(command.args(args));
        Ok(Self { child: command.spawn()?, program: program.to_owned() })
    }

    /// Its exit status as the shell gives it: the exit code, or 128 + the ending signal.
    fn status(&mut self) -> u8 {
        match self.child.wait() {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => code as u8,
                (None, Some(signal)) => 128 + signal as u8,
                (None, None) => 1,
            },
            Err(_) => 1,
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl TargetArgs {
    /// What to monitor, and the command if we started one.
    pub fn resolve(&self) -> Result<(Targets, Option<Started>), Failure> {
        let given = [!self.pids.is_empty(), self.cgroup.is_some(), !self.command.is_empty()];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err(Failure::Input(anyhow!("give one of PIDs, --cgroup or -- CMD ARGS")));
        }
        if let Some(path) = &self.cgroup {
            return Ok((Targets::Cgroup(Cgroup::open(path).map_err(Failure::Input)?), None));
        }
        match (&self.pids[..], &self.command[..]) {
            ([], []) => Err(Failure::Input(anyhow!(
                "nothing to monitor: give PIDs, --cgroup PATH or -- CMD ARGS"
            ))),
            (pids, []) => {
                let mut unique = pids.to_vec();
                unique.sort_unstable();
                unique.dedup();
                if unique.len() != pids.len() {
                    return Err(Failure::Input(anyhow!("a pid is given more than once")));
                }
                Ok((Targets::Pids(pids.to_vec()), None))
            }
            ([], [program, args @ ..]) => {
                let started = Started::spawn(program, args)
                    .map_err(|err| Failure::Input(anyhow!("cannot run `{program}`: {err}")))?;
                Ok((Targets::Pids(vec![started.child.id()]), Some(started)))
            }
            ([_, ..], [_, ..]) => unreachable!("refused above"),
        }
    }

    /// udamon's exit once a run is over and its output done. A planned end is 0; after the
    /// command udamon started exited, its status; a removed cgroup is a failure. `nothing`,
    /// when the run produced nothing, says what was lost: then the end is a failure too (the
    /// command's status if it failed, else 1).
    pub fn exit(
        &self,
        ended: Ended,
        started: Option<Started>,
        nothing: Option<&str>,
    ) -> Result<ExitCode, Failure> {
        let lost = nothing.map_or_else(String::new, |n| format!(": {n}"));
        let cause = match (ended, started) {
            (Ended::CgroupRemoved, _) => {
                let group = self.cgroup.as_deref().unwrap_or_default();
                return Err(Failure::Runtime(anyhow!("cgroup {group} was removed{lost}")));
            }
            (Ended::TargetsGone, Some(mut command)) => {
                let status = command.status();
                if nothing.is_none() {
                    return Ok(ExitCode::from(status));
                }
                let program = &command.program;
                let err = anyhow!(
                    "`{program}` exited (status {status}) before the first aggregation{lost}"
                );
                return Err(Failure::Command(err, status.max(1)));
            }
            (Ended::TargetsGone, None) => "every target exited",
            (Ended::Duration | Ended::Signal, _) => "stopped",
        };
        match nothing {
            Some(_) => Err(Failure::Runtime(anyhow!("{cause} before the first aggregation{lost}"))),
            None => Ok(ExitCode::SUCCESS),
        }
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics: PORT or :PORT (loopback only) or
    /// HOST:PORT (e.g. 0.0.0.0:9464 for every interface). Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

impl ServeArgs {
    pub fn addr(&self) -> Result<Option<std::net::SocketAddr>, Failure> {
        self.metrics.as_deref().map(server::parse_addr).transpose().map_err(Failure::Input)
    }
}
