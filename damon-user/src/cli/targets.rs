//! What `monitor` and `record` watch: running processes by pid, or a command udamon starts
//! and follows until it exits.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Args;

use super::Failure;
use crate::{
    monitor::{
        command::Started,
        session::{Ended, Targets},
    },
    output::metrics::server,
    sys::cgroup::Cgroup,
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

impl TargetArgs {
    /// What to monitor.
    pub fn resolve(&self) -> Result<Targets, Failure> {
        let given = [!self.pids.is_empty(), self.cgroup.is_some(), !self.command.is_empty()];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err(Failure::Input(anyhow!("give one of PIDs, --cgroup or -- CMD ARGS")));
        }
        if let Some(path) = &self.cgroup {
            return Ok(Targets::Cgroup(Cgroup::open(path).map_err(Failure::Input)?));
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
                if let Some(pid) = pids.iter().find(|&&pid| crate::sys::process::is_zombie(pid)) {
                    return Err(Failure::Input(anyhow!(
                        "pid {pid} has exited already (a zombie its parent has not reaped): nothing to monitor"
                    )));
                }
                Ok(Targets::Pids(pids.to_vec()))
            }
            ([], command) => Ok(Targets::Command(command.to_vec())),
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
                let program = command.program();
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
