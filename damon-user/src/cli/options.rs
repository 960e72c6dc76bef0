//! Monitoring options shared by every command that runs the engine, named as damo names them.

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    engine::{Attrs, CoreVersion, SplitPolicy},
    units::parse_duration_us,
};

#[derive(Args, Debug)]
pub struct MonitoringArgs {
    /// Sample interval: how often each region's sampled page is checked (e.g. 5ms; a bare number
    /// is microseconds).
    #[arg(long, value_name = "DURATION")]
    pub sample: Option<String>,
    /// Aggregation interval: how often counts are reported, merged and split (e.g. 100ms).
    #[arg(long, value_name = "DURATION")]
    pub aggr: Option<String>,
    /// Operations update interval: how often regions are re-fitted to the mappings (e.g. 1s).
    #[arg(long, value_name = "DURATION")]
    pub updr: Option<String>,
    /// Minimum number of regions.
    #[arg(long, value_name = "N")]
    pub minr: Option<u32>,
    /// Maximum number of regions.
    #[arg(long, value_name = "N")]
    pub maxr: Option<u32>,
    /// What to do above max_nr_regions / 2.
    #[arg(long = "split-policy", alias = "policy", value_enum, default_value_t = SplitPolicy::Adaptive)]
    pub policy: SplitPolicy,
    /// Seed of the engine's randomness, to repeat a run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Kernel behaviour where versions differ (merge retries, sampling ranges).
    #[arg(long, value_enum, default_value_t = CoreVersion::Newest)]
    pub core_version: CoreVersion,
}

impl MonitoringArgs {
    /// `attrs` with the given options applied; the result is not validated here.
    pub fn apply(&self, attrs: &mut Attrs) -> Result<()> {
        let duration = |text: &Option<String>, what: &str| {
            text.as_deref()
                .map(|t| parse_duration_us(t).with_context(|| format!("--{what}")))
                .transpose()
        };
        if let Some(us) = duration(&self.sample, "sample")? {
            attrs.sample_us = us;
        }
        if let Some(us) = duration(&self.aggr, "aggr")? {
            attrs.aggr_us = us;
        }
        if let Some(us) = duration(&self.updr, "updr")? {
            attrs.ops_update_us = us;
        }
        if let Some(n) = self.minr {
            attrs.min_nr_regions = n;
        }
        if let Some(n) = self.maxr {
            attrs.max_nr_regions = n;
        }
        Ok(())
    }
}
