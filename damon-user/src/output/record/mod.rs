//! Monitoring records in damo's file formats, so users keep their tools: `json_compressed`
//! (damo's default: zlib-compressed JSON), `json`, and `perf_script` (the text of
//! `damon:damon_aggregated` trace lines). Files are read whatever their format; damo's own
//! records read too.

mod damo_json;
mod perf_script;
pub mod writer;

use std::{
    cell::Cell,
    fmt,
    io::{self, BufRead, BufReader, Read},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use damon_engine::{Attrs, schemes::Stats, units::Size};

pub use crate::snapshot::Region;
use crate::{snapshot::Snapshot, util::atomic_file::Output};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedSnapshot {
    /// Nanoseconds on the record's clock (udamon: since monitoring started).
    pub start_ns: u64,
    pub end_ns: u64,
    pub regions: Vec<Region>,
    /// The sample interval of this snapshot where it is known to vary (auto-tuned intervals),
    /// in µs; `None`: the record's.
    pub sample_us: Option<u64>,
    /// Each DAMOS scheme's stats so far, in order (damo's record holds one scheme's, the first
    /// here, as `damos_stats`).
    pub schemes: Vec<Stats>,
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
            sample_us: Some(snapshot.sample_us),
            schemes: snapshot.schemes.iter().map(|s| s.stats).collect(),
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

/// How much record `report` and `convert` read by default (after inflating a compressed one):
/// far beyond any real record, and a stop for a decompression bomb.
pub const DEFAULT_MAX_INPUT: u64 = 1 << 30;

/// A record as read, and what was wrong with it but mended (one line each, for the user).
#[derive(Debug)]
pub struct Loaded {
    pub record: Record,
    pub warnings: Vec<String>,
}

/// Reads a record file of any of the formats, at most `max_input` bytes of it once inflated;
/// `-` is standard input.
pub fn load(path: &Path, max_input: u64) -> Result<Loaded> {
    use std::os::unix::fs::FileTypeExt as _;
    let path = if path == Path::new("-") { Path::new("/proc/self/fd/0") } else { path };
    if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        bail!("cannot read {}: it is a socket", path.display());
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode(BufReader::new(file), max_input)
        .with_context(|| format!("{} is not a usable record", path.display()))
}

pub fn decode(mut input: impl BufRead, max_input: u64) -> Result<Loaded> {
    let mut skipped = 0;
    // The format is told by the first bytes that are not white space.
    let head = loop {
        let head = input.fill_buf().context("cannot read it")?;
        let (blank, rest) =
            (head.iter().take_while(|b| b.is_ascii_whitespace()).count(), head.len());
        input.consume(blank);
        skipped += blank;
        if blank < rest || rest == 0 {
            break input.fill_buf()?;
        }
    };
    if head.is_empty() {
        bail!("it is empty");
    }
    if head.starts_with(b"PERFILE2") {
        bail!("a perf.data file: convert it with `perf script -i FILE > FILE.txt` and read that");
    }
    let limit = Limit::new(max_input.saturating_sub(skipped as u64));
    let (record, warnings) = match sniff(head, skipped) {
        Some(Format::JsonCompressed) => {
            let inflated = flate2::bufread::ZlibDecoder::new(input);
            limit.check(damo_json::from_reader(BufReader::new(limit.reader(inflated))))?
        }
        Some(Format::Json) => limit.check(damo_json::from_reader(limit.reader(input)))?,
        Some(Format::PerfScript) => {
            let mut text = Vec::new();
            limit.check(limit.reader(input).read_to_end(&mut text).map_err(anyhow::Error::from))?;
            let text = std::str::from_utf8(&text).map_err(|_| not_a_record())?;
            let record = perf_script::parse(text)?;
            if record.is_empty() {
                return Err(not_a_record());
            }
            (record, Vec::new())
        }
        None => return Err(not_a_record()),
    };
    if record.iter().all(|t| t.snapshots.is_empty()) {
        bail!("it holds no snapshots");
    }
    Ok(Loaded { record, warnings })
}

fn not_a_record() -> anyhow::Error {
    anyhow::anyhow!("neither damo JSON (plain or compressed) nor damon_aggregated trace text")
}

/// At most so many bytes of input, and whether reading went beyond them.
struct Limit {
    max: u64,
    exceeded: Cell<bool>,
}

impl Limit {
    fn new(max: u64) -> Self {
        Self { max, exceeded: Cell::new(false) }
    }

    fn reader<R: Read>(&self, inner: R) -> Limited<'_, R> {
        Limited { inner, left: self.max, exceeded: &self.exceeded }
    }

    /// `result`, or the limit if it was reached (whatever failed after it is a consequence).
    fn check<T>(&self, result: Result<T>) -> Result<T> {
        if self.exceeded.get() {
            bail!(
                "it holds more than {} of record (inflated): raise --max-input to read it",
                Size(self.max)
            );
        }
        result
    }
}

/// A reader that fails past its limit instead of ending, so a parser cannot take the cut for a
/// truncated file.
struct Limited<'a, R> {
    inner: R,
    left: u64,
    exceeded: &'a Cell<bool>,
}

impl<R: Read> Read for Limited<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte beyond the limit tells a file of exactly the limit from a longer one.
        let want =
            buf.len().min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other("the input limit was reached"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The format by content, not by name: from the first bytes that are not white space (`head`),
/// after `skipped` that are.
fn sniff(head: &[u8], skipped: usize) -> Option<Format> {
    match head {
        // zlib: CMF 0x78, a header checksum that is a multiple of 31, and no preset dictionary
        // (text such as `x 1 ...` passes the checksum, but sets that bit).
        [0x78, flg, ..]
            if (0x7800 | *flg as u16).is_multiple_of(31) && flg & 0x20 == 0 && skipped == 0 =>
        {
            Some(Format::JsonCompressed)
        }
        [b'[' | b'{', ..] => Some(Format::Json),
        // Text: what is buffered already is UTF-8 (but for a character cut at its end) without a
        // NUL, so binary input is refused before a gigabyte of it is read.
        [_, ..] if !head.contains(&0) && utf8_so_far(head) => Some(Format::PerfScript),
        _ => None,
    }
}

/// Whether `bytes` is UTF-8 but perhaps for a character cut short at its end.
fn utf8_so_far(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).map_or_else(|err| err.error_len().is_none(), |_| true)
}

fn zlib(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Record> {
        super::decode(bytes, DEFAULT_MAX_INPUT).map(|loaded| loaded.record)
    }

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
                        sample_us: None,
                        schemes: Vec::new(),
                        start_ns: 0,
                        end_ns: 100_000_000,
                        regions: vec![
                            region(0x1000, 0x3000, 20, 1),
                            region(0x3000, 0x10_0000, 0, 3),
                        ],
                    },
                    RecordedSnapshot {
                        sample_us: None,
                        schemes: Vec::new(),
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
                    sample_us: None,
                    schemes: Vec::new(),
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
            assert_eq!(sniff(&bytes, 0), Some(format));
            assert_eq!(decode(&bytes).unwrap(), sample(), "{format}");
        }
        // Trace text carries no intervals.
        let bytes = encode(&sample(), Format::PerfScript).unwrap();
        assert_eq!(sniff(&bytes, 0), Some(Format::PerfScript));
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
        assert_eq!(format!("{:#}", decode(b"  \n").unwrap_err()), "it is empty");
        // Binary input is refused from its first bytes, not read up to the limit.
        let endless = std::io::BufReader::new(std::io::repeat(0xc3).take(1 << 40));
        let err = format!("{:#}", super::decode(endless, DEFAULT_MAX_INPUT).unwrap_err());
        assert!(err.starts_with("neither damo JSON"), "{err}");
        assert!(utf8_so_far("é".as_bytes().split_last().unwrap().1), "a cut character");
        // `x ` passes zlib's header checksum: a trace of a command named x is still text.
        let trace =
            b"x 1 [000] 1.0: damon:damon_aggregated: target_id=1 nr_regions=1 0-4096: 1 0\n";
        assert_eq!(decode(trace).unwrap()[0].snapshots.len(), 1);
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let bytes = encode(&sample(), Format::JsonCompressed).unwrap();
        let json_len = encode(&sample(), Format::Json).unwrap().len() as u64;
        let read = |max| super::decode(&bytes[..], max).map(|loaded| loaded.record);
        assert_eq!(read(json_len).unwrap(), sample(), "exactly the limit reads");
        let err = format!("{:#}", read(json_len - 1).unwrap_err());
        assert_eq!(
            err,
            format!(
                "it holds more than {} of record (inflated): raise --max-input to read it",
                json_len - 1
            )
        );
        // Leading white space counts, and does not hide the format.
        let plain = [&b"  \n"[..], &encode(&sample(), Format::Json).unwrap()].concat();
        assert_eq!(super::decode(&plain[..], json_len + 3).unwrap().record, sample());
        assert!(super::decode(&plain[..], json_len + 2).is_err());
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
