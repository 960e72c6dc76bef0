//! Monitoring records in damo's file formats, so users keep their tools: `json_compressed`
//! (damo's default: zlib-compressed JSON), `json`, and `perf_script` (the text of
//! `damon:damon_aggregated` trace lines). Files are read whatever their format; damo's own
//! records read too.

mod damo_json;
mod perf_script;
pub mod writer;

use std::{fmt, path::Path};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use damon_engine::Attrs;

pub use crate::snapshot::Region;
use crate::{snapshot::Snapshot, util::atomic_file::Output};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedSnapshot {
    /// Nanoseconds on the record's clock (udamon: since monitoring started).
    pub start_ns: u64,
    pub end_ns: u64,
    pub regions: Vec<Region>,
}

impl RecordedSnapshot {
    pub fn total_bytes(&self) -> u64 {
        self.regions.iter().map(Region::size).sum()
    }

    /// Bytes of the regions with at least `min_accesses` accesses (damo's working set: 1).
    pub fn working_set(&self, min_accesses: u32) -> u64 {
        self.regions.iter().filter(|r| r.nr_accesses >= min_accesses).map(Region::size).sum()
    }

    /// Bytes of the regions that could not be monitored (see `Region::unknown`).
    pub fn unknown_bytes(&self) -> u64 {
        self.regions.iter().filter(|r| r.unknown).map(Region::size).sum()
    }
}

/// The monitoring intervals a record was taken with, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    pub sample_us: u64,
    pub aggr_us: u64,
    pub ops_update_us: u64,
}

impl From<&Attrs> for Intervals {
    fn from(attrs: &Attrs) -> Self {
        Self {
            sample_us: attrs.sample_us,
            aggr_us: attrs.aggr_us,
            ops_update_us: attrs.ops_update_us,
        }
    }
}

impl Intervals {
    /// Samples per aggregation: the most `nr_accesses` can be.
    pub fn max_accesses(&self) -> u64 {
        (self.aggr_us / self.sample_us.max(1)).max(1)
    }
}

/// The snapshots of one monitoring target (a pid, for udamon).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRecord {
    pub target_id: u64,
    /// Absent in records converted from trace text without them.
    pub intervals: Option<Intervals>,
    pub snapshots: Vec<RecordedSnapshot>,
}

impl TargetRecord {
    /// Appends the target's regions of `snapshot`, if it has the target.
    pub fn push(&mut self, snapshot: &Snapshot) {
        if let Some(s) = RecordedSnapshot::of(snapshot, self.target_id) {
            self.snapshots.push(s);
        }
    }
}

impl RecordedSnapshot {
    /// Target `target_id`'s part of a monitor snapshot, with the window's real times.
    pub fn of(snapshot: &Snapshot, target_id: u64) -> Option<Self> {
        let target = snapshot.targets.iter().find(|t| t.pid as u64 == target_id)?;
        Some(Self {
            start_ns: snapshot.started.as_nanos() as u64,
            end_ns: snapshot.elapsed.as_nanos() as u64,
            regions: target.regions.clone(),
        })
    }
}

/// A record file: one entry per monitoring target.
pub type Record = Vec<TargetRecord>;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Format {
    /// zlib-compressed JSON, damo's default.
    #[default]
    JsonCompressed,
    /// Plain JSON. Note: damo 3.4.3 does not recognise it where `file` says "JSON text data".
    Json,
    /// `damon:damon_aggregated` trace lines as `perf script` prints them (no intervals).
    PerfScript,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().expect("no skipped variants").get_name())
    }
}

pub fn encode(record: &[TargetRecord], format: Format) -> Result<Vec<u8>> {
    Ok(match format {
        Format::Json => damo_json::to_vec(record)?,
        Format::JsonCompressed => zlib(&damo_json::to_vec(record)?)?,
        Format::PerfScript => perf_script::to_string(record).into_bytes(),
    })
}

/// Writes `record` to `output`; a file is replaced atomically: a reader (or a crash) sees the old
/// file or the new one.
pub fn save(output: &Output, record: &[TargetRecord], format: Format) -> Result<()> {
    output.write(&encode(record, format)?)
}

/// Reads a record file of any of the formats.
pub fn load(path: &Path) -> Result<Record> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode(&bytes).with_context(|| format!("{} is not a usable record", path.display()))
}

pub fn decode(bytes: &[u8]) -> Result<Record> {
    if bytes.starts_with(b"PERFILE2") {
        bail!("a perf.data file: convert it with `perf script -i FILE > FILE.txt` and read that");
    }
    let record = match sniff(bytes) {
        Some(Format::JsonCompressed) => damo_json::from_slice(&unzlib(bytes)?)?,
        Some(Format::Json) => damo_json::from_slice(bytes)?,
        Some(Format::PerfScript) => {
            let text = std::str::from_utf8(bytes).context("not UTF-8 text")?;
            let record = perf_script::parse(text)?;
            if record.is_empty() {
                bail!("neither damo JSON (plain or compressed) nor damon_aggregated trace text");
            }
            record
        }
        None => bail!("not a record: neither damo JSON (plain or compressed) nor trace text"),
    };
    if record.iter().all(|t| t.snapshots.is_empty()) {
        bail!("it holds no snapshots");
    }
    Ok(record)
}

/// The format of `bytes` by content, not by name.
fn sniff(bytes: &[u8]) -> Option<Format> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    match bytes[start..] {
        // zlib: CMF 0x78 and a header checksum that is a multiple of 31.
        [0x78, flg, ..] if (0x7800 | flg as u16).is_multiple_of(31) && start == 0 => {
            Some(Format::JsonCompressed)
        }
        [b'[' | b'{', ..] => Some(Format::Json),
        _ if std::str::from_utf8(bytes).is_ok() => Some(Format::PerfScript),
        _ => None,
    }
}

fn zlib(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

fn unzlib(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(bytes)
        .read_to_end(&mut out)
        .context("corrupt or truncated compressed data")?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Record {
        let region = Region::new;
        vec![
            TargetRecord {
                target_id: 4242,
                intervals: Some(Intervals {
                    sample_us: 5000,
                    aggr_us: 100_000,
                    ops_update_us: 1_000_000,
                }),
                snapshots: vec![
                    RecordedSnapshot {
                        start_ns: 0,
                        end_ns: 100_000_000,
                        regions: vec![
                            region(0x1000, 0x3000, 20, 1),
                            region(0x3000, 0x10_0000, 0, 3),
                        ],
                    },
                    RecordedSnapshot {
                        start_ns: 100_000_000,
                        end_ns: 200_000_000,
                        regions: vec![
                            region(0x1000, 0x3000, 15, 2),
                            region(0x3000, 0x10_0000, 1, 0),
                        ],
                    },
                ],
            },
            TargetRecord {
                target_id: 7,
                intervals: Some(Intervals {
                    sample_us: 5000,
                    aggr_us: 100_000,
                    ops_update_us: 1_000_000,
                }),
                snapshots: vec![RecordedSnapshot {
                    start_ns: 0,
                    end_ns: 100_000_000,
                    regions: vec![region(0x7f00_0000_0000, 0x7f00_0020_0000, 7, 9)],
                }],
            },
        ]
    }

    #[test]
    fn every_format_round_trips_and_is_recognised_by_content() {
        for format in [Format::Json, Format::JsonCompressed] {
            let bytes = encode(&sample(), format).unwrap();
            assert_eq!(sniff(&bytes), Some(format));
            assert_eq!(decode(&bytes).unwrap(), sample(), "{format}");
        }
        // Trace text carries no intervals.
        let bytes = encode(&sample(), Format::PerfScript).unwrap();
        assert_eq!(sniff(&bytes), Some(Format::PerfScript));
        let mut expected = sample();
        expected.iter_mut().for_each(|t| t.intervals = None);
        assert_eq!(decode(&bytes).unwrap(), expected);
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_with_a_reason() {
        let bytes = encode(&sample(), Format::JsonCompressed).unwrap();
        let err = decode(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
        let bytes = encode(&sample(), Format::Json).unwrap();
        assert!(decode(&bytes[..bytes.len() - 10]).is_err());
        assert!(format!("{:#}", decode(b"PERFILE2\0\0\x01").unwrap_err()).contains("perf script"));
        assert!(format!("{:#}", decode(b"hello\n").unwrap_err()).contains("neither damo JSON"));
        assert!(decode(&[0xff, 0xfe, 0x00, 0x81]).is_err());
    }

    #[test]
    fn unknown_regions_survive_the_json_formats() {
        let mut record = sample();
        record[0].snapshots[1].regions[1].unknown = true;
        for format in [Format::Json, Format::JsonCompressed] {
            assert_eq!(decode(&encode(&record, format).unwrap()).unwrap(), record, "{format}");
        }
        assert_eq!(record[0].snapshots[1].unknown_bytes(), 0x10_0000 - 0x3000);
        let json = String::from_utf8(encode(&record, Format::Json).unwrap()).unwrap();
        assert_eq!(json.matches("\"udamon_unknown\": true").count(), 1, "only where unknown");
    }

    #[test]
    fn working_set_counts_accessed_regions() {
        let record = sample();
        assert_eq!(record[0].snapshots[0].working_set(1), 0x2000);
        assert_eq!(record[0].snapshots[1].working_set(1), 0x10_0000 - 0x1000);
        assert_eq!(record[0].snapshots[1].total_bytes(), 0x10_0000 - 0x1000);
    }
}
