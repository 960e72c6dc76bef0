//! Simulated operations: an access check is a Bernoulli draw with the truth's probability at
//! the sampling address, over every interval since the page was prepared, as a real accessed bit
//! would have been set by any of them: a sample that spans `k` intervals finds an access with
//! probability 1 − (1 − p)^k (the probability now standing for all of them).

use std::collections::HashMap;

use anyhow::Result;

use super::truth::Truth;
use crate::{Access, NO_PREPARE, Operations, Target, partners_due, rng::Rng};

pub struct SimOps {
    pub truth: Truth,
    rng: Rng,
    /// Sample intervals checked so far (each step checks once).
    tick: u64,
    /// The tick each pending sampling address was prepared at.
    prepared: HashMap<u64, u64>,
}

/// The longest a sample can span: a stride's longest (2^15 intervals).
const LONGEST_SPAN: u64 = 1 << 15;

impl SimOps {
    /// `seed` drives the accesses; kept apart from the engine's stream so the policies' own
    /// randomness does not shift which pages are touched.
    pub fn new(truth: Truth, seed: u64) -> Self {
        Self { truth, rng: Rng::new(seed ^ 0xacce_55ed), tick: 0, prepared: HashMap::new() }
    }
}

impl SimOps {
    /// Whether the page at `addr` was accessed since it was prepared.
    fn check(&mut self, addr: u64) -> Access {
        let span = self.prepared.remove(&addr).map_or(1, |at| (self.tick - at).max(1));
        let draw = self.rng.next_u64();
        let accessed = if span == 1 {
            self.truth.accessed(addr, draw)
        } else {
            let p = self.truth.probability_at(addr);
            (draw as f64) < (1.0 - (1.0 - p).powi(span as i32)) * u64::MAX as f64
        };
        if accessed { Access::Accessed } else { Access::Idle }
    }
}

impl Operations for SimOps {
    fn init(&mut self, _targets: &mut [Target]) -> Result<()> {
        Ok(())
    }

    fn update(&mut self, _targets: &mut [Target]) -> Result<()> {
        Ok(())
    }

    fn prepare_access_checks(&mut self, targets: &[Target], addrs: &[u64]) {
        let regions = targets.iter().flat_map(|t| &t.regions);
        for (r, &addr) in regions.zip(addrs).filter(|(_, a)| **a != NO_PREPARE) {
            for old in [Some(r.sampling_addr), r.partner_of(r.sampling_addr)].into_iter().flatten()
            {
                self.prepared.remove(&old);
            }
            for new in [Some(addr), r.partner_of(addr)].into_iter().flatten() {
                self.prepared.insert(new, self.tick);
            }
        }
        // Samples of regions merged away were never checked.
        if self.prepared.len() > 4 * addrs.len() + 1024 {
            let tick = self.tick;
            self.prepared.retain(|_, at| tick - *at <= LONGEST_SPAN);
        }
    }

    fn check_accesses(&mut self, targets: &[Target], results: &mut [Access]) {
        self.tick += 1;
        let partners = partners_due(targets, results);
        let regions = targets.iter().flat_map(|t| &t.regions);
        for (r, result) in
            regions.zip(results.iter_mut()).filter(|(_, a)| **a != Access::NotChecked)
        {
            *result = self.check(r.sampling_addr);
        }
        for (slot, addr) in partners {
            results[slot] = self.check(addr);
        }
    }

    fn target_valid(&mut self, _target: &Target) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Region;

    /// Hits over 2,000 checks of one page at 10 % per interval, prepared every `stride`
    /// intervals and checked just before the next prepare.
    fn hits(stride: u64) -> u32 {
        let mut ops = SimOps::new(Truth::painted(1 << 20, [(0, 1 << 20, 0.1)]), 7);
        let targets = [Target { id: 0, regions: vec![Region::new(0, 1 << 20)] }];
        let mut hits = 0;
        for tick in 1..=2000 * stride {
            let mut result = [if tick % stride == 0 { Access::Idle } else { Access::NotChecked }];
            ops.check_accesses(&targets, &mut result);
            hits += (result[0] == Access::Accessed) as u32;
            if tick % stride == 0 {
                ops.prepare_access_checks(&targets, &[0]);
            }
        }
        hits
    }

    #[test]
    fn a_sample_finds_any_access_since_its_page_was_prepared() {
        // One interval: 10 %; ten: 1 − 0.9^10 ≈ 65 %.
        assert!((150..250).contains(&hits(1)), "{}", hits(1));
        assert!((1200..1400).contains(&hits(10)), "{}", hits(10));
    }
}
