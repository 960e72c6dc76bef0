//! What `monitor` and `record` watch: running processes by pid, or a command udamon starts
//! and follows until it exits.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::anyhow;
use clap::Args;

use super::Failure;

#[derive(Args)]
pub struct TargetArgs {
    /// Processes to monitor, by pid.
    #[arg(value_name = "PID")]
    pids: Vec<u32>,
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
    /// The pids to monitor, and the command if we started one.
    pub fn resolve(&self) -> Result<(Vec<u32>, Option<Started>), Failure> {
        match (&self.pids[..], &self.command[..]) {
            ([], []) => {
                Err(Failure::Input(anyhow!("nothing to monitor: give PIDs or -- CMD ARGS")))
            }
            ([_, ..], [_, ..]) => {
                Err(Failure::Input(anyhow!("give PIDs or -- CMD ARGS, not both")))
            }
            (pids, []) => {
                let mut unique = pids.to_vec();
                unique.sort_unstable();
                unique.dedup();
                if unique.len() != pids.len() {
                    return Err(Failure::Input(anyhow!("a pid is given more than once")));
                }
                Ok((pids.to_vec(), None))
            }
            ([], [program, args @ ..]) => {
                let child = Command::new(program)
                    .args(args)
                    .spawn()
                    .map_err(|err| Failure::Input(anyhow!("cannot run `{program}`: {err}")))?;
                Ok((vec![child.id()], Some(Started(child))))
            }
        }
    }
}
