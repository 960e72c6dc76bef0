//! `udamon convert`: a record from any readable format to any writable one.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use super::{Failure, report::ReadLimit};
use crate::{
    output::record::{self, Format},
    util::atomic_file::Output,
};

/// Convert a record file (udamon's or damo's) to another format, as `damo convert_record_format`
/// does. A file is written atomically; a device or FIFO is written through.
#[derive(Args)]
pub struct ConvertArgs {
    /// The record to read.
    #[arg(short, long, value_name = "FILE")]
    input: PathBuf,
    /// Where to write the converted record.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// The output format.
    #[arg(long, value_enum, default_value_t = Format::JsonCompressed)]
    format: Format,
    #[command(flatten)]
    limit: ReadLimit,
}

pub(super) fn run(args: ConvertArgs) -> Result<ExitCode, Failure> {
    let output = Output::new(&args.output).map_err(Failure::Input)?;
    let targets = args.limit.load(&args.input)?;
    record::save(&output, &targets, args.format).map_err(Failure::Runtime)?;
    Ok(ExitCode::SUCCESS)
}
