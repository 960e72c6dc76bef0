//! Targets that change under the monitor (root; under CI=true these must run): a storm of
//! mappings, protections, threads, forks and execs, a stop and a continue, and a target that
//! exits as it is added. udamon follows each, never drops a live target, never keeps a dead one,
//! and the sampler never stalls.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Maps, grows, protects and unmaps areas of 1 to 64 pages without pause, and every few
/// milliseconds starts and joins a thread or forks a child that execs `true`.
const STORM: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void *touch(void *area) { memset(area, 1, 4096); return NULL; }

int main(void) {
    char *keep = mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(keep, 1, 8 << 20);
    printf("ready\n");
    fflush(stdout);
    for (unsigned long i = 0;; i++) {
        size_t pages = 1 + i % 64, len = pages * 4096;
        char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (a == MAP_FAILED) return 1;
        memset(a, 2, len);
        char *b = mremap(a, len, 2 * len, MREMAP_MAYMOVE);
        if (b == MAP_FAILED) return 1;
        b[len] = 3;
        mprotect(b, 4096, PROT_READ);
        munmap(b, 2 * len);
        keep[(i * 4096) % (8 << 20)]++;
        if (i % 512 == 0) {
            pthread_t t;
            pthread_create(&t, NULL, touch, keep);
            pthread_join(t, NULL);
        }
        if (i % 4096 == 0) {
            pid_t child = fork();
            if (child == 0) { execl("/bin/true", "true", (char *)NULL); _exit(0); }
            waitpid(child, NULL, 0);
        }
    }
}
"#;

/// Starts a child that shares this process's address space (`clone(CLONE_VM)`, as vfork and
/// posix_spawn do) and, a second later, execs `argv[1..]`; prints the child's pid, then keeps
/// its own memory and waits.
const SHARED_THEN_EXEC: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static char stack[1 << 16];
static char **program;

static int child(void *unused) {
    (void)unused;
    sleep(1);
    // Its own descriptors (no CLONE_FILES): only the parent prints, on a pipe read once.
    dup2(open("/dev/null", O_WRONLY), 1);
    execv(program[0], program);
    return 127;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    program = argv + 1;
    pid_t pid = clone(child, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL);
    if (pid < 0) return 1;
    printf("%d\n", pid);
    fflush(stdout);
    waitpid(pid, NULL, 0);
    return 0;
}
"#;

fn udamon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_udamon"))
}

/// A process opened while it shares another's address space (a vfork or posix_spawn child
/// before its exec) is followed into its own after the exec: no walk of an address space its
/// exec left, which the other process keeps alive.
#[test]
fn a_child_that_shared_its_parents_memory_is_followed_after_its_exec() {
    if !damon_user::test_support::privileged(
        "a_child_that_shared_its_parents_memory_is_followed_after_its_exec",
    ) {
        return;
    }
    let launcher = damon_user::test_support::build_c("shared_then_exec", SHARED_THEN_EXEC);
    let workload = env!("CARGO_BIN_EXE_udamon");
    let mut parent = Command::new(launcher)
        .args([workload, "workload", "--phase-change", "1h"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = parent.stdout.take().unwrap();
    let parent = Storm(parent);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let pid: u32 = line.trim().parse().expect("the child's pid");
    // Killed first, however the test ends: the parent only waits for it.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            signal(self.0, libc::SIGKILL);
        }
    }
    let (_child, _parent) = (Kill(pid), parent);
    let out = udamon().args(["monitor", "--json", "--duration", "5s", &pid.to_string()]).output();
    let out = out.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // Long after the exec and an update.
    damon_user::test_support::assert_workload_seen_in_last_second(&text);
}

fn build_storm() -> PathBuf {
    damon_user::test_support::build_c("storm", STORM)
}

struct Storm(Child);

impl Drop for Storm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, signal) };
}

#[test]
fn a_target_in_a_storm_of_changes_is_followed_to_the_end() {
    if !damon_user::test_support::privileged(
        "a_target_in_a_storm_of_changes_is_followed_to_the_end",
    ) {
        return;
    }
    let mut child = Command::new(build_storm()).stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let storm = Storm(child);
    let pid = storm.0.id();
    let monitor = udamon()
        .args(["monitor", "--json", "--duration", "6s", &pid.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stopped for a second in the middle, then continued.
    std::thread::sleep(Duration::from_secs(2));
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    signal(pid, libc::SIGCONT);
    let out = monitor.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert!(!lines.iter().any(|l| l.get("gone").is_some()), "a live target dropped: {lines:?}");
    let snapshots: Vec<&Value> = lines.iter().filter(|l| l.get("snapshot").is_some()).collect();
    assert!(snapshots.iter().all(|s| s["target_id"] == pid));
    // 60 windows of 100 ms in 6 s: a stalled sampler would show far fewer.
    assert!(snapshots.len() >= 45, "{} snapshots in 6 s", snapshots.len());
    assert!(snapshots.iter().all(|s| s["nr_regions"].as_u64().unwrap() > 0));
    let late = snapshots.last().unwrap()["late_ticks"].as_u64().unwrap();
    let ticks = snapshots.last().unwrap()["ticks"].as_u64().unwrap();
    assert!(late * 4 < ticks, "{late} of {ticks} sample ticks late");
}

/// A target that exits within a millisecond of being named ends the run promptly, with a line
/// that says so, whichever comes first: udamon's open or the exit.
#[test]
fn a_target_that_exits_as_it_is_added_is_reported_as_exited() {
    if !damon_user::test_support::privileged(
        "a_target_that_exits_as_it_is_added_is_reported_as_exited",
    ) {
        return;
    }
    for round in 0..10 {
        let mut short = Command::new("sleep").arg("0.001").spawn().unwrap();
        let pid = short.id().to_string();
        let started = Instant::now();
        let out = udamon().args(["monitor", "--duration", "20s", &pid]).output().unwrap();
        let _ = short.wait();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {round}: udamon kept a dead target"
        );
        assert!(
            said.contains(&format!("pid {pid}")) && said.contains("exited"),
            "round {round}: {said}"
        );
    }
}
