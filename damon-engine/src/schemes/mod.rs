//! DAMOS: schemes that act on the regions matching an access pattern, right after each
//! aggregation's merge (before the counts reset, as `kdamond_apply_schemes`), under quotas,
//! goals, watermarks and filters. The engine decides which memory; the operations act
//! (`Operations::apply_scheme`) and read the system metrics goals and watermarks need.

mod filter;
mod quota;
mod watermarks;

use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use self::{
    filter::{Filter, FilterKind, Verdict, decide, passes},
    quota::{Goal, MAX_SCORE, Metric, Quota, score},
    watermarks::{Watermarks, WmarkMetric},
};
use self::{quota::Charge, watermarks::active_after};
use crate::{
    ops::Operations,
    region::{Region, Target, align_down},
};

/// What a scheme does to the memory it selects (damo's names). Which the operations can do is
/// theirs to say; the engine only needs to know which ones favour hot or cold memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Willneed,
    Cold,
    Pageout,
    Hugepage,
    Nohugepage,
    Collapse,
    LruPrio,
    LruDeprio,
    MigrateHot,
    MigrateCold,
    /// Nothing: count what would have been acted on.
    Stat,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Self::Willneed,
        Self::Cold,
        Self::Pageout,
        Self::Hugepage,
        Self::Nohugepage,
        Self::Collapse,
        Self::LruPrio,
        Self::LruDeprio,
        Self::MigrateHot,
        Self::MigrateCold,
        Self::Stat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Willneed => "willneed",
            Self::Cold => "cold",
            Self::Pageout => "pageout",
            Self::Hugepage => "hugepage",
            Self::Nohugepage => "nohugepage",
            Self::Collapse => "collapse",
            Self::LruPrio => "lru_prio",
            Self::LruDeprio => "lru_deprio",
            Self::MigrateHot => "migrate_hot",
            Self::MigrateCold => "migrate_cold",
            Self::Stat => "stat",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|a| a.name() == text).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
            anyhow::anyhow!("unknown action `{text}` ({})", names.join(", "))
        })
    }
}

/// Which regions a scheme selects: all bounds inclusive, as the kernel's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPattern {
    pub min_sz: u64,
    pub max_sz: u64,
    /// In samples per aggregation (DAMON's `nr_accesses`).
    pub min_nr_accesses: u32,
    pub max_nr_accesses: u32,
    /// In µs (a region's age is its aggregations times the aggregation interval).
    pub min_age_us: u64,
    pub max_age_us: u64,
}

impl Default for AccessPattern {
    /// Every region.
    fn default() -> Self {
        Self {
            min_sz: 0,
            max_sz: u64::MAX,
            min_nr_accesses: 0,
            max_nr_accesses: u32::MAX,
            min_age_us: 0,
            max_age_us: u64::MAX,
        }
    }
}

impl AccessPattern {
    pub fn matches(&self, r: &Region, aggr_us: u64) -> bool {
        let age_us = (r.age as u64).saturating_mul(aggr_us);
        (self.min_sz..=self.max_sz).contains(&r.size())
            && (self.min_nr_accesses..=self.max_nr_accesses).contains(&r.nr_accesses)
            && (self.min_age_us..=self.max_age_us).contains(&age_us)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheme {
    pub pattern: AccessPattern,
    pub action: Action,
    /// Where `migrate_hot` and `migrate_cold` move pages to (a NUMA node).
    #[serde(default)]
    pub target_nid: Option<u32>,
    /// How often the scheme is applied, in µs; 0 (or anything under the aggregation interval):
    /// at every aggregation.
    pub apply_interval_us: u64,
    pub quota: Quota,
    pub wmarks: Watermarks,
    pub filters: Vec<Filter>,
}

impl Scheme {
    pub fn new(pattern: AccessPattern, action: Action) -> Self {
        Self {
            pattern,
            action,
            target_nid: None,
            apply_interval_us: 0,
            quota: Quota::default(),
            wmarks: Watermarks::default(),
            filters: Vec::new(),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let p = &self.pattern;
        if p.min_sz > p.max_sz
            || p.min_nr_accesses > p.max_nr_accesses
            || p.min_age_us > p.max_age_us
        {
            anyhow::bail!("the access pattern's minimum exceeds its maximum");
        }
        if let Some(g) = self.quota.goals.iter().find(|g| g.target == 0) {
            anyhow::bail!("the quota goal on {} has a target of 0", g.metric.name());
        }
        if let Some(FilterKind::Addr(start, end)) = self
            .filters
            .iter()
            .map(|f| &f.kind)
            .find(|k| matches!(k, FilterKind::Addr(s, e) if s >= e))
        {
            anyhow::bail!("the address filter's range {start:#x}..{end:#x} is empty");
        }
        if let Some(FilterKind::HugepageSize(min, max)) = self
            .filters
            .iter()
            .map(|f| &f.kind)
            .find(|k| matches!(k, FilterKind::HugepageSize(min, max) if min > max))
        {
            anyhow::bail!("the hugepage_size filter's minimum {min} exceeds its maximum {max}");
        }
        self.wmarks.validate()
    }
}

/// What a scheme did so far (the kernel's DAMOS stats, with damo's key names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Regions (pieces) and bytes the action was tried on: they matched the pattern, the quota
    /// and the engine's filters; bytes as the operations count them (vaddr: mapped memory, not
    /// the holes between mappings a region spans, which the kernel counts too).
    pub nr_tried: u64,
    pub sz_tried: u64,
    /// Regions the action did something to, and the bytes it was applied to.
    pub nr_applied: u64,
    pub sz_applied: u64,
    /// Bytes of the tried ones that passed the operations' filters.
    pub sz_ops_filter_passed: u64,
    /// Reset intervals that ended with the quota used up.
    pub qt_exceeds: u64,
}

/// A scheme's state for reports: its stats, its effective size quota (`None`: none), and
/// whether its watermarks let it act.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SchemeStatus {
    pub action: Action,
    pub stats: Stats,
    pub effective_quota: Option<u64>,
    pub active: bool,
}

/// What the operations did with one request (`Operations::apply_scheme`), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Memory in the range the action could act on (vaddr: mapped, of a kind the action
    /// takes), rather than the holes between mappings that regions span.
    pub tried: u64,
    /// Of that, what passed the operations' filters: what the quota is charged.
    pub passed: u64,
    /// The action was applied to.
    pub applied: u64,
}

/// A scheme while it runs.
pub(crate) struct Running {
    scheme: Scheme,
    /// Target ids in the order first seen: `FilterKind::Target`'s numbering.
    target_ids: Vec<u64>,
    stats: Stats,
    charge: Charge,
    next_apply_us: u64,
    active: bool,
    next_wmark_us: u64,
}

impl Running {
    pub fn new(scheme: Scheme) -> Self {
        Self {
            scheme,
            target_ids: Vec::new(),
            stats: Stats::default(),
            charge: Charge::new(),
            next_apply_us: 0,
            active: true,
            next_wmark_us: 0,
        }
    }

    pub fn status(&self) -> SchemeStatus {
        SchemeStatus {
            action: self.scheme.action,
            stats: self.stats,
            effective_quota: (self.scheme.quota.is_set() && self.charge.esz != u64::MAX)
                .then_some(self.charge.esz),
            active: self.active,
        }
    }

    /// Whether the watermarks let the scheme act now. Without watermarks, always. The metric is
    /// read every time while active (as the kernel reads it every sample: free memory can fall
    /// fast), and every watermark interval while inactive.
    pub fn check_watermarks(&mut self, ops: &mut (impl Operations + ?Sized), now_us: u64) -> bool {
        let marks = self.scheme.wmarks;
        if marks.metric.is_none() || (!self.active && now_us < self.next_wmark_us) {
            return self.active;
        }
        self.next_wmark_us = now_us.saturating_add(marks.interval_us);
        // A metric that cannot be read leaves the state as it was.
        if let Some(value) = ops.free_mem_permil() {
            self.active = active_after(&marks, value, self.active);
        }
        self.active
    }

    /// How long until the watermarks are read again (for a monitor whose schemes are all
    /// inactive, which then need not sample).
    /// With an interval of 0 the kernel does not wait: neither does this.
    pub fn wmark_wait_us(&self, now_us: u64) -> Option<u64> {
        let marks = &self.scheme.wmarks;
        (marks.metric.is_some() && !self.active && marks.interval_us > 0)
            .then(|| self.next_wmark_us.saturating_sub(now_us))
    }
}

/// The context's view the schemes need.
pub(crate) struct Env {
    pub now_us: u64,
    pub aggr_us: u64,
    /// Samples per aggregation (DAMON's scale), and the sample intervals of a window.
    pub samples: u32,
    pub window: u32,
    pub min_region_sz: u64,
    pub page: u64,
}

/// Applies the schemes due now to `targets`, in order.
pub(crate) fn apply(
    schemes: &mut [Running],
    targets: &mut [Target],
    ops: &mut (impl Operations + ?Sized),
    env: &Env,
) {
    for s in schemes.iter_mut() {
        if env.now_us < s.next_apply_us {
            continue;
        }
        s.next_apply_us = env.now_us.saturating_add(s.scheme.apply_interval_us);
        if !s.check_watermarks(ops, env.now_us) {
            continue;
        }
        if s.scheme.quota.is_set() {
            adjust_quota(s, targets, ops, env);
        }
        apply_one(s, targets, ops, env);
    }
}

/// At a reset interval's end: counts an exceeded quota, reads the goals' metrics and sets the
/// effective quota; then, every time, the score from which regions fit in it.
fn adjust_quota(
    s: &mut Running,
    targets: &[Target],
    ops: &mut (impl Operations + ?Sized),
    env: &Env,
) {
    let (quota, charge) = (&mut s.scheme.quota, &mut s.charge);
    let reset_due = charge.charged_from_us.is_none_or(|from| {
        env.now_us >= from.saturating_add(quota.reset_interval_ms.saturating_mul(1000))
    });
    if reset_due {
        if charge.charged_from_us.is_some() && charge.exhausted() {
            s.stats.qt_exceeds += 1;
        }
        charge.charged_sz = 0;
        charge.charged_from_us = Some(env.now_us);
        for goal in quota.goals.iter_mut().filter(|g| g.metric != Metric::UserInput) {
            let Some(value) = ops.metric(&goal.metric) else { continue };
            if goal.metric.cumulative() {
                goal.current = value.saturating_sub(goal.last_total.unwrap_or(value));
                goal.last_total = Some(value);
            } else {
                goal.current = value;
            }
        }
        charge.set_effective(quota, env.page);
    }
    let mut sizes = [0u64; MAX_SCORE as usize + 1];
    for r in targets.iter().flat_map(|t| &t.regions) {
        if eligible(&s.scheme.pattern, r, env) {
            let score = score(r, s.scheme.action, quota, env.samples, env.aggr_us);
            sizes[score as usize] += r.size();
        }
    }
    charge.min_score = quota::min_score(&sizes, charge.esz);
}

fn apply_one(
    s: &mut Running,
    targets: &mut [Target],
    ops: &mut (impl Operations + ?Sized),
    env: &Env,
) {
    let quota_set = s.scheme.quota.is_set();
    let core: Vec<&Filter> = s.scheme.filters.iter().filter(|f| f.kind.is_core()).collect();
    let ops_filters: Vec<&Filter> = s.scheme.filters.iter().filter(|f| !f.kind.is_core()).collect();
    if quota_set && s.charge.exhausted() {
        return;
    }
    // Targets are numbered in the order they were first seen, for `target` filters: exits do
    // not renumber the others.
    for t in targets.iter() {
        if !s.target_ids.contains(&t.id) {
            s.target_ids.push(t.id);
        }
    }
    // Where the last interval stopped, by target position now; past the last region of its
    // target (or with the target gone), the next round starts from the beginning.
    let resume = s.charge.resume.take().and_then(|(id, addr)| {
        let rt = targets.iter().position(|t| t.id == id)?;
        targets[rt].regions.last().is_some_and(|r| r.end > addr).then_some((rt, addr))
    });
    // Address filters' bounds, aligned as regions are.
    let align = |b: u64| align_down(b, env.min_region_sz);
    for (ti, target) in targets.iter_mut().enumerate() {
        let number = s.target_ids.iter().position(|&id| id == target.id);
        let mut i = 0;
        while i < target.regions.len() {
            if quota_set && s.charge.exhausted() {
                return;
            }
            let r = target.regions[i];
            if !eligible(&s.scheme.pattern, &r, env) {
                i += 1;
                continue;
            }
            // Where the last reset interval's quota ran out, the next goes on.
            if let Some((rt, addr)) = resume {
                if ti < rt || (ti == rt && r.end <= addr) {
                    i += 1;
                    continue;
                }
                if ti == rt && r.start < addr && cut(&mut target.regions, i, addr, env) {
                    i += 1;
                    continue;
                }
            }
            if quota_set
                && score(&r, s.scheme.action, &s.scheme.quota, env.samples, env.aggr_us)
                    < s.charge.min_score
            {
                i += 1;
                continue;
            }
            // An address filter decides whole regions: cut at its first bound inside.
            let bound = core.iter().find_map(|f| match f.kind {
                FilterKind::Addr(start, end) => {
                    [align(start), align(end)].into_iter().find(|&b| r.start < b && b < r.end)
                }
                _ => None,
            });
            if let Some(bound) = bound
                && cut(&mut target.regions, i, bound, env)
            {
                continue;
            }
            let r = target.regions[i];
            let has = |kind: &FilterKind| match *kind {
                FilterKind::Addr(start, end) => align(start) <= r.start && r.end <= align(end),
                FilterKind::Target(index) => number == Some(index),
                _ => false,
            };
            // Memory the engine's filters allow skips the operations' filters.
            let page_filters: &[&Filter] = match decide(&core, has) {
                Verdict::Allow => &[],
                Verdict::Reject => {
                    i += 1;
                    continue;
                }
                Verdict::Undecided if !ops_filters.is_empty() => &ops_filters,
                Verdict::Undecided if core.last().is_some_and(|f| f.allow) => {
                    i += 1;
                    continue;
                }
                Verdict::Undecided => &[],
            };
            let mut sz = r.size();
            if quota_set && s.charge.esz != u64::MAX {
                let left = align_down(s.charge.esz - s.charge.charged_sz, env.min_region_sz);
                if left == 0 {
                    return;
                }
                if sz > left {
                    cut(&mut target.regions, i, r.start + left, env);
                    sz = left;
                }
            }
            let started = Instant::now();
            let applied =
                ops.apply_scheme(target, (r.start, r.start + sz), &s.scheme, page_filters);
            // The time quota's throughput is of the work done, filtered or not.
            s.charge.total_charged_ns += started.elapsed().as_nanos() as u64;
            s.charge.total_charged_sz += applied.tried.min(sz);
            // What passed the operations' filters is what the quota pays for: charging what
            // they filter out (as the kernel does) would let rejected memory use it up.
            s.charge.charged_sz += applied.passed.min(sz);
            s.stats.nr_tried += (applied.tried > 0) as u64;
            s.stats.sz_tried += applied.tried.min(sz);
            if quota_set && s.charge.exhausted() {
                s.charge.resume = Some((target.id, r.start + sz));
            }
            if s.scheme.action != Action::Stat {
                target.regions[i].age = 0;
            }
            s.stats.sz_ops_filter_passed += applied.passed;
            s.stats.nr_applied += (applied.applied > 0) as u64;
            s.stats.sz_applied += applied.applied;
            i += 1;
        }
    }
}

/// Whether `r` matches the scheme's pattern. A region none of whose samples could tell accessed
/// from idle (memory the clears cannot reset, or clears withheld under pressure) reads 0
/// accesses without being idle: no scheme acts on it (DAMON has no such state).
fn eligible(pattern: &AccessPattern, r: &Region, env: &Env) -> bool {
    !r.all_unknown(env.window) && pattern.matches(r, env.aggr_us)
}

/// Cuts region `i` at `at` (aligned down to the minimum region size) into two that keep its
/// counts; false when no cut falls inside it.
fn cut(regions: &mut Vec<Region>, i: usize, at: u64, env: &Env) -> bool {
    let r = regions[i];
    let at = align_down(at, env.min_region_sz);
    if at <= r.start || at >= r.end {
        return false;
    }
    regions[i] = r.piece(r.start, at);
    regions.insert(i + 1, r.piece(at, r.end));
    true
}

#[cfg(test)]
mod tests;
