//! Monitoring options shared by every command that runs the engine, named as damo names them,
//! from the command line or a TOML file (`--config`); the command line wins.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use serde::Deserialize;

use crate::{
    engine::{Attrs, CoreVersion, SplitPolicy},
    monitor::MonitorConfig,
    units::{Micros, parse_duration_us},
};

#[derive(Args, Debug, Default)]
pub struct MonitoringArgs {
    /// Sample interval: how often each region's sampled page is checked (e.g. 5ms; a bare number
    /// is microseconds). Default 5ms.
    #[arg(long, value_name = "DURATION")]
    pub sample: Option<String>,
    /// Aggregation interval: how often the access counts are reported, and regions merged and
    /// split (e.g. 100ms). A region's count is out of aggr/sample samples. Default 100ms.
    #[arg(long, value_name = "DURATION")]
    pub aggr: Option<String>,
    /// Operations update interval: how often regions are re-fitted to the mappings. Default 1s.
    #[arg(long, value_name = "DURATION")]
    pub updr: Option<String>,
    /// Minimum number of regions (default 10).
    #[arg(long, value_name = "N")]
    pub minr: Option<u32>,
    /// Maximum number of regions (default 1000).
    #[arg(long, value_name = "N")]
    pub maxr: Option<u32>,
    /// What to do above max_nr_regions / 2 [default: adaptive].
    #[arg(long = "split-policy", alias = "policy", value_enum)]
    pub policy: Option<SplitPolicy>,
    /// Seed of the engine's randomness, to repeat a run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Kernel behaviour where versions differ (merge retries, sampling ranges) [default: newest].
    #[arg(long, value_enum)]
    pub core_version: Option<CoreVersion>,
    /// A TOML file with any of the options above (sample, aggr, updr, minr, maxr, split-policy,
    /// seed, core-version); options given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    seed: Option<u64>,
    core_version: Option<CoreVersion>,
}

impl MonitoringArgs {
    /// `attrs` with the given options applied; the result is not validated here.
    pub fn apply(&self, attrs: &mut Attrs) -> Result<()> {
        let file = self.file()?;
        let duration =
            |text: &Option<String>, from_file: Option<Micros>, what: &str| match text.as_deref() {
                Some(t) => parse_duration_us(t).with_context(|| format!("--{what}")).map(Some),
                None => Ok(from_file.map(|m| m.0)),
            };
        if let Some(us) = duration(&self.sample, file.sample, "sample")? {
            attrs.sample_us = us;
        }
        if let Some(us) = duration(&self.aggr, file.aggr, "aggr")? {
            attrs.aggr_us = us;
        }
        if let Some(us) = duration(&self.updr, file.updr, "updr")? {
            attrs.ops_update_us = us;
        }
        if let Some(n) = self.minr.or(file.minr) {
            attrs.min_nr_regions = n;
        }
        if let Some(n) = self.maxr.or(file.maxr) {
            attrs.max_nr_regions = n;
        }
        Ok(())
    }

    pub fn policy(&self) -> Result<SplitPolicy> {
        Ok(self.policy.or(self.file()?.split_policy).unwrap_or_default())
    }

    pub fn core_version(&self) -> Result<CoreVersion> {
        Ok(self.core_version.or(self.file()?.core_version).unwrap_or_default())
    }

    pub fn seed(&self) -> Result<Option<u64>> {
        Ok(self.seed.or(self.file()?.seed))
    }

    /// Validated attributes and the rest of a monitoring run's settings; a random seed unless
    /// one is given.
    pub fn monitor_config(&self) -> Result<MonitorConfig> {
        let mut attrs = Attrs::default();
        self.apply(&mut attrs)?;
        attrs.validate()?;
        Ok(MonitorConfig {
            attrs,
            policy: self.policy()?,
            version: self.core_version()?,
            seed: self.seed()?.unwrap_or_else(random_seed),
        })
    }

    fn file(&self) -> Result<ConfigFile> {
        let Some(path) = &self.config else { return Ok(ConfigFile::default()) };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --config {}", path.display()))?;
        toml::from_str(&text).map_err(|err| {
            anyhow::anyhow!("--config {}: {}", path.display(), err.message().trim_end())
        })
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
    fn the_command_line_overrides_the_config_file() {
        let path = std::env::temp_dir().join(format!("udamon-config-{}.toml", std::process::id()));
        std::fs::write(&path, "sample = \"10ms\"\naggr = \"200ms\"\nmaxr = 500\nsplit-policy = \"fraction\"\nseed = 7\n").unwrap();
        let args = MonitoringArgs {
            config: Some(path.clone()),
            aggr: Some("1s".into()),
            ..Default::default()
        };
        let config = args.monitor_config().unwrap();
        assert_eq!((config.attrs.sample_us, config.attrs.aggr_us), (10_000, 1_000_000));
        assert_eq!(
            (config.attrs.max_nr_regions, config.policy, config.seed),
            (500, SplitPolicy::Fraction, 7)
        );
        std::fs::write(&path, "smaple = \"10ms\"\n").unwrap();
        let err = args.monitor_config().unwrap_err().to_string();
        assert!(err.contains("unknown field `smaple`"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
