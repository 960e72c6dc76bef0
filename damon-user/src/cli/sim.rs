//! `udamon sim`: run the engine against a scenario.

use std::{path::Path, process::ExitCode};

use anyhow::{Context as _, anyhow};
use clap::Args;

use damon_engine::sim::{self, Choices, builtin, scenario::Scenario};

use super::{
    Failure, emit,
    options::{self, MonitoringArgs, Settings},
};
use crate::output::sim::{compare_table, run_table};

/// Run the monitoring engine against a simulated address space whose access probabilities are
/// known, and score how well its regions describe them.
///
/// Metrics, after a warm-up of the first 10 % of aggregations: effective regions (mean
/// nr_regions), error (mean over bytes of |true access probability per sample - the estimate of
/// its region, nr_accesses / samples per aggregation|), resolution error (the same against the
/// true mean of its region: what the boundaries alone cost), hot coverage (the share of bytes
/// at 0.2 or more in regions estimating them within 0.2, and when it first reached 90 %),
/// changed coverage (likewise for the bytes events changed), detection latency (aggregations until
/// regions inside a changed area, within 0.2 of its new probability, cover 90 % of it), splits
/// and wasted splits (merged back within two aggregations), and cost (access checks).
#[derive(Args)]
pub struct SimArgs {
    /// A built-in scenario (seed-corner, seed-reproducer, stairs, flat, sparse-spots, needle,
    /// gradient, phases, mixed-spots) or a scenario TOML file.
    #[arg(default_value = "seed-corner")]
    scenario: String,
    /// Run every policy with the same seed and print one table.
    #[arg(long, conflicts_with = "policy")]
    compare: bool,
    /// Repeat with this many consecutive seeds and report the means (detections: all of them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    runs: u64,
    #[command(flatten)]
    monitoring: MonitoringArgs,
    /// Simulated time to run (e.g. 10m); the scenario's events after it are left out.
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Print the scenario (with overrides applied) as TOML instead of running it.
    #[arg(long)]
    print_scenario: bool,
}

pub(super) fn run(args: SimArgs) -> Result<ExitCode, Failure> {
    let settings = args.monitoring.resolve().map_err(Failure::Input)?;
    let scenario = scenario(&args, &settings).map_err(Failure::Input)?;
    if args.print_scenario {
        emit(&scenario.to_toml())?;
        return Ok(ExitCode::SUCCESS);
    }
    let choices = Choices {
        policy: settings.policy.unwrap_or_default(),
        version: settings.version.unwrap_or_default(),
        // The kernel's way unless asked: the policies are judged as the kernel samples.
        sampling: settings.sampling.unwrap_or_default(),
    };
    let seed = settings.seed.unwrap_or(scenario.seed);
    let text = if args.compare {
        let reports =
            sim::compare(&scenario, choices, seed, args.runs).map_err(Failure::Runtime)?;
        if args.json { json(&reports) } else { compare_table(&reports) }
    } else {
        let report =
            sim::run_many(&scenario, choices, seed, args.runs).map_err(Failure::Runtime)?;
        if args.json { json(&report) } else { run_table(&report) }
    };
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("reports always serialize") + "\n"
}

/// The largest scenario file read: a scenario of the most ranges and events it may hold.
const MAX_SCENARIO: u64 = 16 << 20;

/// The named built-in or file, with command-line overrides applied and validated.
fn scenario(args: &SimArgs, settings: &Settings) -> anyhow::Result<Scenario> {
    let mut scenario = match builtin::get(&args.scenario) {
        Some(scenario) => scenario,
        None if Path::new(&args.scenario).exists() => {
            let text =
                crate::util::read_text(Path::new(&args.scenario), MAX_SCENARIO, "scenario file")?;
            Scenario::from_toml(&text)
                .with_context(|| format!("scenario file {}", args.scenario))?
        }
        None => {
            return Err(anyhow!(
                "unknown scenario `{}`: not a built-in ({}) and no such file",
                args.scenario,
                builtin::NAMES.join(", ")
            ));
        }
    };
    settings.apply(&mut scenario.attrs);
    if let Some(us) = args.duration.as_deref().map(|d| options::span(d, "duration")).transpose()? {
        scenario.duration.0 = us;
        scenario.events.retain(|e| e.at.0 <= us);
    }
    let warnings = scenario.validate().with_context(|| format!("scenario {}", scenario.name))?;
    for warning in warnings {
        say!(
            "udamon: {}",
            crate::util::one_line(&format!("scenario {}: {warning}", scenario.name))
        );
    }
    Ok(scenario)
}
