//! What udamon produces from snapshots: records in damo's formats, reports on them, Prometheus
//! metrics, and the simulator's tables.

pub mod metrics;
pub mod record;
pub mod report;
pub mod sim;
