//! Why a walk or a clear failed. Only `Exited` ends a target; the rest are reported and the
//! samples they cost read unknown.

use std::{fmt, io};

#[derive(Debug)]
pub enum DataPlaneError {
    /// The process has exited (ESRCH).
    Exited,
    /// `process_madvise` refused to clear a range, with this errno: EINVAL for memory the kernel
    /// will not advise (locked, hugetlb, PFN-mapped), EPERM without the right to.
    Refused { addr: u64, len: u64, errno: i32 },
    /// A system call failed for another reason (EMFILE, ENOMEM, ...).
    Syscall { call: &'static str, errno: i32 },
    /// A BPF map could not be read or written.
    Map { map: &'static str, error: String },
}

impl DataPlaneError {
    /// A short name for metrics and JSON (`exited`, `clear_refused`, `syscall`, `map`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Refused { .. } => "clear_refused",
            Self::Syscall { .. } => "syscall",
            Self::Map { .. } => "map",
        }
    }

    pub(crate) fn syscall(call: &'static str, err: &io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ESRCH) => Self::Exited,
            errno => Self::Syscall { call, errno: errno.unwrap_or(0) },
        }
    }
}

fn describe(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

impl fmt::Display for DataPlaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited => write!(f, "the process has exited"),
            Self::Refused { addr, len, errno } => {
                write!(f, "the kernel refuses to clear accessed bits at {addr:#x} (+{len:#x}): ")?;
                match *errno {
                    libc::EINVAL => write!(f, "locked, hugetlb or PFN-mapped memory"),
                    libc::EPERM => write!(f, "not permitted (CAP_SYS_NICE and ptrace access)"),
                    other => write!(f, "{}", describe(other)),
                }
            }
            Self::Syscall { call, errno } => write!(f, "{call} failed: {}", describe(*errno)),
            Self::Map { map, error } => write!(f, "BPF map {map}: {error}"),
        }
    }
}

impl std::error::Error for DataPlaneError {}
