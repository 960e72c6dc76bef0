//! Scenarios: an address space with known access probabilities, timed changes to it, and the
//! monitoring attributes to run with. Built-ins live in `builtin.rs`; users write TOML:
//!
//! ```toml
//! name = "two-phase"
//! size = "1GiB"
//! duration = "60s"
//! [attrs]                 # engine attributes; omitted ones take the kernel's defaults
//! max_nr_regions = 100
//! [[ranges]]              # applied in order over an unaccessed space; where ranges overlap
//!                         # the later wins (validation warns: it is seldom meant)
//! start = "0"
//! end = "64MiB"
//! probability = 0.9       # chance that a page is accessed within one sample interval
//! repeat = 4              # optional: also at start + k * stride
//! stride = "256MiB"
//! [[events]]
//! at = "20s"
//! kind = "change"         # appear | disappear | change | move
//! start = "512MiB"
//! end = "576MiB"
//! probability = 0.5       # appear, change
//! # to = "768MiB"         # move: the range's accesses move there
//! ```

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::truth::Truth;
use crate::{
    Attrs, MIN_REGION_SZ, Region,
    units::{Micros, Size},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub size: Size,
    pub duration: Micros,
    /// The run's default seed (`--seed` overrides it).
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub initial_regions: InitialRegions,
    #[serde(default)]
    pub attrs: Attrs,
    #[serde(default)]
    pub ranges: Vec<RangeSpec>,
    #[serde(default)]
    pub events: Vec<EventSpec>,
}

/// Where monitoring starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitialRegions {
    /// One region over the whole space, as for physical memory.
    #[default]
    Whole,
    /// One region per piece of the initial truth: the state a long-running monitor reached.
    Truth,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    pub start: Size,
    pub end: Size,
    pub probability: f64,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub repeat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Size>,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Appear,
    Disappear,
    Change,
    Move,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    pub at: Micros,
    pub kind: EventKind,
    pub start: Size,
    pub end: Size,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Size>,
}

/// An area whose rate an event changed, and the rate it should be seen at.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub area: (u64, u64),
    pub probability: f64,
}

impl EventSpec {
    /// Applies the event to `truth`; returns the areas whose rate changed.
    pub fn apply(&self, truth: &mut Truth) -> Vec<Change> {
        let (start, end) = (self.start.0, self.end.0);
        let set = |truth: &mut Truth, area: (u64, u64), probability: f64| {
            truth.set(area.0, area.1, probability);
            Change { area, probability }
        };
        match self.kind {
            EventKind::Appear | EventKind::Change => {
                vec![set(truth, (start, end), self.probability.unwrap_or(0.0))]
            }
            EventKind::Disappear => vec![set(truth, (start, end), 0.0)],
            EventKind::Move => {
                let to = self.to.map_or(start, |to| to.0);
                let destination = (to, to + (end - start));
                let probability = truth.probability_at(start);
                let vacated = set(truth, (start, end), 0.0);
                let arrived = set(truth, destination, probability);
                let overlap = start < destination.1 && destination.0 < end;
                if overlap { vec![arrived] } else { vec![vacated, arrived] }
            }
        }
    }
}

/// The most ranges a scenario places (each repeat counted), and the most events it holds.
pub const MAX_PLACED: u64 = 100_000;
pub const MAX_EVENTS: u64 = 10_000;
/// Bounds on a run: aggregations, sample intervals, regions, and checks at most (sample
/// intervals × max_nr_regions; one simulated hour at 20,000 regions is 1.4 × 10^10).
pub const MAX_AGGREGATIONS: u64 = 1_000_000;
pub const MAX_SAMPLES: u64 = 100_000_000;
pub const MAX_REGIONS: u64 = 1_000_000;
pub const MAX_CHECKS: u64 = 100_000_000_000;

impl Scenario {
    pub fn from_toml(text: &str) -> Result<Self> {
        let scenario: Scenario = crate::toml_file::parse(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a scenario always serializes")
    }

    /// Everything a run relies on; one message per problem, naming the range or event. What is
    /// allowed but seldom meant (overlapping ranges) comes back as warnings, one line each, for
    /// the caller to show.
    pub fn validate(&self) -> Result<Vec<String>> {
        let size = self.size.0;
        if size < 2 * MIN_REGION_SZ {
            bail!("size must be at least two pages (got {})", self.size);
        }
        if self.duration.0 == 0 {
            bail!("duration must be positive");
        }
        self.attrs.validate().context("attrs")?;
        if self.duration.0 < self.attrs.aggr_us {
            bail!("duration ({}) is shorter than one aggregation interval", self.duration);
        }
        // A run's time grows with its sample intervals times its regions: bounded, so that a
        // run ends within minutes whatever it asks for; with the intervals tuned, at the
        // shortest they may be tuned to (an aggregation keeps its number of samples).
        let goal = &self.attrs.intervals_goal;
        let sample_us =
            if goal.aggrs == 0 { self.attrs.sample_us } else { goal.min_sample_us.max(1) };
        let samples = self.duration.0 / sample_us;
        let aggregations = samples / u64::from(self.attrs.samples_per_aggr());
        if aggregations > MAX_AGGREGATIONS {
            bail!(
                "{aggregations} aggregation intervals in {}: at most {MAX_AGGREGATIONS}",
                self.duration
            );
        }
        if samples > MAX_SAMPLES {
            bail!("{samples} sample intervals in {}: at most {MAX_SAMPLES}", self.duration);
        }
        let regions = u64::from(self.attrs.max_nr_regions);
        if regions > MAX_REGIONS {
            bail!("max_nr_regions {regions}: the simulator holds at most {MAX_REGIONS}");
        }
        if samples.saturating_mul(regions) > MAX_CHECKS {
            bail!(
                "{samples} sample intervals × max_nr_regions {regions} could be {} checks: at most {MAX_CHECKS}",
                samples.saturating_mul(regions)
            );
        }
        let check_probability = |p: f64, what: &str| {
            if !(0.0..=1.0).contains(&p) {
                bail!("{what}: probability {p} is outside [0, 1]");
            }
            Ok(())
        };
        let check_area = |start: u64, end: u64, what: &str| {
            if start >= end {
                bail!("{what}: start {} is not below end {}", Size(start), Size(end));
            }
            if end > size {
                bail!("{what}: end {} is beyond the space's size {}", Size(end), self.size);
            }
            Ok(())
        };
        // Each placed range and event costs memory and time in every run: bounded, so a
        // scenario file cannot ask for more than a machine has.
        let placed = self.ranges.iter().map(|r| r.repeat).fold(0u64, u64::saturating_add);
        if placed > MAX_PLACED {
            bail!("{placed} ranges placed (repeats counted): at most {MAX_PLACED}");
        }
        if self.events.len() as u64 > MAX_EVENTS {
            bail!("{} events: at most {MAX_EVENTS}", self.events.len());
        }
        for (i, range) in self.ranges.iter().enumerate() {
            let what = format!("ranges[{i}]");
            check_probability(range.probability, &what)?;
            if range.repeat == 0 {
                bail!("{what}: repeat must be at least 1");
            }
            check_area(range.start.0, range.end.0, &what)?;
            let stride = match (range.repeat, range.stride) {
                (1, _) => continue,
                (_, Some(stride)) if stride.0 > 0 => stride.0,
                _ => bail!("{what}: repeat needs a positive stride"),
            };
            let last = stride
                .checked_mul(range.repeat - 1)
                .and_then(|offset| offset.checked_add(range.start.0))
                .and_then(|s| Some((s, s.checked_add(range.end.0 - range.start.0)?)));
            match last {
                Some((s, e)) => check_area(s, e, &format!("{what}, repeat {}", range.repeat))?,
                None => bail!("{what}: repeats overflow the address space"),
            }
        }
        for (i, event) in self.events.iter().enumerate() {
            let what = format!("events[{i}] ({:?} at {})", event.kind, event.at);
            check_area(event.start.0, event.end.0, &what)?;
            if event.at > self.duration {
                bail!("{what}: happens after the end of the run ({})", self.duration);
            }
            match (event.kind, event.probability, event.to) {
                (EventKind::Appear | EventKind::Change, Some(p), None) => {
                    check_probability(p, &what)?
                }
                (EventKind::Appear | EventKind::Change, None, _) => {
                    bail!("{what}: needs a probability")
                }
                (EventKind::Disappear, None, None) => {}
                (EventKind::Move, None, Some(to)) => {
                    let len = event.end.0 - event.start.0;
                    check_area(to.0, to.0.saturating_add(len), &format!("{what}: destination"))?;
                }
                (EventKind::Move, _, None) => bail!("{what}: needs `to`"),
                _ => bail!("{what}: has a field that does not apply to this kind"),
            }
        }
        Ok(self.overlaps())
    }

    /// One line per pair of ranges that overlap (the first place they do): the later wins there.
    fn overlaps(&self) -> Vec<String> {
        let name = |(i, k): (usize, u64)| match self.ranges[i].repeat {
            1 => format!("ranges[{i}]"),
            _ => format!("ranges[{i}] (repeat {k})"),
        };
        // Every placed range (start, end, range, repeat), by start; a sweep finds each range that
        // starts before the furthest end so far.
        let mut placed: Vec<(u64, u64, (usize, u64))> = self
            .ranges
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                let stride = r.stride.map_or(0, |s| s.0);
                (0..r.repeat).map(move |k| (r.start.0 + k * stride, r.end.0 + k * stride, (i, k)))
            })
            .collect();
        placed.sort_unstable_by_key(|&(start, end, _)| (start, end));
        let mut warnings = Vec::new();
        let mut pairs = std::collections::HashSet::new();
        let mut furthest: Option<(u64, (usize, u64))> = None;
        for (start, end, this) in placed {
            if let Some((reach, other)) = furthest
                && start < reach
            {
                let (first, later) = if other < this { (other, this) } else { (this, other) };
                if pairs.insert((first.0, later.0)) {
                    warnings.push(format!(
                        "{} overlaps {} at {}..{}: the later range wins there",
                        name(later),
                        name(first),
                        Size(start),
                        Size(end.min(reach))
                    ));
                }
            }
            if furthest.is_none_or(|(reach, _)| end > reach) {
                furthest = Some((end, this));
            }
        }
        warnings
    }

    /// The truth at time 0.
    pub fn initial_truth(&self) -> Truth {
        let placed = self.ranges.iter().flat_map(|range| {
            let stride = range.stride.map_or(0, |s| s.0);
            (0..range.repeat).map(move |k| {
                let offset = k * stride;
                (range.start.0 + offset, range.end.0 + offset, range.probability)
            })
        });
        Truth::painted(self.size.0, placed)
    }

    pub fn initial_regions(&self, truth: &Truth) -> Vec<Region> {
        match self.initial_regions {
            InitialRegions::Whole => vec![Region::new(0, self.size.0)],
            InitialRegions::Truth => truth.pieces().map(|(s, e, _)| Region::new(s, e)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "two-phase"
size = "1GiB"
duration = "60s"
[attrs]
max_nr_regions = 100
[[ranges]]
start = "0"
end = "64MiB"
probability = 0.9
repeat = 4
stride = "256MiB"
[[events]]
at = "20s"
kind = "change"
start = "512MiB"
end = "576MiB"
probability = 0.5
[[events]]
at = "30s"
kind = "move"
start = "0"
end = "64MiB"
to = "960MiB"
"#;

    #[test]
    fn the_documented_example_parses_and_builds_its_truth() {
        let s = Scenario::from_toml(EXAMPLE).unwrap();
        assert_eq!((s.size.0, s.duration.0, s.attrs.max_nr_regions), (1 << 30, 60_000_000, 100));
        assert_eq!(s.attrs.sample_us, 5_000, "omitted attributes take the kernel's defaults");
        let truth = s.initial_truth();
        assert_eq!(truth.pieces().filter(|p| p.2 == 0.9).count(), 4);
        assert_eq!(truth.probability_at((768 << 20) + 5), 0.9);
        assert_eq!(truth.probability_at(64 << 20), 0.0);
    }

    #[test]
    fn events_change_the_truth_and_name_what_changed() {
        let s = Scenario::from_toml(EXAMPLE).unwrap();
        let mut truth = s.initial_truth();
        let changes = s.events[1].apply(&mut truth);
        assert_eq!(
            changes,
            vec![
                Change { area: (0, 64 << 20), probability: 0.0 },
                Change { area: (960 << 20, 1 << 30), probability: 0.9 },
            ]
        );
        assert_eq!(truth.probability_at(0), 0.0);
        assert_eq!(truth.probability_at((1 << 30) - 1), 0.9);
    }

    #[test]
    fn overlapping_ranges_are_warned_about_once_per_pair() {
        let base = "name = \"x\"\nsize = \"1GiB\"\nduration = \"10s\"\n";
        let range = |start: &str, end: &str, more: &str| {
            format!("[[ranges]]\nstart = \"{start}\"\nend = \"{end}\"\nprobability = 0.5\n{more}")
        };
        let warnings = |ranges: &[String]| {
            Scenario::from_toml(&format!("{base}{}", ranges.concat())).unwrap().validate().unwrap()
        };
        assert!(Scenario::from_toml(EXAMPLE).unwrap().validate().unwrap().is_empty());
        assert_eq!(
            warnings(&[
                range("0", "64MiB", ""),
                range("32MiB", "96MiB", ""),
                range("40MiB", "48MiB", "")
            ]),
            [
                "ranges[1] overlaps ranges[0] at 32MiB..64MiB: the later range wins there",
                // It overlaps both: named once, with the one reaching furthest.
                "ranges[2] overlaps ranges[1] at 40MiB..48MiB: the later range wins there",
            ]
        );
        // Repeats that overlap each other: one line for the range, not one per repeat.
        assert_eq!(
            warnings(&[range("0", "8MiB", "repeat = 8\nstride = \"4MiB\"\n")]),
            [
                "ranges[0] (repeat 1) overlaps ranges[0] (repeat 0) at 4MiB..8MiB: the later range wins there"
            ]
        );
        // Touching is not overlapping.
        assert!(warnings(&[range("0", "8MiB", ""), range("8MiB", "16MiB", "")]).is_empty());
    }

    #[test]
    fn round_trips_through_toml() {
        let s = Scenario::from_toml(EXAMPLE).unwrap();
        let again = Scenario::from_toml(&s.to_toml()).unwrap();
        assert_eq!(again.to_toml(), s.to_toml());
    }

    #[test]
    fn bad_scenarios_get_one_line_naming_the_problem() {
        let err = |text: &str| format!("{:#}", Scenario::from_toml(text).unwrap_err());
        let base = "name = \"x\"\nsize = \"1GiB\"\nduration = \"10s\"\n";
        assert!(
            err(&format!("{base}[[ranges]]\nstart = 0\nend = \"2GiB\"\nprobability = 0.5\n"))
                .contains("ranges[0]: end 2GiB is beyond the space's size 1GiB")
        );
        assert!(
            err(&format!("{base}[[ranges]]\nstart = 0\nend = 4096\nprobability = 1.5\n"))
                .contains("outside [0, 1]")
        );
        assert!(
            err(&format!(
                "{base}[[ranges]]\nstart = 0\nend = 4096\nprobability = 0.5\nrepeat = 3\n"
            ))
            .contains("repeat needs a positive stride")
        );
        assert!(
            err(&format!(
                "{base}[[events]]\nat = \"1s\"\nkind = \"move\"\nstart = 0\nend = 4096\n"
            ))
            .contains("needs `to`")
        );
        assert!(
            err(&format!(
                "{base}[[events]]\nat = \"11s\"\nkind = \"disappear\"\nstart = 0\nend = 4096\n"
            ))
            .contains("after the end of the run")
        );
        assert!(
            err(&format!("{base}[attrs]\nmin_nr_regions = 2\n")).contains("attrs: min_nr_regions")
        );
        assert!(
            err(&format!("{base}colour = \"blue\"\n"))
                .starts_with("line 4: unknown field `colour`")
        );
        assert!(
            err("name = \"x\"\nsize = \"1 parsec\"\nduration = \"1s\"\n")
                .contains("unknown size unit")
        );
        // What a run could not afford fails at once, before anything is placed.
        assert!(
            err(
                "name = \"x\"\nsize = \"1024TiB\"\nduration = \"10s\"\n[[ranges]]\nstart = 0\nend = 4096\nprobability = 0.5\nrepeat = 100000000000\nstride = 4096\n"
            )
            .contains("100000000000 ranges placed (repeats counted): at most 100000")
        );
        let run = |attrs: &str, duration: &str| {
            err(&format!(
                "name = \"x\"\nsize = \"1TiB\"\nduration = \"{duration}\"\n[attrs]\n{attrs}"
            ))
        };
        assert_eq!(
            run("", "99999h"),
            "3599964000 aggregation intervals in 99999h: at most 1000000"
        );
        assert_eq!(
            run("sample_us = 1\naggr_us = 1000", "200s"),
            "200000000 sample intervals in 200s: at most 100000000"
        );
        assert_eq!(
            run("min_nr_regions = 100000000\nmax_nr_regions = 100000000", "10s"),
            "max_nr_regions 100000000: the simulator holds at most 1000000"
        );
        assert!(run("max_nr_regions = 1000000", "2h").contains("checks: at most 100000000000"));
        let tuned = "[attrs.intervals_goal]\naccess_bp = 400\naggrs = 3\nmin_sample_us = 1\nmax_sample_us = 10000000";
        assert_eq!(run(tuned, "1h"), "180000000 aggregation intervals in 1h: at most 1000000");
        let event = "[[events]]\nat = \"1s\"\nkind = \"disappear\"\nstart = 0\nend = 4096\n";
        let many =
            format!("name = \"x\"\nsize = \"1GiB\"\nduration = \"10s\"\n{}", event.repeat(10_001));
        assert!(err(&many).contains("10001 events: at most 10000"), "{}", err(&many));
        // 2^64 bytes do not fit.
        assert!(
            err("name = \"x\"\nsize = \"16777216TiB\"\nduration = \"1s\"\n")
                .contains("is 2^64 bytes or more")
        );
        for text in [EXAMPLE, base] {
            let message =
                Scenario::from_toml(&format!("{text}\nsize = 1\n")).unwrap_err().to_string();
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }
}
