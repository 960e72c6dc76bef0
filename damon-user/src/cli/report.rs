//! `udamon report`: reads a record (ours or damo's) and shows it.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};

use super::{Failure, emit};
use damon_engine::{
    Attrs,
    units::{format_size, parse_size},
};

use crate::{
    output::{
        record::{self, Intervals, TargetRecord},
        report::{
            access,
            distribution::{self, DEFAULT_SKIP, Metric},
            heatmap::Heatmap,
            picture,
        },
    },
    util::atomic_file::Output,
};

/// Show a record file (udamon's or damo's, any of the formats): the access table, a heatmap,
/// or the working-set size and region-count distributions.
#[derive(Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Args)]
struct Input {
    /// The record file.
    #[arg(short, long, default_value = "damon.data", value_name = "FILE")]
    input: PathBuf,
    /// Only this target (a pid for udamon records).
    #[arg(long, value_name = "ID")]
    target: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limit: ReadLimit,
}

/// How much of a record `report` and `convert` read.
#[derive(Args)]
pub(super) struct ReadLimit {
    /// Read at most this much record, once inflated (e.g. 4GiB): a compressed record that
    /// inflates beyond it is refused, as a guard against decompression bombs [default: 1GiB].
    #[arg(long, value_name = "SIZE")]
    max_input: Option<String>,
}

impl ReadLimit {
    /// The record at `path`; what was mended in it is said on stderr, one line each.
    pub(super) fn load(&self, path: &std::path::Path) -> Result<record::Record, Failure> {
        let max = match &self.max_input {
            Some(text) => match parse_size(text).context("--max-input").map_err(Failure::Input)? {
                0 => {
                    return Err(Failure::Input(anyhow!(
                        "--max-input {text}: give a size above zero"
                    )));
                }
                max => max,
            },
            None => record::DEFAULT_MAX_INPUT,
        };
        let loaded = record::load(path, max).map_err(Failure::Input)?;
        for warning in &loaded.warnings {
            say!("udamon: {}", crate::util::one_line(&format!("{}: {warning}", path.display())));
        }
        Ok(loaded.record)
    }
}

#[derive(Subcommand)]
enum Kind {
    /// Regions of a snapshot (the last, by default) with their access rate (% of the samples,
    /// and accesses per second) and age (aggregation intervals, and time).
    Access {
        #[command(flatten)]
        input: Input,
        /// Every snapshot, oldest first.
        #[arg(long, conflicts_with = "snapshot")]
        all: bool,
        /// Only snapshot N (0 is the first; negative counts from the end).
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        snapshot: Option<i64>,
    },
    /// Access rate over time and address space: digits 0–9 (tenths of the access rate) on the
    /// terminal, or a picture with --output FILE.png / FILE.svg. Unmapped gaps are left out.
    Heatmap {
        #[command(flatten)]
        input: Input,
        /// Write a PNG or SVG image (by the extension) instead of printing.
        #[arg(short, long, value_name = "FILE", conflicts_with = "json")]
        output: Option<PathBuf>,
        /// Cells along time [default: 40 on the terminal, 400 in pictures].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10000))]
        time_bins: Option<u64>,
        /// Cells along the address space [default: 80 on the terminal, 250 in pictures].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10000))]
        address_bins: Option<u64>,
        /// Only addresses in START-END (hex with 0x, or decimal).
        #[arg(long, value_name = "START-END")]
        address_range: Option<String>,
        /// Colours on the terminal.
        #[arg(long, value_enum, default_value_t = Colour::Auto)]
        colour: Colour,
    },
    /// Working-set size (bytes of regions with any access in a snapshot) percentiles.
    Wss {
        #[command(flatten)]
        input: Input,
        /// Leave out the first N snapshots, while regions still adapt [default: 20, as damo's;
        /// none for a record of 20 snapshots or fewer].
        #[arg(long, value_name = "N")]
        skip: Option<usize>,
    },
    /// Number-of-regions percentiles.
    NrRegions {
        #[command(flatten)]
        input: Input,
        /// Leave out the first N snapshots, while regions still adapt [default: 20, as damo's;
        /// none for a record of 20 snapshots or fewer].
        #[arg(long, value_name = "N")]
        skip: Option<usize>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Colour {
    Auto,
    Always,
    Never,
}

pub(super) fn run(args: ReportArgs) -> Result<ExitCode, Failure> {
    let text = match &args.kind {
        Kind::Access { input, all, snapshot } => {
            let targets = load(input)?;
            access_report(&targets, *all, *snapshot, input.json).map_err(Failure::Input)?
        }
        Kind::Heatmap { input, output, time_bins, address_bins, address_range, colour } => {
            let targets = load(input)?;
            let range =
                address_range.as_deref().map(parse_range).transpose().map_err(Failure::Input)?;
            let picture = output.is_some();
            let bins = |given: Option<u64>, terminal, image| {
                given.map_or(if picture { image } else { terminal }, |n| n as usize)
            };
            let (time_bins, address_bins) =
                (bins(*time_bins, 40, 400), bins(*address_bins, 80, 250));
            if time_bins * address_bins > MAX_CELLS {
                return Err(Failure::Input(anyhow!(
                    "{time_bins} time bins × {address_bins} address bins are {} cells: at most {MAX_CELLS}",
                    time_bins * address_bins
                )));
            }
            let maps: Vec<(u64, Heatmap)> = targets
                .iter()
                .map(|t| {
                    let max = intervals_of(t).max_accesses();
                    (t.target_id, Heatmap::new(&t.snapshots, time_bins, address_bins, range, max))
                })
                .filter(|(_, map)| !map.spans.is_empty())
                .collect();
            if maps.is_empty() {
                return Err(Failure::Input(match address_range {
                    Some(range) => {
                        anyhow!("no region of the record lies in --address-range {range}")
                    }
                    None => anyhow!("the record has no region to draw"),
                }));
            }
            match output {
                Some(path) => {
                    write_picture(path, &maps)?;
                    return Ok(ExitCode::SUCCESS);
                }
                None if input.json => json(
                    &maps
                        .iter()
                        .map(|(id, map)| serde_json::json!({ "target_id": id, "heatmap": map }))
                        .collect::<Vec<_>>(),
                ),
                None => {
                    let colours = match colour {
                        Colour::Always => true,
                        Colour::Never => false,
                        Colour::Auto => std::io::stdout().is_terminal(),
                    };
                    maps.iter().map(|(id, map)| heatmap_text(*id, map, colours)).collect()
                }
            }
        }
        Kind::Wss { input, skip } => {
            distributions(&load(input)?, Metric::WorkingSet, *skip, input.json)?
        }
        Kind::NrRegions { input, skip } => {
            distributions(&load(input)?, Metric::Regions, *skip, input.json)?
        }
    };
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The most cells a heatmap has (e.g. 1000 × 1000): drawing takes about half a second per
/// million.
const MAX_CELLS: usize = 1_000_000;

fn load(input: &Input) -> Result<Vec<TargetRecord>, Failure> {
    let mut targets = input.limit.load(&input.input)?;
    targets.retain(|t| !t.snapshots.is_empty());
    if let Some(id) = input.target {
        let known: Vec<String> = targets.iter().map(|t| t.target_id.to_string()).collect();
        targets.retain(|t| t.target_id == id);
        if targets.is_empty() {
            return Err(Failure::Input(anyhow!(
                "no target {id} in {} (it has {})",
                input.input.display(),
                known.join(", ")
            )));
        }
    }
    Ok(targets)
}

/// The record's intervals, or DAMON's defaults for trace text that lacks them.
fn intervals_of(target: &TargetRecord) -> Intervals {
    target.intervals.unwrap_or_else(|| Intervals::from(&Attrs::default()))
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("reports serialize") + "\n"
}

fn access_report(
    targets: &[TargetRecord],
    all: bool,
    snapshot: Option<i64>,
    as_json: bool,
) -> anyhow::Result<String> {
    let mut reports = Vec::new();
    let mut text = String::new();
    for t in targets {
        let n = t.snapshots.len() as i64;
        let indices: Vec<usize> = match (all, snapshot) {
            (true, _) => (0..t.snapshots.len()).collect(),
            (false, Some(i)) => {
                let index = if i < 0 { n + i } else { i };
                if !(0..n).contains(&index) {
                    bail!("--snapshot {i}: target {} has snapshots 0..{}", t.target_id, n - 1);
                }
                vec![index as usize]
            }
            (false, None) => vec![t.snapshots.len() - 1],
        };
        let intervals = intervals_of(t);
        for i in indices {
            let s = &t.snapshots[i];
            let report = access::report(t.target_id, i, s, &intervals);
            if as_json {
                reports.push(report);
            } else {
                text.push_str(&access::render(&report, s, &intervals, 64));
                text.push('\n');
            }
        }
    }
    Ok(if as_json { json(&reports) } else { text })
}

fn heatmap_text(id: u64, map: &Heatmap, colours: bool) -> String {
    let columns = map.rows.first().map_or(0, Vec::len);
    format!(
        "# target {id}: time {:.1}–{:.1} s downwards, {} across ({} monitored, {} span(s)); 0–9: access rate in tenths\n# {:#x} … {:#x}\n{}",
        map.start_ns as f64 / 1e9,
        map.end_ns as f64 / 1e9,
        "addresses",
        format_size(map.axis_len()),
        map.spans.len(),
        map.address_at(0, columns),
        map.spans.last().map_or(0, |s| s.end),
        picture::ascii(map, colours)
    )
}

fn write_picture(path: &std::path::Path, maps: &[(u64, Heatmap)]) -> Result<(), Failure> {
    let [(id, map)] = maps else {
        return Err(Failure::Input(anyhow!(
            "the record has {} targets: choose one with --target for a picture",
            maps.len()
        )));
    };
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let png = match extension.to_ascii_lowercase().as_str() {
        "png" => true,
        "svg" => false,
        _ => {
            return Err(Failure::Input(anyhow!(
                "--output {}: use a .png or .svg file name",
                path.display()
            )));
        }
    };
    let output = Output::new(path).map_err(Failure::Input)?;
    let bytes = if png {
        picture::png(map, 2)
    } else {
        picture::svg(map, &format!("udamon heatmap: target {id}")).map(String::into_bytes)
    };
    bytes.and_then(|bytes| output.write(&bytes)).map_err(Failure::Runtime)
}

/// The distributions of `metric`, after `skip` snapshots (a given one must leave some of every
/// target's).
fn distributions(
    targets: &[TargetRecord],
    metric: Metric,
    skip: Option<usize>,
    as_json: bool,
) -> Result<String, Failure> {
    if let Some(skip) = skip
        && let Some(short) = targets.iter().find(|t| t.snapshots.len() <= skip)
    {
        return Err(Failure::Input(anyhow!(
            "--skip {skip} leaves no snapshot of target {}: it has {} snapshots",
            short.target_id,
            short.snapshots.len()
        )));
    }
    let dists: Vec<_> = targets
        .iter()
        .map(|t| distribution::distribution(t, metric, skip.unwrap_or(DEFAULT_SKIP)))
        .collect();
    if as_json {
        return Ok(json(&dists));
    }
    Ok(dists
        .iter()
        .map(|d| match metric {
            Metric::WorkingSet => distribution::render(d, "working-set size", format_size),
            Metric::Regions => distribution::render(d, "regions", |v| v.to_string()),
        })
        .collect())
}

fn parse_range(text: &str) -> anyhow::Result<(u64, u64)> {
    let number = |s: &str| match s.trim().strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.trim().parse().ok(),
    };
    let (start, end) = text
        .split_once('-')
        .and_then(|(s, e)| Some((number(s)?, number(e)?)))
        .with_context(|| {
            format!("--address-range `{text}`: expected START-END, e.g. 0x7f00000000-0x7f10000000")
        })?;
    if start >= end {
        bail!("--address-range `{text}`: the start is not below the end");
    }
    Ok((start, end))
}
