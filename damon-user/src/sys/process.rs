//! What a pid names: whether the kernel could have given it out, and whether it is a process or
//! one of a process's threads; and children that die with udamon.

use std::{fs, os::unix::process::CommandExt as _, process::Command};

/// The kernel's `PID_MAX_LIMIT`, when `pid_max` cannot be read.
const PID_MAX_LIMIT: u32 = 1 << 22;

/// Whether `pid` lies in the kernel's range of pids (1..=pid_max).
pub fn possible(pid: u32) -> bool {
    let max = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(PID_MAX_LIMIT);
    (1..=max).contains(&pid)
}

/// The process (thread group) that task `pid` belongs to: itself for a process, another pid for
/// a thread; None if it cannot be read (gone, or /proc unreadable: the caller finds out why).
pub fn thread_group(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|t| t.trim().parse().ok())
}

/// Whether task `pid` is a kernel thread (`PF_KTHREAD` in its stat flags): a process whose
/// mappings are gone because it is exiting is not one, though both list no mappings. None if
/// its stat cannot be read (it is gone).
pub fn is_kernel_thread(pid: u32) -> Option<bool> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    // Flags are field 9.
    let flags: u64 = stat_field(pid, 9)?.parse().ok()?;
    Some(flags & PF_KTHREAD != 0)
}

/// Whether process `pid` has exited and waits for its parent to reap it: its leader is a zombie
/// (state `Z`) and no other thread of it runs on.
pub fn is_zombie(pid: u32) -> bool {
    let threads = fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse::<u32>().ok())
    });
    stat_field(pid, 3).is_some_and(|state| state == "Z") && threads.is_none_or(|n| n <= 1)
}

/// Field `n` (from 3 on) of `/proc/PID/stat`, counted from the command's closing parenthesis,
/// since field 2 may hold anything.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(n - 3).map(str::to_owned)
}

/// Makes the child `command` starts get SIGKILL when udamon dies, however it dies (SIGKILL
/// included, where no drop runs): a parent-death signal. The kernel sends it when the thread
/// that spawned the child exits, so spawn from a thread that lives as long as udamon.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    let parent = std::process::id();
    // SAFETY: prctl, getppid and raise only, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // udamon died before the prctl: no signal would ever come.
            if libc::getppid() as u32 != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_belong_to_their_process() {
        let me = std::process::id();
        assert_eq!(thread_group(me), Some(me));
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let live = std::thread::spawn(move || {
            // SAFETY: gettid cannot fail.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = done_rx.recv();
        });
        assert_eq!(thread_group(rx.recv().unwrap()), Some(me));
        drop(done_tx);
        live.join().unwrap();
        assert!(!possible(0) && !possible(u32::MAX) && possible(1));
    }

    #[test]
    fn kernel_threads_are_told_from_processes() {
        // kthreadd is pid 2 on every Linux; a zombie's flags keep PF_KTHREAD clear.
        assert_eq!(is_kernel_thread(2), Some(true));
        assert_eq!(is_kernel_thread(std::process::id()), Some(false));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(is_kernel_thread(pid), Some(false), "a zombie is no kernel thread");
        child.wait().unwrap();
        assert_eq!(is_kernel_thread(pid), None, "reaped");
    }
}
