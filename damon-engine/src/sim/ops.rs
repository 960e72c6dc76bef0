//! Simulated operations: an access check is one Bernoulli draw with the truth's probability at
//! the sampling address. Pages keep no state between samples, so preparing is free.

use anyhow::Result;

use super::truth::Truth;
use crate::{Access, Operations, Target, rng::Rng};

pub struct SimOps {
    pub truth: Truth,
    rng: Rng,
}

impl SimOps {
    /// `seed` drives the accesses; kept apart from the engine's stream so the policies' own
    /// randomness does not shift which pages are touched.
    pub fn new(truth: Truth, seed: u64) -> Self {
        Self { truth, rng: Rng::new(seed ^ 0xacce_55ed) }
    }
}

impl Operations for SimOps {
    fn init(&mut self, _targets: &mut [Target]) -> Result<()> {
        Ok(())
    }

    fn update(&mut self, _targets: &mut [Target]) -> Result<()> {
        Ok(())
    }

    fn prepare_access_checks(&mut self, _targets: &[Target], _addrs: &[u64]) {}

    fn check_accesses(&mut self, targets: &[Target], results: &mut [Access]) {
        let regions = targets.iter().flat_map(|t| &t.regions);
        for (r, result) in regions.zip(results).filter(|(_, a)| **a != Access::NotChecked) {
            *result = if self.truth.accessed(r.sampling_addr, self.rng.next_u64()) {
                Access::Accessed
            } else {
                Access::Idle
            };
        }
    }

    fn target_valid(&mut self, _target: &Target) -> bool {
        true
    }
}
