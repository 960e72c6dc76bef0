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
