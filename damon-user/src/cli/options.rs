//! Monitoring options shared by every command that runs the engine, named as damo names them,
//! from the command line or a TOML file (`--config`); the command line wins. The file is read
//! once, when the options are resolved.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{
    Args,
    builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _},
};
use damon_engine::{
    Attrs, CoreVersion, IntervalsGoal, Sampling, SplitPolicy,
    units::{Micros, parse_duration_us},
};
use serde::Deserialize;

use crate::monitor::{DEFAULT_RECLAIM_BACKOFF, MonitorConfig};

/// damo's default operations update interval, and udamon's: mappings and cgroup membership are
/// re-read this often (the kernel's own default is 60 s).
pub const DEFAULT_UPDR_US: u64 = 1_000_000;

#[derive(Args, Debug, Default)]
pub struct MonitoringArgs {
    /// Sample interval: how often each region's sampled page is checked (e.g. 5ms; a bare number
    /// is microseconds, as in damo). Default 5ms.
    #[arg(long, value_name = "DURATION")]
    pub sample: Option<String>,
    /// Aggregation interval: how often the access counts are reported, and regions merged and
    /// split (e.g. 100ms). A region's count is out of aggr/sample samples. Default 100ms.
    #[arg(long, value_name = "DURATION")]
    pub aggr: Option<String>,
    /// Operations update interval: how often regions are re-fitted to the mappings (and a
    /// cgroup's members re-read). Default 1s, as in damo.
    #[arg(long, value_name = "DURATION")]
    pub updr: Option<String>,
    /// Minimum number of regions (default 10).
    #[arg(long, value_name = "N")]
    pub minr: Option<u32>,
    /// Maximum number of regions (default 1000).
    #[arg(long, value_name = "N")]
    pub maxr: Option<u32>,
    /// What to do above max_nr_regions / 2 [default: adaptive].
    #[arg(long = "split-policy", alias = "policy", value_name = "POLICY", value_parser = named(SplitPolicy::ALL.map(|p| (p.name(), p.about()))).map(|s| s.parse::<SplitPolicy>().expect("a listed name")))]
    pub policy: Option<SplitPolicy>,
    /// Seed of the engine's randomness, to repeat a run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How often each region is sampled: `adaptive` (as often as its rate needs for DAMON's
    /// precision; counts stay on DAMON's scale) or `every` (every interval, as the kernel)
    /// [default: adaptive when monitoring, every in `sim`].
    #[arg(long, value_name = "HOW", value_parser = named(Sampling::ALL.map(|s| (s.name(), s.about()))).map(|s| s.parse::<Sampling>().expect("a listed name")))]
    pub sampling: Option<Sampling>,
    /// Kernel behaviour where versions differ (merge retries, sampling ranges) [default: newest].
    #[arg(long, value_name = "VERSION", value_parser = named(CoreVersion::ALL.map(|v| (v.name(), v.about()))).map(|s| s.parse::<CoreVersion>().expect("a listed name")))]
    pub core_version: Option<CoreVersion>,
    /// Memory pressure (PSI "some avg10" of a target's cgroup, or of the system, in percent) from
    /// which udamon clears only one in 16 of the accessed pages it samples, since each clear
    /// hurries its page towards reclaim; the others read unknown; `off`: never [default: 10].
    #[arg(long, value_name = "PERCENT|off")]
    pub reclaim_backoff: Option<String>,
    /// DAMON's intervals auto-tuning, as damo takes it: aim for ACCESS_BP of the accesses an
    /// aggregation could observe (basis points, or a percentage like 4%), retuning the sample
    /// interval within [MIN_SAMPLE, MAX_SAMPLE] every AGGRS aggregations (the aggregation interval
    /// keeps its number of samples). E.g. `4% 3 5ms 10s`; off by default.
    #[arg(long = "monitoring_intervals_goal", alias = "monitoring-intervals-goal", num_args = 4, value_names = ["ACCESS_BP", "AGGRS", "MIN_SAMPLE", "MAX_SAMPLE"])]
    pub intervals_goal: Option<Vec<String>>,
    /// A TOML file with any of the options above (sample, aggr, updr, minr, maxr, split-policy,
    /// sampling, seed, core-version, reclaim-backoff, and monitoring-intervals-goal as one
    /// string, e.g. "4% 3 5ms 10s"); options given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// A value parser over names, each with its help line.
fn named<const N: usize>(values: [(&'static str, &'static str); N]) -> PossibleValuesParser {
    PossibleValuesParser::new(values.map(|(name, about)| PossibleValue::new(name).help(about)))
}

/// The `--config` file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    sample: Option<Micros>,
    aggr: Option<Micros>,
    updr: Option<Micros>,
    minr: Option<u32>,
    maxr: Option<u32>,
    split_policy: Option<SplitPolicy>,
    sampling: Option<Sampling>,
    seed: Option<u64>,
    core_version: Option<CoreVersion>,
    reclaim_backoff: Option<BackoffValue>,
    monitoring_intervals_goal: Option<String>,
}

/// `reclaim-backoff` in the file: a percentage, or "off".
#[derive(Deserialize)]
#[serde(untagged)]
enum BackoffValue {
    Percent(f64),
    Word(String),
}

/// The options with the config file under them: what was given, nothing defaulted yet.
#[derive(Debug, Default)]
pub struct Settings {
    pub sample_us: Option<u64>,
    pub aggr_us: Option<u64>,
    pub updr_us: Option<u64>,
    pub minr: Option<u32>,
    pub maxr: Option<u32>,
    pub policy: Option<SplitPolicy>,
    pub sampling: Option<Sampling>,
    pub version: Option<CoreVersion>,
    pub seed: Option<u64>,
    /// `Some(None)`: backoff off.
    pub reclaim_backoff: Option<Option<f64>>,
    pub intervals_goal: Option<IntervalsGoal>,
}

impl MonitoringArgs {
    /// Reads the config file (once) and lays the command line over it.
    pub fn resolve(&self) -> Result<Settings> {
        self.over(self.file()?)
    }

    /// The command line laid over `file`.
    fn over(&self, file: ConfigFile) -> Result<Settings> {
        let path = self.config.as_deref().unwrap_or_else(|| "".as_ref()).display();
        let in_file = |key: &str| format!("--config {path}: {key}");
        let from_file = |value: Option<Micros>, key: &str| -> Result<Option<u64>> {
            let value = value.map(|m| m.0);
            if value == Some(0) {
                bail!("{} must be positive", in_file(key));
            }
            Ok(value)
        };
        let interval = |text: &Option<String>, file: Option<Micros>, key: &str| match text {
            Some(text) => positive_interval(text, key).map(Some),
            None => from_file(file, key),
        };
        Ok(Settings {
            sample_us: interval(&self.sample, file.sample, "sample")?,
            aggr_us: interval(&self.aggr, file.aggr, "aggr")?,
            updr_us: interval(&self.updr, file.updr, "updr")?,
            minr: self.minr.or(file.minr),
            maxr: self.maxr.or(file.maxr),
            policy: self.policy.or(file.split_policy),
            sampling: self.sampling.or(file.sampling),
            version: self.core_version.or(file.core_version),
            seed: self.seed.or(file.seed),
            intervals_goal: match (&self.intervals_goal, &file.monitoring_intervals_goal) {
                (Some(words), _) => Some(
                    intervals_goal(&words.iter().map(String::as_str).collect::<Vec<_>>())
                        .context("--monitoring_intervals_goal")?,
                ),
                (None, Some(text)) => Some(
                    intervals_goal(&text.split_whitespace().collect::<Vec<_>>())
                        .with_context(|| in_file("monitoring-intervals-goal"))?,
                ),
                (None, None) => None,
            },
            reclaim_backoff: match (&self.reclaim_backoff, file.reclaim_backoff) {
                (Some(text), _) => Some(backoff(text).context("--reclaim-backoff")?),
                (None, Some(BackoffValue::Percent(p))) => {
                    Some(backoff(&p.to_string()).with_context(|| in_file("reclaim-backoff"))?)
                }
                (None, Some(BackoffValue::Word(w))) => {
                    Some(backoff(&w).with_context(|| in_file("reclaim-backoff"))?)
                }
                (None, None) => None,
            },
        })
    }

    fn file(&self) -> Result<ConfigFile> {
        let Some(path) = &self.config else { return Ok(ConfigFile::default()) };
        let text = crate::util::read_text(path, MAX_CONFIG, "--config")?;
        ConfigFile::parse(&text)
            .map_err(|err| anyhow::anyhow!("--config {}: {err}", path.display()))
    }
}

/// The largest `--config` file read: a few hundred bytes make a full one.
const MAX_CONFIG: u64 = 1 << 20;

impl ConfigFile {
    fn parse(text: &str) -> Result<Self> {
        damon_engine::toml_file::parse(text)
    }
}

/// The settings a `--config` file of `text` gives, with nothing on the command line.
pub(crate) fn settings_of_config(text: &str) -> Result<Settings> {
    MonitoringArgs::default().over(ConfigFile::parse(text)?)
}

/// One of damo's interval options: a duration, a bare number being microseconds; never 0.
fn positive_interval(text: &str, key: &str) -> Result<u64> {
    let us = parse_duration_us(text).with_context(|| format!("--{key}"))?;
    if us == 0 {
        bail!("--{key} {text}: the interval must be positive");
    }
    Ok(us)
}

impl Settings {
    /// `attrs` with the given options applied; the result is not validated here.
    pub fn apply(&self, attrs: &mut Attrs) {
        let set = |target: &mut u64, value: Option<u64>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(&mut attrs.sample_us, self.sample_us);
        set(&mut attrs.aggr_us, self.aggr_us);
        set(&mut attrs.ops_update_us, self.updr_us);
        attrs.min_nr_regions = self.minr.unwrap_or(attrs.min_nr_regions);
        attrs.max_nr_regions = self.maxr.unwrap_or(attrs.max_nr_regions);
        attrs.intervals_goal = self.intervals_goal.unwrap_or(attrs.intervals_goal);
    }

    /// Validated attributes (udamon's defaults under the options) and the rest of a monitoring
    /// run's settings; a random seed unless one is given.
    pub fn monitor_config(&self) -> Result<MonitorConfig> {
        let mut attrs = Attrs { ops_update_us: DEFAULT_UPDR_US, ..Attrs::default() };
        self.apply(&mut attrs);
        attrs.validate()?;
        Ok(MonitorConfig {
            attrs,
            policy: self.policy.unwrap_or_default(),
            sampling: self.sampling.unwrap_or(Sampling::Adaptive),
            version: self.version.unwrap_or_default(),
            seed: self.seed.unwrap_or_else(random_seed),
            reclaim_backoff: self.reclaim_backoff.unwrap_or(Some(DEFAULT_RECLAIM_BACKOFF)),
            schemes: Vec::new(),
        })
    }
}

/// `ACCESS_BP AGGRS MIN_SAMPLE MAX_SAMPLE`, damo's order and units (a bare interval is in µs).
fn intervals_goal(words: &[&str]) -> Result<IntervalsGoal> {
    let [bp, aggrs, min, max] = words else {
        bail!("expected ACCESS_BP AGGRS MIN_SAMPLE MAX_SAMPLE, e.g. `4% 3 5ms 10s`");
    };
    let access_bp = match bp.strip_suffix('%') {
        Some(percent) => percent.parse::<f64>().ok().map(|p| (p * 100.0).round()),
        None => bp.parse::<u32>().ok().map(f64::from),
    };
    let access_bp = match access_bp {
        Some(bp) if (1.0..=10_000.0).contains(&bp) => bp as u32,
        _ => bail!("access goal `{bp}`: give 1 to 10000 basis points, or a percentage up to 100%"),
    };
    let Ok(aggrs @ 1..) = aggrs.parse::<u32>() else {
        bail!("`{aggrs}`: give the aggregations between tunings, at least 1");
    };
    let sample = |text: &str, which: &str| -> Result<u64> {
        match parse_duration_us(text).with_context(|| format!("{which} sample interval"))? {
            0 => bail!("{which} sample interval {text}: the interval must be positive"),
            us => Ok(us),
        }
    };
    let (min_sample_us, max_sample_us) = (sample(min, "minimum")?, sample(max, "maximum")?);
    if min_sample_us > max_sample_us {
        bail!("the sample interval's range {min}..{max} is empty");
    }
    Ok(IntervalsGoal { access_bp, aggrs, min_sample_us, max_sample_us })
}

/// A backoff threshold: "off", or a percentage above 0 and at most 100.
fn backoff(text: &str) -> Result<Option<f64>> {
    if text.trim() == "off" {
        return Ok(None);
    }
    match text.trim().trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(Some(p)),
        _ => bail!("{text}: give a percentage above 0 and at most 100, or off"),
    }
}

/// A length of time for `--duration`, `--flush-every` and the like, above zero.
pub fn span(text: &str, option: &str) -> Result<u64> {
    match offset(text, option)? {
        0 => bail!("--{option} {text}: give a length of time above zero"),
        us => Ok(us),
    }
}

/// A time from the start (`--phase-change`), zero included: a unit is required, since a bare
/// number would be read as microseconds by damo's convention and surprise everyone.
pub fn offset(text: &str, option: &str) -> Result<u64> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'_')
    {
        bail!("--{option} {text}: give a unit, e.g. {trimmed}s");
    }
    parse_duration_us(text).with_context(|| format!("--{option}"))
}

/// A count of 1 or more (`--every`), as clap's value parser.
pub fn at_least_one(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n @ 1..) => Ok(n),
        Ok(_) => Err("give 1 or more".into()),
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            Err("too large".into())
        }
        Err(_) => Err("not a whole number".into()),
    }
}

fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_goals_read_as_damo_writes_them() {
        let goal = |text: &str| intervals_goal(&text.split_whitespace().collect::<Vec<_>>());
        let want = IntervalsGoal {
            access_bp: 400,
            aggrs: 3,
            min_sample_us: 5000,
            max_sample_us: 10_000_000,
        };
        assert_eq!(goal("4% 3 5ms 10s").unwrap(), want);
        assert_eq!(goal("400 3 5000 10000000").unwrap(), want);
        for (bad, says) in [
            ("4% 3 5ms", "expected ACCESS_BP AGGRS MIN_SAMPLE MAX_SAMPLE"),
            ("0 3 5ms 10s", "access goal `0`"),
            ("101% 3 5ms 10s", "access goal `101%`"),
            ("4% 0 5ms 10s", "`0`: give the aggregations"),
            ("4% 3 10s 5ms", "range 10s..5ms is empty"),
            ("4% 3 0 5ms", "the interval must be positive"),
        ] {
            let err = format!("{:#}", goal(bad).unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_command_line_overrides_the_config_file() {
        let path = std::env::temp_dir().join(format!("udamon-config-{}.toml", std::process::id()));
        std::fs::write(&path, "sample = \"10ms\"\naggr = \"200ms\"\nmaxr = 500\nsplit-policy = \"fraction\"\nseed = 7\n").unwrap();
        let args = MonitoringArgs {
            config: Some(path.clone()),
            aggr: Some("1s".into()),
            ..Default::default()
        };
        let config = args.resolve().unwrap().monitor_config().unwrap();
        assert_eq!((config.attrs.sample_us, config.attrs.aggr_us), (10_000, 1_000_000));
        assert_eq!(
            config.attrs.ops_update_us, DEFAULT_UPDR_US,
            "udamon's default, not the kernel's"
        );
        assert_eq!(
            (config.attrs.max_nr_regions, config.policy, config.seed),
            (500, SplitPolicy::Fraction, 7)
        );
        std::fs::write(&path, "smaple = \"10ms\"\n").unwrap();
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("unknown field `smaple`"), "{err}");
        std::fs::write(&path, "updr = \"0s\"\n").unwrap();
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.ends_with("updr must be positive"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn zero_intervals_and_unitless_spans_are_refused() {
        let args = MonitoringArgs { updr: Some("0".into()), ..Default::default() };
        let err = args.resolve().unwrap_err().to_string();
        assert_eq!(err, "--updr 0: the interval must be positive");
        let args = MonitoringArgs { sample: Some("0ms".into()), ..Default::default() };
        assert!(args.resolve().is_err());
        assert_eq!(
            span("8", "duration").unwrap_err().to_string(),
            "--duration 8: give a unit, e.g. 8s"
        );
        assert_eq!(span("8s", "duration").unwrap(), 8_000_000);
        assert_eq!(span("250ms", "flush-every").unwrap(), 250_000);
        assert!(span("8 parsecs", "duration").is_err());
        assert_eq!(
            span("0ms", "duration").unwrap_err().to_string(),
            "--duration 0ms: give a length of time above zero"
        );
        assert_eq!(at_least_one("0").unwrap_err(), "give 1 or more");
        assert_eq!(at_least_one("-1").unwrap_err(), "not a whole number");
        assert_eq!(at_least_one("18446744073709551616").unwrap_err(), "too large");
    }

    #[test]
    fn reclaim_backoff_is_a_percentage_or_off() {
        let config = |text: &str| {
            let args = MonitoringArgs { reclaim_backoff: Some(text.into()), ..Default::default() };
            args.resolve().and_then(|s| s.monitor_config()).map(|c| c.reclaim_backoff)
        };
        assert_eq!(config("off").unwrap(), None);
        assert_eq!(config("25").unwrap(), Some(25.0));
        assert_eq!(config("2.5%").unwrap(), Some(2.5));
        for bad in ["0", "101", "-3", "high", ""] {
            let err = format!("{:#}", config(bad).unwrap_err());
            assert!(err.starts_with("--reclaim-backoff: "), "{bad}: {err}");
        }
        let default = MonitoringArgs::default().resolve().unwrap().monitor_config().unwrap();
        assert_eq!(default.reclaim_backoff, Some(DEFAULT_RECLAIM_BACKOFF));
        let path = std::env::temp_dir().join(format!("udamon-backoff-{}.toml", std::process::id()));
        let from_file = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let args = MonitoringArgs { config: Some(path.clone()), ..Default::default() };
            args.resolve().and_then(|s| s.monitor_config()).map(|c| c.reclaim_backoff)
        };
        assert_eq!(from_file("reclaim-backoff = 5\n").unwrap(), Some(5.0));
        assert_eq!(from_file("reclaim-backoff = \"off\"\n").unwrap(), None);
        assert!(from_file("reclaim-backoff = 500\n").is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
