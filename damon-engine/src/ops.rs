//! The operations trait: how a source of access information plugs into the engine, in the spirit
//! of the kernel's `damon_operations`. The engine owns regions and randomness; operations own the
//! address space (VMAs, page tables, a simulated truth). All calls are batched: one call covers
//! every region of every target. Under adaptive sampling not every region is checked or
//! prepared every tick: a region left out is marked (`Access::NotChecked` in `results`,
//! `NO_PREPARE` in the addresses), and the operations leave it alone.

use anyhow::Result;

use crate::{
    region::{Access, Target},
    schemes::{Applied, Filter, Metric, Scheme},
};

/// In the addresses to prepare: this region is not prepared now.
pub const NO_PREPARE: u64 = u64::MAX;

pub trait Operations {
    /// Gives targets without regions their initial regions (vaddr: the "three regions").
    fn init(&mut self, targets: &mut [Target]) -> Result<()>;

    /// Re-fits regions to the address space; called every ops-update interval.
    fn update(&mut self, targets: &mut [Target]) -> Result<()>;

    /// Clears the accessed state at `addrs` (one per region, targets in order, regions in
    /// address order; `NO_PREPARE` for regions not prepared now) so the next check sees only
    /// accesses from now on.
    fn prepare_access_checks(&mut self, targets: &[Target], addrs: &[u64]);

    /// Reports, for each region in the same order, what its `sampling_addr` saw since it was
    /// prepared; slots that hold `Access::NotChecked` on entry are not asked for and stay so.
    /// Quiet memory may be sampled in pairs (`Region::partner_of`): a second page is prepared
    /// with each address, and the ones checked now have slots after every region's
    /// (`partners_due` lists them); operations that leave those alone leave them unknown.
    fn check_accesses(&mut self, targets: &[Target], results: &mut [Access]);

    /// Both of the above in one go, for the common tick where regions do not change between the
    /// check and the next prepare. Operations that can do both in one system call override it.
    fn check_and_prepare(&mut self, targets: &[Target], next: &[u64], results: &mut [Access]) {
        self.check_accesses(targets, results);
        self.prepare_access_checks(targets, next);
    }

    /// Whether the target still exists (a process that exited does not).
    fn target_valid(&mut self, target: &Target) -> bool;

    /// Applies `scheme`'s action to `range` of `target`, to the memory the operations-level
    /// `filters` (anon, memcg, ...; in order, as `schemes::passes` reads them) let through.
    /// Operations that cannot act apply nothing.
    fn apply_scheme(
        &mut self,
        _target: &Target,
        _range: (u64, u64),
        _scheme: &Scheme,
        _filters: &[&Filter],
    ) -> Applied {
        Applied::default()
    }

    /// The current value of a quota goal's metric (a running total for cumulative ones);
    /// `None` where it cannot be read.
    fn metric(&mut self, _metric: &Metric) -> Option<u64> {
        None
    }

    /// Free memory in permil of the total, for watermarks; `None` where it cannot be read.
    fn free_mem_permil(&mut self) -> Option<u64> {
        None
    }
}

/// The pairs' second pages checked now, in the order of their slots after the regions' own in
/// `results` (see `Operations::check_accesses`): each one's slot and address.
pub fn partners_due(targets: &[Target], results: &[Access]) -> Vec<(usize, u64)> {
    let n = targets.iter().map(|t| t.regions.len()).sum::<usize>();
    let regions = targets.iter().flat_map(|t| &t.regions).zip(results);
    let due = regions.filter(|(_, a)| **a != Access::NotChecked);
    let partners = due.filter_map(|(r, _)| r.partner_of(r.sampling_addr));
    partners.enumerate().map(|(k, addr)| (n + k, addr)).collect()
}
