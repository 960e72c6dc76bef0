//! Process file descriptors, and `process_madvise` through them: how udamon clears accessed bits
//! of another process's pages.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

pub struct PidFd(OwnedFd);

impl PidFd {
    pub fn open(pid: u32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Whether the process has exited (a pidfd becomes readable then).
    pub fn exited(&self) -> bool {
        let mut poll = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no waiting.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready > 0 && poll.revents & (libc::POLLIN | libc::POLLHUP) != 0
    }

    /// `process_madvise(MADV_COLD)` over `ranges` (at most IOV_MAX): clears the accessed bits of
    /// the pages mapped there. Returns the number of bytes advised.
    pub fn madvise_cold(&self, ranges: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: `ranges` is a valid iovec array for its length; the kernel only reads it.
        let advised = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                self.0.as_raw_fd(),
                ranges.as_ptr(),
                ranges.len(),
                libc::MADV_COLD,
                0,
            )
        };
        if advised < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(advised as usize)
    }
}
