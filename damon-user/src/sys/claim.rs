//! One udamon per process: two monitors of one process clear each other's accessed bits, and
//! both read wrong. Each target is claimed with an exclusive `flock` on a file under `DIR`,
//! named by the process's pid and start time (a reused pid is another process). The kernel
//! drops the lock when udamon exits, however it exits (SIGKILL included); a clean release also
//! removes the file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

pub const DIR: &str = "/run/udamon/targets";

/// A claimed process, released on drop.
#[derive(Debug)]
pub struct Claim {
    /// Holds the lock while open.
    _file: File,
    path: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Removed while still locked: whoever opens the path next makes a new file.
        let _ = fs::remove_file(&self.path);
    }
}

/// Why a claim failed.
#[derive(Debug)]
pub enum Refused {
    /// Another udamon holds it: its pid, when it wrote one.
    Held(Option<u32>),
    Io(io::Error),
}

/// The start time of `pid` in clock ticks since boot (field 22 of its stat).
fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command (field 2) may hold spaces and parentheses: count from its closing one.
    let after = stat.rsplit_once(')').map_or("", |s| s.1);
    after
        .split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/PID/stat"))
}

fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor this function's caller owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(err) }
}

/// Claims process `pid` for this udamon.
pub fn claim(pid: u32) -> Result<Claim, Refused> {
    let path = PathBuf::from(DIR).join(format!("{pid}-{}", start_time(pid).map_err(Refused::Io)?));
    if !Path::new(DIR).is_dir() {
        fs::create_dir_all(DIR).map_err(Refused::Io)?;
        // Shared by every udamon, root or the service's transient user, as /tmp is.
        let _ = fs::set_permissions(DIR, fs::Permissions::from_mode(0o1777));
    }
    loop {
        let open = |write| {
            OpenOptions::new().read(true).write(write).create(write).truncate(false).open(&path)
        };
        // Another user's file (left by a udamon killed with SIGKILL) still takes a lock.
        let mut file = match open(true) {
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => open(false),
            opened => opened,
        }
        .map_err(Refused::Io)?;
        if !try_lock(&file).map_err(Refused::Io)? {
            let holder = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok());
            return Err(Refused::Held(holder));
        }
        // The holder before us may have removed the file after we opened it: then the lock is
        // on a file no one else can find, and the path is free for a new one.
        let same =
            fs::metadata(&path).is_ok_and(|m| m.ino() == file.metadata().map_or(0, |f| f.ino()));
        if !same {
            continue;
        }
        // Who holds it, for the refusal's message (not on another user's file).
        if file.set_len(0).is_ok() {
            let _ = write!(file, "{}", std::process::id());
        }
        return Ok(Claim { _file: file, path });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock of another open file description conflicts as another process's would.
    #[test]
    fn a_claimed_process_cannot_be_claimed_again_until_released() {
        if !crate::test_support::privileged(
            "a_claimed_process_cannot_be_claimed_again_until_released",
        ) {
            return;
        }
        let me = std::process::id();
        let first = claim(me).expect("the first claim");
        assert!(matches!(claim(me), Err(Refused::Held(Some(pid))) if pid == me));
        let path = first.path.clone();
        drop(first);
        assert!(!path.exists(), "a released claim leaves no file");
        let again = claim(me).expect("claimed again once released");
        drop(again);
    }
}
