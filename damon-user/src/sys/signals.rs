//! Holding signals back while programs load: the kernel's verifier gives up a load (EAGAIN)
//! when a signal the process catches is pending, so a Ctrl-C or SIGUSR1 at the wrong moment
//! would fail the start instead of being handled once the run begins.

/// Blocks `signals` on this thread until dropped; threads started meanwhile keep them blocked,
/// so these signals always reach this thread.
pub struct Held(libc::sigset_t);

impl Held {
    pub fn new(signals: &[libc::c_int]) -> Self {
        // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset; pthread_sigmask
        // changes only this thread's mask and fills `old`.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &signal in signals {
                libc::sigaddset(&mut set, signal);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Self(old)
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`; pending signals are delivered now.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}
