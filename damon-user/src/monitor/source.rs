//! What the monitor asks of its operations beyond the engine's: opening and closing targets by
//! pid, what went wrong, and what it cost.

use std::{fmt, time::Duration};

use damon_engine::{Operations, Target};
use serde::Serialize;

/// Operations the monitor can run: the engine's, plus target control.
pub trait Source: Operations + Send + 'static {
    /// Starts watching process `pid`; returns its (still empty) engine target.
    fn open(&mut self, pid: u32) -> Result<Target, TargetError>;

    /// Forgets process `pid` (after its target left the engine).
    fn close(&mut self, pid: u32);

    /// What went wrong since the last call without ending a target, one entry per target and
    /// kind of problem.
    fn problems(&mut self) -> Vec<Problem> {
        Vec::new()
    }

    fn stats(&self) -> OpsStats {
        OpsStats::default()
    }

    /// Looks for targets that exited without a sample to see it (monitoring paused); true if
    /// any did.
    fn poll_exits(&mut self) -> bool {
        false
    }
}

/// Something that went wrong for one target, `count` times since last reported, without
/// ending it: the samples it cost read unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub pid: u32,
    /// A short name (`clear_refused`, `syscall`, `map`, ...), for metrics and JSON.
    pub kind: &'static str,
    /// The first occurrence, for people.
    pub message: String,
    pub count: u64,
}

/// What the operations spent, where they can tell.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OpsStats {
    /// The eBPF walker's own time, and on how many addresses.
    pub walk_time: Duration,
    pub walked_addresses: u64,
    /// Filling walk requests and the walk-only calls (the kernel's walk included).
    pub walking: Duration,
    /// The clearing calls, and the pages they cleared.
    pub clearing: Duration,
    pub cleared_pages: u64,
    /// Clears withheld under memory pressure (their samples read unknown).
    pub withheld_clears: u64,
}

/// Why a pid cannot be monitored: one line for the user.
#[derive(Debug)]
pub enum TargetError {
    NoSuchProcess(u32),
    /// udamon's own process (or one of its threads): monitoring it would watch the watcher.
    Itself(u32),
    /// A thread id (first) of another process (second): processes are monitored whole.
    Thread(u32, u32),
    KernelThread(u32),
    /// It exited (or is exiting) before monitoring began: `Monitor::start` takes it as an exit;
    /// a cgroup member that did is refused.
    Exited(u32),
    /// Permission denied (EPERM, EACCES): capabilities are the likely cause.
    Denied(u32, std::io::Error),
    /// Another udamon monitors it (its pid, when known): both would read wrong.
    Claimed(u32, Option<u32>),
    Other(u32, anyhow::Error),
}

impl TargetError {
    /// Whether the user asked for something impossible (exit 2), rather than something failing
    /// while it was done (exit 1).
    pub fn is_input(&self) -> bool {
        !matches!(self, Self::Exited(_) | Self::Claimed(..) | Self::Other(..))
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchProcess(pid) => write!(f, "no process with pid {pid}"),
            Self::Itself(pid) => write!(f, "pid {pid} is udamon itself"),
            Self::Thread(tid, pid) => write!(f, "{tid} is a thread of process {pid}"),
            Self::KernelThread(pid) => {
                write!(f, "pid {pid} is a kernel thread: it has no address space to monitor")
            }
            Self::Exited(pid) => write!(f, "pid {pid} exited before the first sample"),
            Self::Denied(pid, err) => {
                use crate::sys::caps::{CapSet, Capability};
                let caps = CapSet::current();
                // Capabilities are blamed only where udamon lacks one.
                if [Capability::SysPtrace, Capability::DacReadSearch].iter().all(|&c| caps.has(c)) {
                    write!(
                        f,
                        "cannot monitor pid {pid}: {err}, although udamon has CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: the kernel refuses all the same (e.g. a security module's policy)"
                    )
                } else {
                    write!(
                        f,
                        "cannot monitor pid {pid}: {err} (another user's process needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)"
                    )
                }
            }
            Self::Claimed(pid, holder) => {
                let holder = holder.map_or_else(String::new, |h| format!(" (pid {h})"));
                write!(
                    f,
                    "pid {pid} is monitored by another udamon{holder}: two monitors clear each other's accessed bits and both read wrong"
                )
            }
            Self::Other(pid, err) => write!(f, "cannot monitor pid {pid}: {err:#}"),
        }
    }
}

impl std::error::Error for TargetError {}
