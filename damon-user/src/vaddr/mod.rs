//! The vaddr operations: processes' virtual address spaces, checked by the eBPF page-table
//! walker and cleared by `process_madvise(MADV_COLD)`; DAMOS actions by `process_madvise` too.

pub mod actions;
pub mod ops;
pub mod regions;

pub use self::ops::VaddrOps;
