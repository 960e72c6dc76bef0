//! Small utilities: terminal tables, files written whole.

pub mod atomic_file;
pub mod table;
