//! Migration schemes (root; under CI=true these must run). With two NUMA nodes or more (the
//! vm-test guests boot with two), `migrate_cold` moves a process's cold pages to the node asked;
//! with one (this host), migration is refused up front, one line, exit 2.

use std::process::Command;

const MIB: u64 = 1 << 20;

/// A forked child (the vm-test guests have no C compiler) that writes a 16 MiB cold area once
/// and reads a 4 MiB hot one in a loop: (pid, cold start, hot start). Killed when dropped.
struct Child(i32, u64, u64);

impl Child {
    fn spawn() -> Self {
        use damon_user::test_support::map;
        use std::sync::atomic::{AtomicU32, Ordering};
        let (cold, hot) =
            (map(16 * MIB as usize, libc::MAP_PRIVATE), map(4 * MIB as usize, libc::MAP_PRIVATE));
        let ready = map(4096, libc::MAP_SHARED) as *const AtomicU32;
        // SAFETY: the child only writes its memory and sleeps until killed: fork-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let touch = |from: usize, len: u64| {
                for at in (from..from + len as usize).step_by(4096) {
                    // SAFETY: within the child's own areas.
                    unsafe { (at as *mut u8).write_volatile(1) };
                }
            };
            touch(cold, 16 * MIB);
            touch(hot, 4 * MIB);
            // SAFETY: the shared page outlives both.
            unsafe { (*ready).store(1, Ordering::Release) };
            loop {
                touch(hot, 4 * MIB);
                // SAFETY: plain sleep.
                unsafe { libc::usleep(1000) };
            }
        }
        // SAFETY: the shared page.
        while unsafe { (*ready).load(Ordering::Acquire) } == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Self(pid, cold as u64, hot as u64)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// Pages of `pid`'s `len` bytes from `start` on each node, as `move_pages` reports them (asked
/// without nodes, it moves nothing and says where each page is).
fn pages_per_node(pid: u32, start: u64, len: u64) -> Vec<(u32, u64)> {
    let pages: Vec<*mut libc::c_void> =
        (start..start + len).step_by(4096).map(|a| a as *mut libc::c_void).collect();
    let mut status = vec![0 as libc::c_int; pages.len()];
    // SAFETY: `pages` and `status` are as long as the count; no nodes: a query.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            pid as libc::c_int,
            pages.len() as libc::c_ulong,
            pages.as_ptr(),
            std::ptr::null::<libc::c_int>(),
            status.as_mut_ptr(),
            0,
        )
    };
    assert_eq!(r, 0, "move_pages query: {}", std::io::Error::last_os_error());
    let mut counts: Vec<(u32, u64)> = Vec::new();
    for &node in status.iter().filter(|&&n| n >= 0) {
        match counts.iter_mut().find(|c| c.0 == node as u32) {
            Some(c) => c.1 += 1,
            None => counts.push((node as u32, 1)),
        }
    }
    counts
}

#[test]
fn migrate_cold_moves_cold_pages_to_the_node_asked() {
    if !damon_user::test_support::privileged("migrate_cold_moves_cold_pages_to_the_node_asked") {
        return;
    }
    let scheme = ["--damos_action", "migrate_cold", "1", "--damos_access_rate", "0", "0"];
    let nodes = damon_user::sys::memory::nodes_online();
    if nodes.len() < 2 {
        let out = Command::new(env!("CARGO_BIN_EXE_udamon"))
            .args(["monitor", "1", "--duration", "1s"])
            .args(scheme)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("migration needs two NUMA nodes or more"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        return;
    }
    let child = Child::spawn();
    let (pid, cold, hot) = (child.0 as u32, child.1, child.2);
    let on = |node, pages: &[(u32, u64)]| pages.iter().find(|p| p.0 == node).map_or(0, |p| p.1);
    let before = pages_per_node(pid, cold, 16 * MIB);
    let out = Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["monitor", &pid.to_string(), "--duration", "6s", "--quiet"])
        .args(scheme)
        .args(["--damos_age", "2s", "max"])
        .output()
        .unwrap();
    let (cold_after, hot_after) =
        (pages_per_node(pid, cold, 16 * MIB), pages_per_node(pid, hot, 4 * MIB));
    drop(child);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!("cold area per node before {before:?}, after {cold_after:?}; hot after {hot_after:?}");
    assert!(on(1, &cold_after) * 4096 >= 16 * MIB * 8 / 10, "cold pages on node 1: {cold_after:?}");
    // Where the hot pages end up is not asserted: under TCG (one CPU for the sampler and the
    // workload) the hot area read idle long enough to be moved in two runs of four (half of it,
    // then all of it), so this guest cannot tell the policy's choice from the mechanism.
}
