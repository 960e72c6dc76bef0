//! What `monitor` and `record` watch: running processes by pid, or a command udamon starts
//! and follows until it exits.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::anyhow;
use clap::Args;

use super::Failure;
use crate::{monitor::session::Targets, output::metrics::server, sys::cgroup::Cgroup};

#[derive(Args)]
pub struct TargetArgs {
    /// Processes to monitor, by pid.
    #[arg(value_name = "PID")]
    pids: Vec<u32>,
    /// Or every process of this cgroup v2 group (a path, absolute or below /sys/fs/cgroup),
    /// followed as processes join and leave it.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<String>,
    /// Or a command to start and monitor until it exits: `-- CMD ARGS...`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// A command udamon started: stopped (SIGTERM, then SIGKILL after 2 s) if it outlives us.
pub struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
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
                let child = Command::new(program)
                    .args(args)
                    .spawn()
                    .map_err(|err| Failure::Input(anyhow!("cannot run `{program}`: {err}")))?;
                Ok((Targets::Pids(vec![child.id()]), Some(Started(child))))
            }
            ([_, ..], [_, ..]) => unreachable!("refused above"),
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
