//! `udamon kdamond`: the kernel's own DAMON, observed through its `damon:damon_aggregated`
//! tracepoint. The observer turns the program's per-target sums into one `Aggregation` per
//! target per kernel aggregation; the recorder puts streamed regions back together into
//! aggregations for a damo record. Nothing here writes to DAMON's sysfs or tracefs.

pub mod metrics;
pub mod recorder;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use damon_common::kdamond::{
    AGE_BUCKETS, Aggregate, KdamondKey, SchemeKey, SchemeSums, bucket_floor,
};
use serde::Serialize;

use crate::{
    dataplane::kdamond::KdamondProbe,
    output::metrics::IDLE_QUANTILES,
    sys::damon_sysfs::{self, Kdamond},
};

/// Rereading sysfs for a kdamond not seen there waits at least this long (see `damon_sysfs`).
const SYSFS_REREAD: Duration = Duration::from_secs(10);

/// Who a kdamond is: its sysfs number and operations, when sysfs knows its thread.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub pid: u32,
    pub kdamond: Option<u32>,
    pub ops: Option<String>,
}

impl Identity {
    /// The `kdamond` label: the sysfs number, or `pid:N` for a kdamond sysfs does not list
    /// (DAMON_RECLAIM, DAMON_LRU_SORT and DAMON_STAT start their own).
    pub fn label(&self) -> String {
        self.kdamond.map_or_else(|| format!("pid:{}", self.pid), |k| k.to_string())
    }
}

/// One kernel aggregation of one target, as summed in the kernel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Aggregation {
    #[serde(flatten)]
    pub who: Identity,
    /// DAMON's index of the target in its context (kernels have one context per kdamond).
    pub target: u32,
    /// Complete aggregations of this target seen by the program.
    pub number: u64,
    /// Earlier complete ones this read missed (they came faster than the reads).
    pub missed: u64,
    /// CLOCK_MONOTONIC nanoseconds when its window ended.
    pub ended_ns: u64,
    pub nr_regions: u32,
    pub total_bytes: u64,
    pub working_set_bytes: u64,
    /// Σ region size × nr_accesses.
    pub accessed_bytes: u64,
    pub max_nr_accesses: u32,
    /// The live intervals (auto-tuned ones included), or sysfs's where they cannot be read.
    pub sample_us: u64,
    pub aggr_us: u64,
    pub update_us: u64,
    /// Byte-weighted percentiles (50, 90, 99) of idle time: age × aggregation interval for
    /// regions without access, 0 for the others; each a bucket's lower bound (within 25 %).
    pub idle_seconds: [f64; 3],
}

/// A DAMOS scheme of a kdamond: what it was tried on so far (DAMOS's `nr_tried` and `sz_tried`,
/// counted from when udamon attached), and its effective size quota where the kernel traces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scheme {
    #[serde(flatten)]
    pub who: Identity,
    pub scheme: u32,
    pub tried_regions: u64,
    pub tried_bytes: u64,
    pub quota_bytes: Option<u64>,
}

/// What one poll found.
#[derive(Default)]
pub struct Polled {
    pub aggregations: Vec<Aggregation>,
    /// Schemes whose sums changed.
    pub schemes: Vec<Scheme>,
    /// Kdamonds whose thread ended: their targets and schemes.
    pub gone: Vec<(Identity, Vec<u32>, Vec<u32>)>,
}

pub struct Observer {
    probe: KdamondProbe,
    /// Complete aggregations already reported, per target.
    seen: BTreeMap<KdamondKey, u64>,
    schemes: BTreeMap<SchemeKey, SchemeSums>,
    sysfs: Vec<Kdamond>,
    read_at: Instant,
}

impl Observer {
    pub fn new(probe: KdamondProbe) -> Self {
        Self {
            probe,
            seen: BTreeMap::new(),
            schemes: BTreeMap::new(),
            sysfs: damon_sysfs::kdamonds(),
            read_at: Instant::now(),
        }
    }

    pub fn probe_mut(&mut self) -> &mut KdamondProbe {
        &mut self.probe
    }

    /// The aggregations completed since the last poll, schemes that changed, kdamonds gone.
    pub fn poll(&mut self) -> Polled {
        let mut polled = Polled::default();
        let targets = self.probe.targets();
        let schemes = self.probe.schemes();
        let mut ended: Vec<u32> = targets.iter().map(|(k, _)| k.pid).collect();
        ended.extend(schemes.iter().map(|(k, _)| k.pid));
        ended.sort_unstable();
        ended.dedup();
        ended.retain(|&pid| !alive(pid));
        for &pid in &ended {
            self.probe.forget(pid);
            let targets: Vec<u32> =
                self.seen.keys().filter(|k| k.pid == pid).map(|k| k.target).collect();
            let schemes: Vec<u32> =
                self.schemes.keys().filter(|k| k.pid == pid).map(|k| k.scheme).collect();
            self.seen.retain(|k, _| k.pid != pid);
            self.schemes.retain(|k, _| k.pid != pid);
            if !targets.is_empty() || !schemes.is_empty() {
                polled.gone.push((self.identity(pid), targets, schemes));
            }
        }
        for (key, t) in targets.into_iter().filter(|(k, _)| !ended.contains(&k.pid)) {
            let seen = self.seen.get(&key).copied().unwrap_or(0);
            if t.complete == seen {
                continue;
            }
            self.seen.insert(key, t.complete);
            let last = &t.slots[((t.complete - 1) & 1) as usize];
            let who = self.identity(key.pid);
            let missed = t.complete - seen - 1;
            polled.aggregations.push(self.aggregation(who, key.target, t.complete, missed, last));
        }
        for (key, sums) in schemes.into_iter().filter(|(k, _)| !ended.contains(&k.pid)) {
            if self.schemes.insert(key, sums) == Some(sums) {
                continue;
            }
            polled.schemes.push(Scheme {
                who: self.identity(key.pid),
                scheme: key.scheme,
                tried_regions: sums.tried_regions,
                tried_bytes: sums.tried_bytes,
                quota_bytes: (sums.esz_seen != 0).then_some(sums.esz),
            });
        }
        polled
    }

    fn aggregation(
        &self,
        who: Identity,
        target: u32,
        number: u64,
        missed: u64,
        a: &Aggregate,
    ) -> Aggregation {
        let configured = who
            .kdamond
            .and_then(|k| self.sysfs.iter().find(|s| s.index == k)?.context.clone())
            .unwrap_or_default();
        let live = a.aggr_us != 0;
        let pick = |live_value: u64, sysfs: u64| if live { live_value } else { sysfs };
        let aggr_us = pick(a.aggr_us, configured.aggr_us);
        Aggregation {
            who,
            target,
            number,
            missed,
            ended_ns: a.ended_ns,
            nr_regions: a.nr_regions,
            total_bytes: a.total_bytes,
            working_set_bytes: a.working_set_bytes,
            accessed_bytes: a.accessed_bytes,
            max_nr_accesses: a.max_nr_accesses,
            sample_us: pick(a.sample_us, configured.sample_us),
            aggr_us,
            update_us: pick(a.update_us, configured.update_us),
            idle_seconds: idle_seconds(a, aggr_us),
        }
    }

    /// A kdamond's identity, rereading sysfs (rarely) for one it does not know yet.
    fn identity(&mut self, pid: u32) -> Identity {
        if !self.sysfs.iter().any(|k| k.pid == Some(pid)) && self.read_at.elapsed() >= SYSFS_REREAD
        {
            self.sysfs = damon_sysfs::kdamonds();
            self.read_at = Instant::now();
        }
        let known = self.sysfs.iter().find(|k| k.pid == Some(pid));
        Identity {
            pid,
            kdamond: known.map(|k| k.index),
            ops: known.and_then(|k| Some(k.context.as_ref()?.ops.clone())),
        }
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `IDLE_QUANTILES` of idle seconds from the histogram: the working set is idle for 0 s.
fn idle_seconds(a: &Aggregate, aggr_us: u64) -> [f64; 3] {
    let pieces = std::iter::once((a.working_set_bytes, 0.0)).chain(
        (0..AGE_BUCKETS).map(|b| (a.idle_bytes[b], bucket_floor(b) as f64 * aggr_us as f64 / 1e6)),
    );
    let pieces: Vec<(u64, f64)> = pieces.filter(|p| p.0 > 0).collect();
    let total: u64 = pieces.iter().map(|p| p.0).sum();
    IDLE_QUANTILES.map(|(q, _)| {
        let want = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        pieces
            .iter()
            .find(|p| {
                seen += p.0;
                seen >= want
            })
            .map_or(0.0, |p| p.1)
    })
}

/// The kdamonds to observe: `only` (a sysfs number), or every one (pid 0).
pub fn choose(only: Option<u32>) -> Result<u32> {
    let Some(index) = only else { return Ok(0) };
    let kdamonds = damon_sysfs::kdamonds();
    let Some(k) = kdamonds.iter().find(|k| k.index == index) else {
        anyhow::bail!("--kdamond {index}: no such kdamond in {}/kdamonds", damon_sysfs::ADMIN);
    };
    k.pid.ok_or_else(|| anyhow::anyhow!("--kdamond {index} is not running"))
}

#[cfg(test)]
mod tests {
    use damon_common::kdamond::age_bucket;

    use super::*;

    #[test]
    fn idle_percentiles_weigh_bytes_with_the_working_set_at_zero() {
        let mut a: Aggregate = unsafe { std::mem::zeroed() };
        a.working_set_bytes = 600;
        a.idle_bytes[age_bucket(2)] = 300;
        a.idle_bytes[age_bucket(100)] = 100;
        // Aggregations of 0.5 s: age 2 is 1 s; 100 falls in the bucket from 96, 48 s.
        assert_eq!(idle_seconds(&a, 500_000), [0.0, 1.0, 48.0]);
        a.working_set_bytes = 0;
        assert_eq!(idle_seconds(&a, 500_000), [1.0, 48.0, 48.0]);
        let empty: Aggregate = unsafe { std::mem::zeroed() };
        assert_eq!(idle_seconds(&empty, 500_000), [0.0; 3]);
    }
}
