//! udamon: DAMON-style memory access monitoring from userspace, with an eBPF data plane.

pub mod anon;
pub mod atomic_file;
pub mod btf;
pub mod caps;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod ebpf;
pub mod engine;
pub mod faults;
pub mod kernel;
pub mod metrics;
pub mod monitor;
pub mod pidfd;
pub mod record;
pub mod report;
pub mod sim;
pub mod table;
#[doc(hidden)]
pub mod test_support;
pub mod tracefs;
pub mod units;
pub mod vaddr;
pub mod workload;
