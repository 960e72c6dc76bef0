//! System interfaces: procfs and sysfs files, syscalls, the kernel's BTF.

pub mod anon;
pub mod btf;
pub mod caps;
pub mod cgroup;
pub mod claim;
pub mod damon_sysfs;
pub mod kernel;
pub mod pagemap;
pub mod pidfd;
pub mod pressure;
pub mod proc_maps;
pub mod process;
pub mod signals;
pub mod tracefs;

/// The errno of the system call behind `err`, if an I/O error is in its chain.
pub fn io_errno(err: &anyhow::Error) -> Option<i32> {
    err.chain().find_map(|e| e.downcast_ref::<std::io::Error>()?.raw_os_error())
}
