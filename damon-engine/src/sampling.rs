//! How often a region is sampled. `Every` region every sample interval, as the kernel does; or
//! `Adaptive`: each region as often as its access rate needs for DAMON's precision, and no
//! more. A sample's binomial error is √(p(1−p)/n); the kernel's worst case, at p = ½ with n
//! samples per aggregation N, is ½/√N. A region whose long-run rate is near 0 or 1 reaches that
//! with fewer samples: n = ⌈4·p(1−p)·N⌉, at least 1. Samples are taken every 2^k intervals so
//! that regions share their ticks (a target with nothing due is not visited at all), and counts
//! are scaled back to N samples, so `nr_accesses` keeps its meaning. The rate comes from the
//! region's quarter evidence (hundreds of samples), forgotten when a window contradicts it, so a
//! region that changes is sampled fully again the next aggregation.
//!
//! Memory the evidence says is (nearly) never accessed, and memory no sample could read, is
//! sampled *quietly*: each sample's page is cleared and checked at the same visit, so one
//! sample spans every interval since the last, and a clear accessed bit proves them all idle.
//! A quiet sample that finds an access counts one access, and ends the quiet for a window:
//! memory that was idle (the hit contradicts its evidence), or whose every long sample hit, is
//! sampled fully again; memory known to be touched now and then (a slow sweep's) as often as
//! its rate needs, and may go quiet again. Quiet samples are evidence of their whole span.
//! Quiet memory costs a visit per `2^k` intervals, not two. Memory with no access in its
//! evidence at all is sampled in *pairs*: two pages, both prepared right after an aggregation
//! and checked at the next, so a window costs one visit (the aggregation's own) and still
//! looks at two pages, where an arriving access may land. A pair's count is its hits (0–2),
//! each page having read the whole window: for memory touched less than once a window that is
//! up to twice the kernel's expected count (which is below one). A slow sweep's memory keeps
//! two visits: a pass in the window would hit both pages of a pair.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{
    region::{HOLD, PAIRED, QUIET, Quarters, Region},
    split::evidence::tally,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Every region every sample interval (the kernel's way).
    #[default]
    Every,
    /// Each region as often as its rate needs (see the module's documentation).
    Adaptive,
}

impl Sampling {
    pub const ALL: [Sampling; 2] = [Self::Every, Self::Adaptive];

    pub fn name(self) -> &'static str {
        match self {
            Self::Every => "every",
            Self::Adaptive => "adaptive",
        }
    }

    pub fn about(self) -> &'static str {
        match self {
            Self::Every => "every region every sample interval, as the kernel",
            Self::Adaptive => "each region as often as its rate needs for DAMON's precision",
        }
    }
}

impl fmt::Display for Sampling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Sampling {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| anyhow::anyhow!("unknown sampling `{text}` (every or adaptive)"))
    }
}

/// Below this long-run rate memory is sampled quietly: accesses so rare that a long sample
/// mostly finds none.
const QUIET_RATE: f64 = 0.05;

/// A window contradicts the evidence when its hits stray this many standard errors from what
/// the evidence expects (plus half a sample for counts this small).
const Z_SURPRISE: f64 = 2.5;

/// Windows of a region's history that count as evidence beside its quarters.
const HISTORY_WINDOWS: u32 = 4;

/// The long-run rate, with half a sample of doubt each way (Jeffreys): no evidence reads ½.
fn rate((hits, samples): (f64, f64)) -> f64 {
    (hits + 0.5) / (samples + 1.0)
}

/// What a region's rate rests on: its quarters' samples, and the windows its count has held
/// (its age), each worth the last window's known samples at the last window's rate. A piece
/// just split off keeps only its share of the quarters, but the whole history: without it, a
/// piece of idle memory would be sampled every interval until its own evidence grew.
fn evidence(r: &Region, window: u32, samples: u32) -> (f64, f64) {
    let (hits, n) = per_interval(r, window);
    let windows = r.age.min(HISTORY_WINDOWS) as f64;
    let (window_hits, intervals) = window_counts(r, window, samples);
    (hits + window_hits * windows, n + intervals * windows)
}

/// The window's hits (from its count on the scale of `samples`) and the intervals its samples
/// read (a long sample its whole span).
fn window_counts(r: &Region, window: u32, samples: u32) -> (f64, f64) {
    let hits = r.nr_accesses.min(samples) as f64 * r.known(window) as f64 / samples.max(1) as f64;
    (hits, (r.samples_read(window) * r.span(window)) as f64)
}

/// The quarters' hits and samples in samples of one interval. A quiet region's quarters hold
/// long samples, each spanning `span` intervals and hit when any of them was: their hit rate q
/// is that of the span, 1 − q = (1 − p)^span for the interval's p, and each stands for `span`
/// intervals. Read as intervals, a slowly swept area (hit in a third of its long samples) would
/// look busy, be sampled every interval for a window, look idle again, and so on.
fn per_interval(r: &Region, window: u32) -> (f64, f64) {
    let (hits, n) = tally(&r.quarters, 0..4);
    let (hits, n, span) = (hits as f64, n as f64, r.span(window) as f64);
    if span <= 1.0 || n == 0.0 {
        return (hits, n);
    }
    let p = 1.0 - (1.0 - (hits / n).min(1.0)).powf(1.0 / span);
    (p * n * span, n * span)
}

/// At the end of a window of `window` intervals (before the reset): forgets the region's
/// evidence if the window contradicts it, and sets its stride for the next window. A region
/// none of whose samples could be read is sampled least: it will most likely stay unreadable.
pub(crate) fn plan(r: &mut Region, window: u32, samples: u32) {
    let woke = r.plan & QUIET != 0 && r.nr_accesses > 0;
    let fresh = saturated(r, window, samples) || surprised(r, window, samples);
    if fresh {
        r.quarters = Quarters::default();
    }
    let unreadable = r.all_unknown(window);
    // After a surprise the history is what was contradicted.
    let p = rate(if fresh { (0.0, 0.0) } else { evidence(r, window, samples) });
    let needed = if unreadable { 1.0 } else { samples_needed(p, window) };
    let mut log = 0;
    while log < 15 && (window >> (log + 1)) as f64 >= needed {
        log += 1;
    }
    let quiet = unreadable || (p < QUIET_RATE && !woke);
    // Memory with no access in its evidence needs two long samples a window at most: both
    // at one visit. (A slow sweep's memory keeps visits apart: pairs spanning whole windows
    // would see every pass, as a window with a pass hits in both.)
    let idle = tally(&r.quarters, 0..4).0 == 0 && r.nr_accesses == 0 && r.last_nr_accesses == 0;
    let log = if quiet && idle && needed <= 2.0 { PAIRED } else { log };
    r.plan = r.plan & HOLD | log | if quiet { QUIET } else { 0 };
}

/// Samples a window of `window` intervals needs for the kernel's worst-case precision, from the
/// region's evidence.
fn samples_needed(p: f64, window: u32) -> f64 {
    (4.0 * p * (1.0 - p) * window as f64).ceil().max(1.0)
}

/// Whether every long sample of a quiet window found an access: then quiet sampling cannot
/// tell the rate, however low the evidence says it is, and the region is sampled fully again.
/// (A single hit is weighed by `surprised`: a slow sweep's areas find some.)
fn saturated(r: &Region, window: u32, samples: u32) -> bool {
    if r.plan & QUIET == 0 {
        return false;
    }
    let read = r.samples_read(window);
    read > 0 && window_counts(r, window, samples).0 >= read as f64
}

/// Whether the window just finished (its `nr_accesses`, on the scale of `samples`) contradicts
/// the region's evidence: then the evidence goes, and the region is sampled fully again.
fn surprised(r: &Region, window: u32, samples: u32) -> bool {
    let (hits, intervals) = window_counts(r, window, samples);
    if intervals == 0.0 {
        return false;
    }
    let p = rate(per_interval(r, window));
    (hits - intervals * p).abs() > Z_SURPRISE * (intervals * p * (1.0 - p)).sqrt() + 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::STRIDE;

    fn evidence(hits: u8, samples: u8) -> Quarters {
        Quarters { hits: [hits; 4], samples: [samples; 4] }
    }

    /// The plan for a region with `quarters` whose window agreed with them.
    fn plan_for(quarters: Quarters, window: u32) -> u8 {
        let mut r = Region { quarters, ..Region::new(0, 1 << 20) };
        let (hits, samples) = tally(&quarters, 0..4);
        r.nr_accesses = (hits * window).checked_div(samples).unwrap_or(window / 2);
        plan(&mut r, window, window);
        r.plan
    }

    #[test]
    fn plans_follow_the_rate() {
        // No evidence: every interval. Always hot: once per aggregation; long idle: quietly,
        // in pairs.
        assert_eq!(plan_for(Quarters::default(), 20), 0);
        assert_eq!(plan_for(evidence(64, 64), 20), 4);
        assert_eq!(plan_for(evidence(0, 64), 20), PAIRED | QUIET);
        // Half the time: every interval; 90 %: 8 samples needed, every other interval.
        assert_eq!(plan_for(evidence(32, 64), 20), 0);
        assert_eq!(plan_for(evidence(58, 64), 20), 1);
        // Unreadable all window: quietly, least.
        let mut r = Region::new(0, 1 << 20);
        r.unknown = 20;
        plan(&mut r, 20, 20);
        assert_eq!(r.plan, PAIRED | QUIET);
    }

    #[test]
    fn a_pair_is_prepared_after_an_aggregation_and_checked_at_the_next() {
        let r = Region { plan: PAIRED | QUIET, ..Region::new(0, 1 << 20) };
        let checked: Vec<u64> = (1..=20).filter(|&t| r.checked_at(t, 20)).collect();
        let prepared: Vec<u64> = (0..20).filter(|&t| r.prepared_at(t, 20)).collect();
        assert_eq!((checked, prepared), (vec![20], vec![0]));
        // Its count is its hits; each page read the whole window.
        assert_eq!((r.known(20), r.samples_read(20), r.span(20)), (20, 2, 20));
        // The second page lies a quarter to three quarters of the region further, wrapping;
        // regions under four pages have none.
        for addr in (0..1 << 20).step_by(4096 * 7 + 123) {
            let partner = r.partner_of(addr).unwrap();
            let distance = (partner + (1 << 20) - addr) % (1 << 20);
            assert!((1 << 18..=3 << 18).contains(&distance), "{addr:#x} {partner:#x}");
        }
        assert_eq!(r.partner_of(1 << 20), None, "outside");
        let page = Region { plan: PAIRED | QUIET, ..Region::new(0, 3 * 4096) };
        assert_eq!((page.partner_of(0), page.known(20), page.samples_read(20)), (None, 20, 1));
        // One page unread: half the window read.
        let half = Region { unknown: 1, ..r };
        assert_eq!((half.known(20), half.samples_read(20)), (10, 1));
    }

    #[test]
    fn a_pair_that_both_hit_is_sampled_fully_again_one_hit_by_its_rate() {
        let pair = |hits| Region {
            quarters: evidence(2, 16),
            plan: PAIRED | QUIET,
            nr_accesses: hits,
            ..Region::new(0, 1 << 20)
        };
        let mut r = pair(1);
        plan(&mut r, 20, 20);
        assert_eq!(r.quarters, evidence(2, 16), "one hit in two is what it expects");
        assert_eq!(r.plan & QUIET, 0);
        let mut r = pair(2);
        plan(&mut r, 20, 20);
        assert_eq!((r.plan, r.quarters), (0, Quarters::default()));
    }

    #[test]
    fn a_quiet_region_that_finds_an_access_is_sampled_fully_again() {
        let mut r = Region { quarters: evidence(0, 64), plan: 4 | QUIET, ..Region::new(0, 4096) };
        r.nr_accesses = 1;
        plan(&mut r, 20, 20);
        assert_eq!((r.plan, r.quarters), (0, Quarters::default()));
    }

    #[test]
    fn a_slowly_swept_quiet_region_keeps_its_evidence_through_a_hit() {
        // Hit in a third of its long samples (10 intervals each): about 4 % per interval.
        let quiet = |hits| Region {
            quarters: evidence(hits, 16),
            plan: 4 | QUIET,
            nr_accesses: 1,
            ..Region::new(0, 1 << 20)
        };
        let mut r = quiet(5);
        plan(&mut r, 20, 20);
        assert_eq!(r.quarters, evidence(5, 16), "a hit it expects is no surprise");
        assert_eq!(r.plan & QUIET, 0, "one window sampled by its rate");
        assert!(r.plan & STRIDE >= 2, "not every interval: {}", r.plan);
        // Both long samples hit: quiet sampling cannot tell the rate any more.
        let mut r = quiet(5);
        r.nr_accesses = 2;
        plan(&mut r, 20, 20);
        assert_eq!((r.plan, r.quarters), (0, Quarters::default()));
    }

    #[test]
    fn quiet_samples_span_their_intervals() {
        let r = Region { plan: 4 | QUIET, ..Region::new(0, 4096) };
        let checked: Vec<u64> = (1..=20).filter(|&t| r.checked_at(t, 20)).collect();
        let prepared: Vec<u64> = (0..20).filter(|&t| r.prepared_at(t, 20)).collect();
        assert_eq!((checked, prepared), (vec![16, 20], vec![0, 16]));
        assert_eq!(r.known(20), 20);
        let normal = Region { plan: 3, ..Region::new(0, 4096) };
        let checked: Vec<u64> = (1..=20).filter(|&t| normal.checked_at(t, 20)).collect();
        let prepared: Vec<u64> = (0..20).filter(|&t| normal.prepared_at(t, 20)).collect();
        // Short samples count back from the window's end: the last is the aggregation's tick.
        assert_eq!((checked, prepared), (vec![12, 20], vec![11, 19]));
        assert_eq!(normal.known(20), 2);
        let hot = Region { plan: 4, ..normal };
        let checked: Vec<u64> = (1..=20).filter(|&t| hot.checked_at(t, 20)).collect();
        let prepared: Vec<u64> = (0..20).filter(|&t| hot.prepared_at(t, 20)).collect();
        assert_eq!((checked, prepared, hot.known(20)), (vec![20], vec![19], 1));
    }

    #[test]
    fn a_window_against_long_evidence_is_a_surprise() {
        let mut r = Region::new(0, 1 << 20);
        r.quarters = evidence(0, 64);
        r.plan = 4; // one sample of 20
        r.nr_accesses = 20; // and it hit
        assert!(surprised(&r, 20, 20));
        r.nr_accesses = 0;
        assert!(!surprised(&r, 20, 20));
        r.quarters = evidence(32, 64);
        r.plan = 0;
        r.nr_accesses = 12; // 12 of 20 at a rate of one half: noise
        assert!(!surprised(&r, 20, 20));
    }
}
