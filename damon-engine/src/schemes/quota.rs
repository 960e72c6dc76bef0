//! DAMOS quotas: how much a scheme may act on per reset interval (time and bytes), which
//! regions go first when it cannot act on all (their score), and the feedback loop that tunes
//! the effective size quota towards a goal, as the kernel's `damos_set_effective_quota`.

use serde::{Deserialize, Serialize};

use super::Action;
use crate::region::Region;

/// The highest priority score.
pub const MAX_SCORE: u32 = 99;
const MAX_SUBSCORE: u64 = 100;
/// Ages up to 2^32 seconds are told apart, by their logarithm.
const MAX_AGE_IN_LOG: i64 = 32;
/// The feedback loop's goal: a score of 10000 means the metric sits at its target.
const GOAL_SCORE: u64 = 10_000;

/// What a quota goal measures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// A value the user sets (and may change while running).
    UserInput,
    /// Microseconds some task stalled on memory during the last reset interval (PSI "some").
    SomeMemPsiUs,
    /// Used or free memory of a NUMA node, in basis points of its total.
    NodeMemUsedBp(u32),
    NodeMemFreeBp(u32),
    /// A cgroup's memory on a NUMA node, in basis points of the node's total: (node, path
    /// relative to the cgroup root).
    NodeMemcgUsedBp(u32, String),
    NodeMemcgFreeBp(u32, String),
}

impl Metric {
    /// damo's names.
    pub fn name(&self) -> &'static str {
        match self {
            Self::UserInput => "user_input",
            Self::SomeMemPsiUs => "some_mem_psi_us",
            Self::NodeMemUsedBp(_) => "node_mem_used_bp",
            Self::NodeMemFreeBp(_) => "node_mem_free_bp",
            Self::NodeMemcgUsedBp(..) => "node_memcg_used_bp",
            Self::NodeMemcgFreeBp(..) => "node_memcg_free_bp",
        }
    }

    /// Whether the operations read it as a running total (the goal then takes its growth over a
    /// reset interval).
    pub fn cumulative(&self) -> bool {
        matches!(self, Self::SomeMemPsiUs)
    }
}

/// Tune the effective quota so that `metric` reaches `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goal {
    pub metric: Metric,
    pub target: u64,
    /// `UserInput`'s value; for the others, the last value read.
    pub current: u64,
    /// A cumulative metric's total when the current interval began.
    #[serde(skip)]
    pub(crate) last_total: Option<u64>,
}

impl Goal {
    pub fn new(metric: Metric, target: u64, current: u64) -> Self {
        Self { metric, target, current, last_total: None }
    }

    /// How far the metric is towards its target, 10000 meaning there.
    fn score(&self) -> u64 {
        (self.current.saturating_mul(GOAL_SCORE)) / self.target.max(1)
    }
}

/// A scheme's quota, as damo gives it: 0 means no limit of that kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Quota {
    /// Time the action may take per reset interval.
    pub time_ms: u64,
    /// Bytes the action may be tried on per reset interval.
    pub sz: u64,
    /// 0: every time the scheme is applied.
    pub reset_interval_ms: u64,
    /// Priority weights (the kernel uses the access rate's and the age's; the size's is kept for
    /// damo's sake).
    pub weight_sz: u32,
    pub weight_nr_accesses: u32,
    pub weight_age: u32,
    pub goals: Vec<Goal>,
}

impl Quota {
    pub fn is_set(&self) -> bool {
        self.time_ms != 0 || self.sz != 0 || !self.goals.is_empty()
    }
}

/// What a quota has charged and decided since its last reset.
#[derive(Clone, Debug, Default)]
pub(crate) struct Charge {
    /// The effective size quota in bytes (`u64::MAX`: none).
    pub esz: u64,
    /// The feedback loop's state, in 1/10000 bytes.
    pub esz_bp: u64,
    pub charged_sz: u64,
    /// When the current reset interval began, in µs of monitoring time.
    pub charged_from_us: Option<u64>,
    /// Over all reset intervals: bytes worked on (before the operations' filters) and the time
    /// it took, for the time quota's throughput.
    pub total_charged_sz: u64,
    pub total_charged_ns: u64,
    /// Where the last interval stopped (target id, address), so the next one goes on from
    /// there rather than acting on the same regions first again.
    pub resume: Option<(u64, u64)>,
    /// Regions scoring below this are left for later.
    pub min_score: u32,
}

impl Charge {
    pub fn new() -> Self {
        Self { esz: u64::MAX, ..Self::default() }
    }

    pub fn exhausted(&self) -> bool {
        self.charged_sz >= self.esz
    }

    /// The effective size quota from the time quota's measured throughput, the size quota and
    /// the goals' feedback (`damos_set_effective_quota`).
    pub fn set_effective(&mut self, quota: &Quota, page: u64) {
        if quota.time_ms == 0 && quota.goals.is_empty() {
            self.esz = if quota.sz == 0 { u64::MAX } else { quota.sz };
            return;
        }
        let mut esz = u64::MAX;
        if let Some(score) = quota.goals.iter().map(Goal::score).max() {
            self.esz_bp = next_input(self.esz_bp.max(GOAL_SCORE), score);
            esz = self.esz_bp / GOAL_SCORE;
        }
        if quota.time_ms != 0 {
            // Bytes per ms; before anything was measured, a thousand pages per ms.
            let throughput = if self.total_charged_ns == 0 {
                page * 1024
            } else {
                (self.total_charged_sz as u128 * 1_000_000 / self.total_charged_ns as u128) as u64
            };
            // Never nothing: a quota of 0 would never be used, so never measured again.
            esz = esz.min(throughput.saturating_mul(quota.time_ms).max(page));
        }
        if quota.sz != 0 {
            esz = esz.min(quota.sz);
        }
        self.esz = esz;
    }
}

/// The kernel's feedback loop (`damon_feed_loop_next_input`): raise the input in proportion
/// to how far the score is under the goal, lower it likewise above; at twice the goal, drop to
/// the minimum at once.
pub(crate) fn next_input(last: u64, score: u64) -> u64 {
    const MIN_INPUT: u64 = GOAL_SCORE;
    if score == GOAL_SCORE {
        return last;
    }
    if score >= 2 * GOAL_SCORE {
        return MIN_INPUT;
    }
    let over = score > GOAL_SCORE;
    let diff = score.abs_diff(GOAL_SCORE);
    let compensation = (last as u128 * diff as u128 / GOAL_SCORE as u128).min(u64::MAX as u128);
    let compensation = compensation as u64;
    if over {
        last.saturating_sub(compensation).max(MIN_INPUT)
    } else {
        last.saturating_add(compensation)
    }
}

/// How much a region should go first under `action`'s quota, 0..=MAX_SCORE: hot regions first
/// for actions that favour hot memory, cold ones for those that demote, the same for all
/// others. `max_nr_accesses` is the samples per aggregation.
pub fn score(r: &Region, action: Action, quota: &Quota, max_nr_accesses: u32, aggr_us: u64) -> u32 {
    let hot = || hot_score(r, quota, max_nr_accesses, aggr_us);
    match action {
        Action::Pageout | Action::Cold | Action::LruDeprio | Action::MigrateCold => {
            MAX_SCORE - hot()
        }
        Action::LruPrio | Action::MigrateHot | Action::Collapse | Action::Willneed => hot(),
        Action::Hugepage | Action::Nohugepage | Action::Stat => MAX_SCORE,
    }
}

/// The kernel's hotness: the access rate and the logarithm of the age (counted as coldness
/// when the region saw no access), weighted.
fn hot_score(r: &Region, quota: &Quota, max_nr_accesses: u32, aggr_us: u64) -> u32 {
    let freq = r.nr_accesses as u64 * MAX_SUBSCORE / max_nr_accesses.max(1) as u64;
    let mut age_s = r.age as u64 * aggr_us / 1_000_000;
    let mut age_log = 0i64;
    while age_log < MAX_AGE_IN_LOG && age_s != 0 {
        age_log += 1;
        age_s >>= 1;
    }
    if freq == 0 {
        age_log = -age_log;
    }
    let age = ((age_log + MAX_AGE_IN_LOG) as u64) * MAX_SUBSCORE / MAX_AGE_IN_LOG as u64 / 2;
    let (wf, wa) = (quota.weight_nr_accesses as u64, quota.weight_age as u64);
    let weighted = wf * freq + wa * age;
    let hotness = weighted.checked_div(wf + wa).unwrap_or(weighted);
    (hotness * MAX_SCORE as u64 / MAX_SUBSCORE).min(MAX_SCORE as u64) as u32
}

/// The lowest score whose regions, with all higher-scoring ones, still fit in `esz` bytes
/// (`sizes[score]`: bytes of the eligible regions with that score).
pub(crate) fn min_score(sizes: &[u64; MAX_SCORE as usize + 1], esz: u64) -> u32 {
    let mut cumulated = 0u64;
    for score in (0..=MAX_SCORE).rev() {
        cumulated = cumulated.saturating_add(sizes[score as usize]);
        if cumulated >= esz {
            return score;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feedback_loop_moves_towards_the_goal() {
        // Under the goal: the input grows by the shortfall's share.
        assert_eq!(next_input(10_000, 5_000), 15_000);
        assert_eq!(next_input(40_000, 10_000), 40_000);
        // Over it: it shrinks likewise, never under the minimum; at twice, to the minimum.
        assert_eq!(next_input(40_000, 15_000), 20_000);
        assert_eq!(next_input(12_000, 19_000), 10_000);
        assert_eq!(next_input(1 << 40, 20_000), 10_000);
        assert_eq!(next_input(u64::MAX, 0), u64::MAX);
    }

    #[test]
    fn the_effective_quota_takes_the_tightest_limit() {
        let mut charge = Charge::new();
        let quota = Quota { sz: 1 << 20, ..Quota::default() };
        charge.set_effective(&quota, 4096);
        assert_eq!(charge.esz, 1 << 20);
        // A time quota before any measure: a thousand pages per ms.
        let quota = Quota { time_ms: 10, ..Quota::default() };
        charge.set_effective(&quota, 4096);
        assert_eq!(charge.esz, 4096 * 1024 * 10);
        // Measured: 1 MiB took 2 ms, so 10 ms allow 5 MiB; a size quota of 3 MiB is tighter.
        charge.total_charged_sz = 1 << 20;
        charge.total_charged_ns = 2_000_000;
        let quota = Quota { time_ms: 10, sz: 3 << 20, ..Quota::default() };
        charge.set_effective(&quota, 4096);
        assert_eq!(charge.esz, 3 << 20);
        // A goal half met raises the feedback input from its minimum (1 byte) by half.
        let goal = Goal::new(Metric::UserInput, 100, 50);
        let quota = Quota { goals: vec![goal], ..Quota::default() };
        let mut charge = Charge::new();
        charge.set_effective(&quota, 4096);
        assert_eq!((charge.esz_bp, charge.esz), (15_000, 1));
    }

    #[test]
    fn cold_actions_prefer_old_idle_regions_and_hot_ones_busy_regions() {
        let quota = Quota { weight_nr_accesses: 1, weight_age: 1, ..Quota::default() };
        let region = |nr_accesses, age| Region { nr_accesses, age, ..Region::new(0, 4096) };
        let (old_idle, young_idle, busy) = (region(0, 1000), region(0, 1), region(20, 1000));
        let s = |r: &Region, a| score(r, a, &quota, 20, 100_000);
        assert!(s(&old_idle, Action::Pageout) > s(&young_idle, Action::Pageout));
        assert!(s(&young_idle, Action::Pageout) > s(&busy, Action::Pageout));
        assert!(s(&busy, Action::Collapse) > s(&old_idle, Action::Collapse));
        assert_eq!(s(&busy, Action::Stat), MAX_SCORE);
        let mut sizes = [0u64; MAX_SCORE as usize + 1];
        sizes[90] = 100;
        sizes[50] = 100;
        sizes[10] = 100;
        assert_eq!(min_score(&sizes, 150), 50, "the 90s and the 50s reach 150 bytes");
        assert_eq!(min_score(&sizes, 100), 90);
        assert_eq!(min_score(&sizes, 1000), 0, "everything fits");
    }
}
