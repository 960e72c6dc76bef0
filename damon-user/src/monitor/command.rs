//! A command a run starts and follows: started once the data plane is loaded (so that its
//! first instructions are already monitored), stopped if it outlives the run.

use std::{
    os::unix::process::ExitStatusExt as _,
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::sys::process;

/// A command udamon started: stopped (SIGTERM, then SIGKILL after 2 s) if it outlives the run,
/// and killed by the kernel if udamon dies first (see `spawn`).
pub struct Started {
    child: Child,
    program: String,
}

impl Started {
    /// Starts `program`, to die with udamon (see `die_with_parent`): spawned from the main
    /// thread (the runtime is current-thread), which lives as long as udamon does. Returns
    /// once the program runs (after its exec).
    pub(super) fn spawn(program: &str, args: &[String]) -> std::io::Result<Self> {
        let mut command = Command::new(program);
        process::die_with_parent(command.args(args));
        Ok(Self { child: command.spawn()?, program: program.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// Its exit status as the shell gives it: the exit code, or 128 + the ending signal.
    pub fn status(&mut self) -> u8 {
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
