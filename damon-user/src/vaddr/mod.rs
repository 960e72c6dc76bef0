//! Virtual address spaces of processes, checked by the eBPF page-table walker.

pub mod layout;
pub mod leaf;
pub mod maps;
pub mod ops;
pub mod pagemap;
pub mod walker;
