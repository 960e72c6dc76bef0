//! One monitoring context: DAMON's kdamond loop, driven one sample interval at a time.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    attrs::Attrs,
    merge::{self, MergeParams},
    ops::{NO_PREPARE, Operations},
    region::{Access, QUIET, Region, STRIDE, Target, ends_a_stride},
    rng::{RandVersion, Rng},
    sampling::{self, Sampling},
    schemes::{self, Running, Scheme, SchemeStatus},
    split::{self, Classic, Policy, SplitEnv, SplitPolicy},
    tune,
    waste::RecentSplits,
};

/// The kernel's `DAMON_MIN_REGION_SZ` on machines with 4 KiB pages: the default smallest region.
pub const MIN_REGION_SZ: u64 = 4096;

/// Which kernel's core behaviour to follow where they differ (merge retries, random ranges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoreVersion {
    /// 7.3: ages change once per merge, the threshold stops at its ceiling, full-span sampling.
    #[default]
    Newest,
    /// Up to 7.2: ages change in every merge retry, 32-bit sampling ranges.
    Legacy,
}

impl CoreVersion {
    pub const ALL: [CoreVersion; 2] = [Self::Newest, Self::Legacy];

    pub fn name(self) -> &'static str {
        match self {
            Self::Newest => "newest",
            Self::Legacy => "legacy",
        }
    }

    /// One line on what differs, for help texts.
    pub fn about(self) -> &'static str {
        match self {
            Self::Newest => "7.3: ages change once per merge, full-span sampling",
            Self::Legacy => "up to 7.2: ages change in every merge retry, 32-bit sampling ranges",
        }
    }
}

impl std::str::FromStr for CoreVersion {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.name() == text)
            .ok_or_else(|| anyhow::anyhow!("unknown core version `{text}` (newest or legacy)"))
    }
}

/// What happened so far, for reports and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub samples: u64,
    /// Access checks, one per region per sample: what monitoring costs.
    pub checks: u64,
    pub aggregations: u64,
    pub splits: u64,
    pub merges: u64,
    /// Splits whose boundary was merged away within two aggregations.
    pub wasted_splits: u64,
    /// Checks that could not tell accessed from idle (`Access::Unknown`).
    pub unknown: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub attrs: Attrs,
    pub policy: SplitPolicy,
    pub version: CoreVersion,
    pub seed: u64,
    /// Smallest region and split granularity (a power of two; a page for address spaces).
    pub min_region_sz: u64,
    /// Every region every interval (the kernel's way), or as often as each needs.
    pub sampling: Sampling,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            attrs: Attrs::default(),
            policy: SplitPolicy::default(),
            version: CoreVersion::Newest,
            seed: 0,
            min_region_sz: MIN_REGION_SZ,
            sampling: Sampling::Every,
        }
    }
}

/// What one step did, for the caller to report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// When the step aggregated: how long merge, reset and split took.
    pub aggregation: Option<Duration>,
    /// How long the schemes' actions took (apart from the aggregation's own time).
    pub schemes: Duration,
    /// Targets the operations found gone; they were removed.
    pub dropped: Vec<u64>,
}

/// One monitoring context: targets, attributes and the kdamond loop's schedule.
pub struct Context {
    config: Config,
    /// Fixed at start; interval tuning keeps the samples per aggregation constant.
    aggr_samples: u64,
    pub(crate) targets: Vec<Target>,
    rng: Rng,
    passed: u64,
    /// Monitoring time in µs: the sample intervals passed, each as long as it was.
    pub(crate) now_us: u64,
    next_aggregation: u64,
    next_ops_update: u64,
    next_tune: u64,
    sz_limit: u64,
    /// `passed` at the last aggregation: window ticks count from it.
    window_start: u64,
    /// `counters.unknown` then: whether the window read any sample as unknown.
    window_unknown: u64,
    /// The attributes the last aggregation's window was sampled with (tuning may since have
    /// changed the intervals, as the kernel does before it reports the aggregation).
    window_attrs: Attrs,
    /// The `stride_log`s in use, as bits (see `note_strides`).
    strides: u32,
    /// Whether the operations or a dropped target changed the regions since the size limit was
    /// last applied. Merge and split keep the total size and respect the limit, so without such
    /// a change the kernel's per-aggregation re-application would find nothing to do.
    regions_changed: bool,
    policy: Box<dyn Policy>,
    classic: Classic,
    recent: RecentSplits,
    counters: Counters,
    addrs: Vec<u64>,
    results: Vec<Access>,
    schemes: Vec<Running>,
}

impl Context {
    pub fn new(config: Config, targets: Vec<Target>) -> Result<Self> {
        config.attrs.validate()?;
        if !config.min_region_sz.is_power_of_two() {
            bail!("the minimum region size ({}) must be a power of two", config.min_region_sz);
        }
        Ok(Self {
            aggr_samples: config.attrs.aggr_in_samples(),
            rng: Rng::new(config.seed),
            config,
            targets,
            passed: 0,
            now_us: 0,
            next_aggregation: 0,
            next_ops_update: 0,
            next_tune: 0,
            sz_limit: 0,
            window_start: 0,
            window_unknown: 0,
            window_attrs: config.attrs,
            strides: 1,
            regions_changed: true,
            policy: config.policy.build(),
            classic: Classic::default(),
            recent: RecentSplits::default(),
            counters: Counters::default(),
            addrs: Vec::new(),
            results: Vec::new(),
            schemes: Vec::new(),
        })
    }

    /// The schemes to apply at each aggregation, in order (replacing any before).
    pub fn set_schemes(&mut self, schemes: Vec<Scheme>) -> Result<()> {
        for (i, s) in schemes.iter().enumerate() {
            s.validate().map_err(|err| anyhow::anyhow!("scheme {i}: {err:#}"))?;
        }
        self.schemes = schemes.into_iter().map(Running::new).collect();
        Ok(())
    }

    /// Each scheme's stats, effective quota and activation, in order.
    pub fn scheme_status(&self) -> Vec<SchemeStatus> {
        self.schemes.iter().map(Running::status).collect()
    }

    /// When every scheme is held off by its watermarks (and there are schemes), how long until
    /// they are read again: monitoring serves nothing meanwhile and may pause (the kernel's
    /// `kdamond_wait_activation`). `None`: go on.
    pub fn pause_us(&self) -> Option<u64> {
        // Called every tick: no allocation. Any scheme free to act (or none at all): no pause.
        let mut waits = self.schemes.iter().map(|s| s.wmark_wait_us(self.now_us));
        let first = waits.next()??;
        waits.try_fold(first, |min, w| Some(min.min(w?)))
    }

    /// After a pause of `us`: time passes for the schemes (quota intervals, watermark reads),
    /// and the watermarks are read; true if any scheme may act again. Then every region's
    /// sampled page is prepared anew, so the first checks see accesses since, not since the
    /// pause began.
    pub fn resume_after(&mut self, ops: &mut (impl Operations + ?Sized), us: u64) -> bool {
        self.now_us += us;
        let now = self.now_us;
        let active =
            self.schemes.iter_mut().fold(false, |any, s| s.check_watermarks(ops, now) | any);
        if active {
            self.addrs.clear();
            self.addrs
                .extend(self.targets.iter().flat_map(|t| &t.regions).map(|r| r.sampling_addr));
            ops.prepare_access_checks(&self.targets, &self.addrs);
        }
        active
    }

    pub fn attrs(&self) -> &Attrs {
        &self.config.attrs
    }

    /// The attributes the last aggregation was sampled with: what its report is on.
    pub fn window_attrs(&self) -> &Attrs {
        &self.window_attrs
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn nr_regions(&self) -> usize {
        self.targets.iter().map(|t| t.regions.len()).sum()
    }

    /// Sample intervals elapsed since start.
    pub fn passed_samples(&self) -> u64 {
        self.passed
    }

    /// A page fault of target `id` at `addr`: counted for its region in this aggregation, and,
    /// for policies that keep evidence, a certain access where new structure may be appearing.
    pub fn record_fault(&mut self, id: u64, addr: u64) {
        let Some(target) = self.targets.iter_mut().find(|t| t.id == id) else { return };
        let i = target.regions.partition_point(|r| r.end <= addr);
        let Some(r) = target.regions.get_mut(i).filter(|r| r.start <= addr) else { return };
        r.faults = r.faults.saturating_add(1);
        if self.policy.keeps_evidence() {
            r.quarters.record(addr - r.start, r.size(), true);
        }
    }

    /// Adds a target between steps; best right after an aggregation, when counts restart. The
    /// operations give it its regions, and every region gets a fresh sampling address.
    pub fn add_target(
        &mut self,
        ops: &mut (impl Operations + ?Sized),
        target: Target,
    ) -> Result<()> {
        anyhow::ensure!(
            self.targets.iter().all(|t| t.id != target.id),
            "target {} is monitored already",
            target.id
        );
        self.targets.push(target);
        if let Err(err) = ops.init(&mut self.targets) {
            self.targets.pop();
            return Err(err);
        }
        self.regions_changed = true;
        self.note_strides();
        self.prepare(ops, false);
        Ok(())
    }

    /// Stops monitoring target `id`; false if there was none.
    pub fn remove_target(&mut self, id: u64) -> bool {
        let before = self.targets.len();
        self.targets.retain(|t| t.id != id);
        self.regions_changed |= self.targets.len() != before;
        self.targets.len() != before
    }

    /// Before the first step: initial regions, the size limit, the first sampling addresses.
    pub fn start(&mut self, ops: &mut (impl Operations + ?Sized)) -> Result<()> {
        let attrs = self.config.attrs;
        self.passed = 0;
        self.window_start = 0;
        self.window_unknown = self.counters.unknown;
        self.next_aggregation = attrs.aggr_in_samples();
        self.next_ops_update = attrs.ops_update_in_samples();
        self.next_tune = self.next_aggregation * attrs.intervals_goal.aggrs as u64;
        ops.init(&mut self.targets)?;
        self.apply_min_nr_regions();
        self.note_strides();
        self.prepare(ops, false);
        Ok(())
    }

    /// One sample interval has passed: check, and at the interval boundaries aggregate (calling
    /// `on_aggregated` with the merged counts, as the kernel's `damon_aggregated` trace sees
    /// them), split, and update the regions from the address space.
    pub fn step<O: Operations + ?Sized>(
        &mut self,
        ops: &mut O,
        on_aggregated: impl FnOnce(&Self, &O),
    ) -> Result<Step> {
        let (next_aggregation, next_ops_update) = (self.next_aggregation, self.next_ops_update);
        self.passed += 1;
        self.now_us += self.config.attrs.sample_us;
        let aggregate = self.passed >= next_aggregation;
        let update = self.passed >= next_ops_update;
        let n = self.nr_regions();
        let tick = self.window_tick();
        self.results.clear();
        reserve_modestly(&mut self.results, n);
        let window = self.aggr_samples;
        // Pairs' second pages get slots after every region's: unknown unless the operations
        // read them.
        let mut partners = 0;
        let due = |r: &Region| {
            if !r.checked_at(tick, window) {
                return Access::NotChecked;
            }
            partners += r.partner_of(r.sampling_addr).is_some() as usize;
            Access::Idle
        };
        self.results.extend(self.targets.iter().flat_map(|t| &t.regions).map(due));
        self.results.resize(n + partners, Access::Unknown);
        let reshape = aggregate || update;
        if reshape {
            ops.check_accesses(&self.targets, &mut self.results);
        } else {
            // Regions stay as they are until the next check: choose its addresses now, so the
            // operations can check the old ones and prepare the new ones together.
            self.choose_addrs(tick, false);
            ops.check_and_prepare(&self.targets, &self.addrs, &mut self.results);
        }
        let (max_nr_accesses, checked) = self.record_results(!reshape);
        self.counters.samples += 1;
        self.counters.checks += checked;

        let mut step = Step::default();
        if aggregate {
            let started = Instant::now();
            let max_nr_accesses = if self.counts_need_scaling() {
                self.scale_to_known().max(max_nr_accesses)
            } else {
                max_nr_accesses
            };
            step.schemes = self.aggregate(max_nr_accesses, next_aggregation, ops, on_aggregated);
            step.aggregation = Some(started.elapsed().saturating_sub(step.schemes));
            self.targets.retain(|t| {
                let valid = ops.target_valid(t);
                if !valid {
                    step.dropped.push(t.id);
                }
                valid
            });
            self.regions_changed |= !step.dropped.is_empty();
        }
        if update {
            self.next_ops_update = next_ops_update + self.config.attrs.ops_update_in_samples();
            ops.update(&mut self.targets)?;
            self.regions_changed = true;
            self.note_strides();
        }
        if reshape {
            self.prepare(ops, update);
        }
        Ok(step)
    }

    /// Merges, applies the schemes, reports, and splits; returns the time the schemes took.
    fn aggregate<O: Operations + ?Sized>(
        &mut self,
        max_nr_accesses: u32,
        next_aggregation: u64,
        ops: &mut O,
        on_aggregated: impl FnOnce(&Self, &O),
    ) -> Duration {
        let attrs = self.config.attrs;
        self.window_attrs = attrs;
        let aggregation = self.counters.aggregations as u32;
        let max_threshold = match self.config.version {
            CoreVersion::Newest => attrs.samples_per_aggr(),
            CoreVersion::Legacy => attrs.aggr_in_samples().min(u32::MAX as u64) as u32,
        };
        let params = MergeParams {
            threshold: max_nr_accesses / 10,
            sz_limit: self.sz_limit,
            max_nr_regions: attrs.max_nr_regions as usize,
            max_threshold,
            version: self.config.version,
            aggregation,
            samples: attrs.samples_per_aggr(),
        };
        self.policy.merge(&mut self.targets, &params, &mut self.counters, &mut self.recent);
        self.recent.expire(aggregation);
        if self.regions_changed {
            self.apply_min_nr_regions();
        }
        if attrs.intervals_goal.aggrs != 0 && self.passed >= self.next_tune {
            self.next_tune += self.aggr_samples * attrs.intervals_goal.aggrs as u64;
            if let Some(sample_us) = tune::tuned_sample_us(&self.targets, &attrs, self.aggr_samples)
            {
                self.retune(sample_us);
            }
        }
        self.next_aggregation = next_aggregation + self.config.attrs.aggr_in_samples();
        self.window_start = self.passed;
        self.window_unknown = self.counters.unknown;
        let started = Instant::now();
        if !self.schemes.is_empty() {
            // Ages were rescaled to a retuned interval above: read them in it.
            let env = schemes::Env {
                now_us: self.now_us,
                aggr_us: self.config.attrs.aggr_us,
                samples: attrs.samples_per_aggr(),
                window: self.aggr_samples as u32,
                min_region_sz: self.config.min_region_sz,
                page: MIN_REGION_SZ,
            };
            schemes::apply(&mut self.schemes, &mut self.targets, ops, &env);
        }
        let schemes_took = started.elapsed();
        on_aggregated(self, ops);
        self.plan_samples();
        let rand_version = self.rand_version();
        let mut env = SplitEnv {
            max_nr_regions: attrs.max_nr_regions as usize,
            min_region_sz: self.config.min_region_sz,
            rng: &mut self.rng,
            rand_version,
            aggregation,
            counters: &mut self.counters,
            recent: &mut self.recent,
            samples: attrs.samples_per_aggr(),
        };
        split::reset_and_split(&mut self.targets, &mut *self.policy, &mut self.classic, &mut env);
        self.counters.aggregations += 1;
        self.note_strides();
        schemes_took
    }

    /// `damon_set_attrs` from the tuner: same samples per aggregation, so counts keep their
    /// meaning; ages are rescaled to the new aggregation interval.
    fn retune(&mut self, sample_us: u64) {
        let old_aggr_us = self.config.attrs.aggr_us;
        let attrs = &mut self.config.attrs;
        attrs.sample_us = sample_us;
        attrs.aggr_us = sample_us * self.aggr_samples;
        let new_aggr_us = attrs.aggr_us;
        self.next_ops_update = self.passed + attrs.ops_update_in_samples();
        if old_aggr_us != 0 && new_aggr_us != 0 {
            for r in self.targets.iter_mut().flat_map(|t| &mut t.regions) {
                r.age = (r.age as u64 * old_aggr_us / new_aggr_us) as u32;
            }
        }
    }

    fn apply_min_nr_regions(&mut self) {
        self.sz_limit = merge::apply_min_nr_regions(
            &mut self.targets,
            self.config.attrs.min_nr_regions,
            self.config.min_region_sz,
        );
        self.regions_changed = false;
    }

    fn rand_version(&self) -> RandVersion {
        match self.config.version {
            CoreVersion::Newest => RandVersion::Newest,
            CoreVersion::Legacy => RandVersion::Legacy,
        }
    }

    /// For the regions the step at window tick `tick` prepares, and the quiet ones whose sample
    /// lies outside them (their bounds moved in an update: a quiet region is checked before it
    /// is prepared again), a random address; the others `NO_PREPARE`. After an update
    /// (`updated`) pairs are prepared again too: a second page is placed by the bounds.
    fn choose_addrs(&mut self, tick: u64, updated: bool) {
        let version = self.rand_version();
        let n = self.nr_regions();
        self.addrs.clear();
        reserve_modestly(&mut self.addrs, n);
        for r in self.targets.iter().flat_map(|t| &t.regions) {
            let quiet = r.plan & QUIET != 0;
            let outside = quiet && !(r.start..r.end).contains(&r.sampling_addr);
            let moved = updated && r.partner_of(r.sampling_addr).is_some();
            let addr = if outside || moved || r.prepared_at(tick, self.aggr_samples) {
                self.rng.range(r.start, r.end, version)
            } else {
                NO_PREPARE
            };
            self.addrs.push(addr);
        }
    }

    /// Prepares the regions due at this step, after it reshaped them (and `updated` them).
    fn prepare(&mut self, ops: &mut (impl Operations + ?Sized), updated: bool) {
        self.choose_addrs(self.window_tick(), updated);
        ops.prepare_access_checks(&self.targets, &self.addrs);
        self.adopt_addrs();
    }

    fn adopt_addrs(&mut self) {
        let regions = self.targets.iter_mut().flat_map(|t| &mut t.regions);
        for (r, &addr) in regions.zip(&self.addrs).filter(|(_, a)| **a != NO_PREPARE) {
            r.sampling_addr = addr;
        }
    }

    /// Sample intervals passed in the current aggregation window (0 right after an aggregation).
    fn window_tick(&self) -> u64 {
        self.passed - self.window_start
    }

    /// How many of the coming sample intervals need nothing at all (no region checked or
    /// prepared, no aggregation or update): the caller may sleep through them and `skip` them.
    /// Always 0 under `Sampling::Every`.
    pub fn idle_ticks(&self) -> u64 {
        let strides = self.strides;
        let busy = |tick: u64| {
            let passed = self.window_start + tick;
            let used = |log: u32, quiet: bool| strides & (1 << (log + 16 * quiet as u32)) != 0;
            passed >= self.next_aggregation
                || passed >= self.next_ops_update
                || (0..16).any(|log| {
                    let (stride, window) = (1 << log, self.aggr_samples);
                    let checked = |t| ends_a_stride(t, window, stride);
                    (used(log, false) && (checked(tick) || checked(tick + 1)))
                        || (used(log, true) && tick.is_multiple_of(stride))
                })
        };
        let first = self.window_tick() + 1;
        (first..).take_while(|&tick| !busy(tick)).count() as u64
    }

    /// Lets `ticks` idle sample intervals pass (see `idle_ticks`).
    pub fn skip(&mut self, ticks: u64) {
        debug_assert!(ticks <= self.idle_ticks(), "skipping busy ticks");
        self.passed += ticks;
        self.now_us += ticks * self.config.attrs.sample_us;
        self.counters.samples += ticks;
    }

    /// Which plans the regions use: bit `log` for a stride of `1 << log`, bit `16 + log` for
    /// a quiet one.
    fn note_strides(&mut self) {
        if self.config.sampling == Sampling::Every {
            // Every region every interval: no plan ever changes from the kernel's.
            self.strides = 1;
            return;
        }
        self.strides = self.targets.iter().flat_map(|t| &t.regions).fold(0, |m, r| {
            m | 1 << ((r.plan & STRIDE) as u32 + 16 * (r.plan & QUIET != 0) as u32)
        });
    }

    /// Under adaptive sampling, at the end of a window (before the reset; pieces of a split
    /// keep the plan): each region's stride for the next one.
    fn plan_samples(&mut self) {
        if self.config.sampling != Sampling::Adaptive {
            return;
        }
        let (window, samples) = (self.aggr_samples as u32, self.config.attrs.samples_per_aggr());
        for r in self.targets.iter_mut().flat_map(|t| &mut t.regions) {
            sampling::plan(r, window, samples);
        }
    }

    /// Whether some region's count may come from fewer samples than an aggregation has: one
    /// sampled less than every interval (a stride, or quiet), a window of another length, or
    /// a sample that read unknown. Else `scale_to_known` has nothing to do, and a pass over
    /// every region is saved.
    fn counts_need_scaling(&self) -> bool {
        self.strides != 1
            || self.aggr_samples != u64::from(self.config.attrs.samples_per_aggr())
            || self.counters.unknown != self.window_unknown
    }

    /// At the end of a window, counts come from the samples that could tell (not every
    /// interval under adaptive sampling; unknowns are not idleness), on the kernel's scale of
    /// samples per aggregation. Returns the largest count after scaling. Regions sampled every
    /// interval without unknowns keep their counts.
    fn scale_to_known(&mut self) -> u32 {
        let samples = self.config.attrs.samples_per_aggr();
        let window = self.aggr_samples as u32;
        let mut max = 0;
        for r in self.targets.iter_mut().flat_map(|t| &mut t.regions) {
            let known = r.known(window);
            if known != samples && known > 0 {
                let scaled =
                    (r.nr_accesses as u64 * samples as u64 + known as u64 / 2) / known as u64;
                r.nr_accesses = scaled.min(samples as u64) as u32;
            }
            max = max.max(r.nr_accesses);
        }
        max
    }

    /// Adds this sample to the regions checked; returns the largest `nr_accesses` afterwards,
    /// and how many were checked.
    fn record_results(&mut self, adopt_next: bool) -> (u32, u64) {
        let (mut max, mut checked) = (0, 0);
        // Adaptive sampling plans from the evidence too.
        let quarters = self.policy.keeps_evidence() || self.config.sampling == Sampling::Adaptive;
        let n = self.nr_regions();
        let regions = self.targets.iter_mut().flat_map(|t| &mut t.regions);
        let (own, mut partners) = self.results.split_at(n.min(self.results.len()));
        for (r, &access) in regions.zip(own) {
            let own_addr = r.sampling_addr;
            let partner = r.partner_of(own_addr).filter(|_| access != Access::NotChecked);
            let mut record = |addr: u64, access: Access| match access {
                Access::NotChecked => {}
                Access::Unknown => {
                    checked += 1;
                    self.counters.unknown += 1;
                    r.unknown = r.unknown.saturating_add(1);
                }
                Access::Accessed | Access::Idle => {
                    checked += 1;
                    let accessed = access == Access::Accessed;
                    r.nr_accesses += accessed as u32;
                    if quarters {
                        r.quarters.record(addr - r.start, r.size(), accessed);
                    }
                }
            };
            record(own_addr, access);
            if let (Some(addr), Some((&access, rest))) = (partner, partners.split_first()) {
                record(addr, access);
                partners = rest;
            }
            max = max.max(r.nr_accesses);
        }
        if adopt_next {
            self.adopt_addrs();
        }
        (max, checked)
    }
}

/// Room for `n` elements, growing by an eighth rather than doubling: the per-region scratch
/// buffers would otherwise hold up to twice the regions (memory per region is a budget).
fn reserve_modestly<T>(buffer: &mut Vec<T>, n: usize) {
    if buffer.capacity() < n {
        buffer.reserve_exact(n + n / 8 - buffer.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IntervalsGoal, Region};

    /// Operations that record what the engine asked of them; every sampled page reads accessed.
    #[derive(Default)]
    struct Recorder {
        combined: usize,
        checks: usize,
        prepares: usize,
        updates: usize,
        alive: Vec<u64>,
        /// Calls that handed out addresses, and those with an address outside its region.
        addr_calls: usize,
        addrs_outside: usize,
    }

    impl Recorder {
        fn saw_addrs(&mut self, targets: &[Target], addrs: &[u64]) {
            self.addr_calls += 1;
            self.addrs_outside += !within(targets, addrs) as usize;
        }
    }

    impl Operations for Recorder {
        fn init(&mut self, targets: &mut [Target]) -> Result<()> {
            for t in targets.iter_mut().filter(|t| t.regions.is_empty()) {
                t.regions.push(Region::new(0, 1 << 30));
            }
            Ok(())
        }
        fn update(&mut self, _targets: &mut [Target]) -> Result<()> {
            self.updates += 1;
            Ok(())
        }
        fn prepare_access_checks(&mut self, targets: &[Target], addrs: &[u64]) {
            self.prepares += 1;
            self.saw_addrs(targets, addrs);
        }
        fn check_accesses(&mut self, _targets: &[Target], results: &mut [Access]) {
            self.checks += 1;
            results.fill(Access::Accessed);
        }
        fn check_and_prepare(&mut self, targets: &[Target], next: &[u64], results: &mut [Access]) {
            self.combined += 1;
            self.saw_addrs(targets, next);
            results.fill(Access::Accessed);
        }
        fn target_valid(&mut self, target: &Target) -> bool {
            self.alive.contains(&target.id)
        }
    }

    fn within(targets: &[Target], addrs: &[u64]) -> bool {
        let regions: Vec<&Region> = targets.iter().flat_map(|t| &t.regions).collect();
        regions.len() == addrs.len()
            && regions.iter().zip(addrs).all(|(r, &a)| (r.start..r.end).contains(&a))
    }

    fn context(attrs: Attrs, ids: &[u64]) -> Context {
        let targets = ids.iter().map(|&id| Target::new(id)).collect();
        Context::new(Config { attrs, ..Config::default() }, targets).unwrap()
    }

    #[test]
    fn aggregates_every_aggr_over_sample_intervals_and_updates_on_schedule() {
        let attrs = Attrs { ops_update_us: 300_000, ..Attrs::default() };
        let mut ctx = context(attrs, &[1]);
        let mut ops = Recorder { alive: vec![1], ..Recorder::default() };
        ctx.start(&mut ops).unwrap();
        assert_eq!(ctx.nr_regions(), 10, "the size limit cuts the initial region into min_nr");
        let mut aggregated_at = Vec::new();
        let mut first_window = None;
        let mut expected_checks = 0;
        for _ in 0..60 {
            expected_checks += ctx.nr_regions() as u64;
            let passed = ctx.passed_samples() + 1;
            let step = ctx
                .step(&mut ops, |ctx, _| {
                    aggregated_at.push(passed);
                    let r = &ctx.targets()[0].regions[0];
                    first_window.get_or_insert((r.nr_accesses, r.last_nr_accesses));
                })
                .unwrap();
            assert_eq!(step.aggregation.is_some(), aggregated_at.last() == Some(&passed));
        }
        assert_eq!(aggregated_at, vec![20, 40, 60]);
        // Every page accessed: 20 of 20 samples, and no window before the first.
        assert_eq!(first_window, Some((20, 0)));
        assert_eq!(ops.updates, 1, "ops update at 60 samples (300 ms / 5 ms)");
        // Reshaping ticks check and prepare apart; the rest do both at once.
        assert_eq!((ops.checks, ops.combined), (3, 57));
        assert_eq!(ops.prepares, 1 + 3, "start, then after each reshaping tick");
        assert_eq!((ops.addr_calls, ops.addrs_outside), (4 + 57, 0), "every address in its region");
        assert_eq!(ctx.counters().checks, expected_checks, "one check per region per sample");
    }

    #[test]
    fn gone_targets_are_dropped_at_aggregation_and_reported() {
        let mut ctx = context(Attrs::default(), &[1, 2]);
        let mut ops = Recorder { alive: vec![1, 2], ..Recorder::default() };
        ctx.start(&mut ops).unwrap();
        ops.alive = vec![2];
        let dropped: Vec<u64> =
            (0..20).flat_map(|_| ctx.step(&mut ops, |_, _| {}).unwrap().dropped).collect();
        assert_eq!(dropped, vec![1]);
        assert_eq!(ctx.targets().iter().map(|t| t.id).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn faults_count_per_region_until_the_aggregation() {
        let mut ctx = context(Attrs::default(), &[1]);
        let mut ops = Recorder { alive: vec![1], ..Recorder::default() };
        ctx.start(&mut ops).unwrap();
        let addr = ctx.targets()[0].regions[3].start + 5;
        ctx.record_fault(1, addr);
        ctx.record_fault(1, addr + 1);
        ctx.record_fault(2, addr); // not a target: ignored
        ctx.record_fault(1, 1 << 40); // outside every region: ignored
        assert_eq!(ctx.targets()[0].regions[3].faults, 2);
        let mut seen = None;
        for _ in 0..20 {
            ctx.step(&mut ops, |ctx, _| {
                seen = Some(ctx.targets()[0].regions.iter().map(|r| r.faults as u64).sum::<u64>())
            })
            .unwrap();
        }
        assert_eq!(seen, Some(2), "the aggregation sees the window's faults");
        assert!(ctx.targets()[0].regions.iter().all(|r| r.faults == 0), "then they reset");
    }

    #[test]
    fn rejects_invalid_attributes_and_region_size() {
        let bad = Attrs { min_nr_regions: 1, ..Attrs::default() };
        assert!(Context::new(Config { attrs: bad, ..Config::default() }, vec![]).is_err());
        let config = Config { min_region_sz: 3000, ..Config::default() };
        let err = Context::new(config, vec![]).err().unwrap().to_string();
        assert!(err.contains("power of two"), "{err}");
    }

    #[test]
    fn tuning_changes_the_sample_interval_after_goal_aggregations() {
        let attrs = Attrs {
            intervals_goal: IntervalsGoal {
                access_bp: 400,
                aggrs: 2,
                min_sample_us: 1_000,
                max_sample_us: 100_000,
            },
            ..Attrs::default()
        };
        let mut ctx = context(attrs, &[1]);
        let mut ops = Recorder { alive: vec![1], ..Recorder::default() };
        ctx.start(&mut ops).unwrap();
        for _ in 0..40 {
            ctx.step(&mut ops, |_, _| {}).unwrap();
        }
        // Every page always accessed: far over the 4 % goal, so the interval halves, keeping
        // 20 samples per aggregation.
        assert_eq!((ctx.attrs().sample_us, ctx.attrs().aggr_us), (2_500, 50_000));
    }

    #[test]
    fn unknown_samples_are_left_out_of_the_rate_not_counted_idle() {
        /// Every region reads accessed on even ticks and unknown on odd ones; the first region
        /// always unknown.
        struct HalfKnown(u64);
        impl Operations for HalfKnown {
            fn init(&mut self, targets: &mut [Target]) -> Result<()> {
                Recorder::default().init(targets)
            }
            fn update(&mut self, _: &mut [Target]) -> Result<()> {
                Ok(())
            }
            fn prepare_access_checks(&mut self, _: &[Target], _: &[u64]) {}
            fn check_accesses(&mut self, _: &[Target], results: &mut [Access]) {
                self.0 += 1;
                let known =
                    if self.0.is_multiple_of(2) { Access::Accessed } else { Access::Unknown };
                results.fill(known);
                results[0] = Access::Unknown;
            }
            fn target_valid(&mut self, _: &Target) -> bool {
                true
            }
        }
        let mut ctx = context(Attrs::default(), &[1]);
        let mut ops = HalfKnown(0);
        ctx.start(&mut ops).unwrap();
        let mut seen = None;
        for _ in 0..20 {
            ctx.step(&mut ops, |ctx, _| {
                let r = &ctx.targets()[0].regions;
                seen = Some((
                    r[0].all_unknown(20),
                    r[0].nr_accesses,
                    r[1].all_unknown(20),
                    r[1].nr_accesses,
                ));
            })
            .unwrap();
        }
        // Region 1: 10 accessed of 10 known samples reads 20 of 20, not 10.
        assert_eq!(seen, Some((true, 0, false, 20)));
    }
}
