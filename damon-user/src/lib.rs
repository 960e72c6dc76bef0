//! udamon: DAMON's data access monitoring of processes from userspace, with an eBPF data plane.
//!
//! How data flows (each box is a module):
//!
//! ```text
//!  targets: pids, a cgroup, a command         page faults (eBPF ring)   add/remove (cgroup)
//!               │                                      │                        │
//!               ▼                                      ▼                        ▼
//!  monitor::session ── starts ──▶ monitor::Monitor: the sampler thread, one tick per sample
//!               │                  interval, runs damon_engine::Context::step, whose
//!               │                  Operations are vaddr::VaddrOps: page-table walks and clears
//!               │                  through dataplane (eBPF walker, process_madvise)
//!               ▼
//!  snapshot::Snapshot, one per aggregation ──▶ cli (live view)
//!                                          ──▶ output::record (damo's files) ──▶ output::report
//!                                          ──▶ output::metrics (Prometheus)
//! ```
//!
//! Layers, bottom up: `sys` (system interfaces: procfs, sysfs, syscalls, BTF), `dataplane` (the
//! eBPF object, loaded once: walker, fault stream, calibration), `vaddr` (the engine's
//! operations on processes), `monitor` (sampler thread and session), `snapshot` (what an
//! aggregation reports), `output` (records, reports, metrics), `util` (tables, atomic files),
//! then `check` (the environment doctor) and `cli`.

/// `eprintln!` that never panics: after SIGHUP a closed terminal fails writes (EIO), and that
/// must not turn a clean end into a crash; the line is lost instead.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod check;
pub mod cli;
pub mod dataplane;
#[doc(hidden)]
pub mod fuzz;
pub mod kdamond;
pub mod monitor;
pub mod output;
pub mod snapshot;
pub mod sys;
#[doc(hidden)]
pub mod test_support;
pub mod util;
pub mod vaddr;
pub mod workload;
