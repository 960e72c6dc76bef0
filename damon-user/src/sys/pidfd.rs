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
        self.madvise(ranges, libc::MADV_COLD)
    }

    /// `process_madvise(advice)` over `ranges` (at most IOV_MAX). A call stops at the first
    /// range it cannot advise; returns the bytes advised before it.
    pub fn madvise(&self, ranges: &[libc::iovec], advice: libc::c_int) -> io::Result<usize> {
        // SAFETY: `ranges` is a valid iovec array for its length; the kernel only reads it.
        let advised = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                self.0.as_raw_fd(),
                ranges.as_ptr(),
                ranges.len(),
                advice,
                0,
            )
        };
        if advised < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(advised as usize)
    }

    /// `madvise` over all of `iovecs` (at most IOV_MAX), as many calls as it takes: a range
    /// unmapped since it was chosen is skipped (ENOMEM); one the kernel refuses (EINVAL,
    /// EPERM, EACCES, EAGAIN, EBUSY) is skipped and handed to `refused` with its errno; any
    /// other failure (ESRCH: the process exited) ends it. Returns the bytes advised.
    pub fn advise_all(
        &self,
        iovecs: &[libc::iovec],
        advice: libc::c_int,
        mut refused: impl FnMut(&libc::iovec, i32),
    ) -> io::Result<u64> {
        let (mut remaining, mut total) = (iovecs, 0u64);
        while let Some(first) = remaining.first() {
            match self.madvise(remaining, advice) {
                Ok(advised) => {
                    total += advised as u64;
                    let mut done = 0;
                    let failed = remaining.iter().position(|v| {
                        done += v.iov_len;
                        done > advised
                    });
                    // The next call starts at the failed range, to learn why it failed.
                    remaining = failed.map_or(&[], |i| &remaining[i..]);
                }
                Err(err) => match err.raw_os_error() {
                    Some(libc::ENOMEM) => remaining = &remaining[1..],
                    Some(
                        errno @ (libc::EINVAL
                        | libc::EPERM
                        | libc::EACCES
                        | libc::EAGAIN
                        | libc::EBUSY),
                    ) => {
                        refused(first, errno);
                        remaining = &remaining[1..];
                    }
                    _ => return Err(err),
                },
            }
        }
        Ok(total)
    }
}
