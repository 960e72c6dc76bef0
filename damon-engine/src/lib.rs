//! DAMON's monitoring core, as of Linux 7.3, and a simulator to judge it: regions, sampling,
//! aggregation, merge and split (with selectable split policies), ages, the size limit that
//! keeps `min_nr_regions`, interval auto-tuning, `damon_set_regions`, and DAMOS schemes.
//!
//! The engine knows nothing of processes, eBPF or command lines (this crate depends on none of
//! them). Address spaces plug in through [`Operations`], as the kernel's `damon_operations` do:
//! the simulator's [`sim`] is one, udamon's eBPF vaddr operations another.
//!
//! ```text
//! Context::start ─▶ Operations::init (regions), size limit, first sampling addresses
//! Context::step (every sample interval)
//!     ├─ Operations::check_and_prepare (or check, then prepare, when regions change)
//!     ├─ at an aggregation: merge (ages), DAMOS schemes (Operations::apply_scheme),
//!     │  `on_aggregated` callback, reset, split (policy)
//!     └─ at an ops update: Operations::update (regions re-fitted)
//! ```

mod attrs;
mod context;
mod merge;
mod ops;
mod region;
pub mod rng;
mod sampling;
pub mod schemes;
pub mod set_regions;
pub mod sim;
mod split;
pub mod toml_file;
mod tune;
pub mod units;
mod waste;

pub use self::{
    attrs::{Attrs, IntervalsGoal},
    context::{Config, Context, CoreVersion, Counters, MIN_REGION_SZ, Step},
    ops::{NO_PREPARE, Operations, partners_due},
    region::{Access, Region, Target},
    sampling::Sampling,
    split::SplitPolicy,
};

#[cfg(test)]
mod props;
