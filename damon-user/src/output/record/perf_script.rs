//! `damon:damon_aggregated` trace lines, as `perf script` (or `trace-cmd report`) prints them:
//!
//! ```text
//! kdamond.0  4452 [000] 82877.315633: damon:damon_aggregated: target_id=42 nr_regions=17 4096-8192: 0 3
//! ```
//!
//! One line per region; a snapshot ends when `nr_regions` lines of a target have been read.
//! Times are the trace's seconds; the text carries no monitoring intervals.

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};

use super::{RecordedSnapshot, Region, TargetRecord};

const EVENT: &str = "damon_aggregated:";

pub fn to_string(record: &[TargetRecord]) -> String {
    let mut out = String::new();
    for target in record {
        let line = |out: &mut String, end_ns: u64, nr: usize, fields: std::fmt::Arguments| {
            // damo parses the time with a float: microseconds are all it keeps.
            let _ = writeln!(
                out,
                "udamon {0} [000] {1}.{2:06}: damon:{EVENT} target_id={0} nr_regions={nr} {fields}",
                target.target_id,
                end_ns / 1_000_000_000,
                end_ns % 1_000_000_000 / 1000,
            );
        };
        for s in &target.snapshots {
            for r in &s.regions {
                let fields = format_args!("{}-{}: {} {}", r.start, r.end, r.nr_accesses, r.age);
                line(&mut out, s.end_ns, s.regions.len(), fields);
            }
        }
        // As damo does: a lone snapshot's start is only known from a padding snapshot after it.
        if let [s] = &target.snapshots[..] {
            line(&mut out, 2 * s.end_ns - s.start_ns, 1, format_args!("0-0: -1 -1"));
        }
    }
    out
}

pub fn parse(text: &str) -> Result<Vec<TargetRecord>> {
    let mut targets: Vec<TargetRecord> = Vec::new();
    // Per target: the snapshot being filled, how many regions it should get, and its first line.
    let mut open: Vec<Open> = Vec::new();
    for (number, line) in (1..).zip(text.lines()) {
        let Some(event) = line.split_whitespace().position(|f| f.ends_with(EVENT)) else {
            continue;
        };
        let at = || format!("line {number}");
        let (end_ns, target_id, nr_regions, region) =
            match parse_line(line, event).with_context(at)? {
                Line::Region { end_ns, target_id, nr_regions, region } => {
                    (end_ns, target_id, nr_regions, region)
                }
                Line::Padding { end_ns, target_id } => {
                    if let Some(open) = open.iter().find(|o| o.target_id == target_id) {
                        bail!("line {number}: damo's padding inside {}", open.describe());
                    }
                    if let Some(t) = targets.iter_mut().find(|t| t.target_id == target_id)
                        && let [only] = &mut t.snapshots[..]
                    {
                        only.start_ns = (2 * only.end_ns).saturating_sub(end_ns);
                    }
                    continue;
                }
            };
        let slot = match open.iter().position(|o| o.target_id == target_id) {
            Some(slot) => slot,
            None => {
                open.push(Open {
                    target_id,
                    snapshot: RecordedSnapshot {
                        start_ns: 0,
                        end_ns,
                        regions: vec![],
                        sample_us: None,
                        schemes: Vec::new(),
                    },
                    expected: nr_regions,
                    line: number,
                });
                open.len() - 1
            }
        };
        let o = &mut open[slot];
        // Every line of a snapshot has its count (times differ: one event per region); a new
        // count, or a region that does not follow the last, means lines are missing.
        if o.expected != nr_regions {
            bail!(
                "line {number}: a new snapshot of target {target_id} begins inside {}",
                o.describe()
            );
        }
        if o.snapshot.regions.last().is_some_and(|last| region.start < last.end) {
            bail!("line {number}: regions overlap or are out of order in {}", o.describe());
        }
        o.snapshot.regions.push(region);
        if o.snapshot.regions.len() == o.expected {
            let done = open.swap_remove(slot);
            finish(&mut targets, target_id, done.snapshot).with_context(at)?;
        }
    }
    if let Some(o) = open.first() {
        bail!("the trace ends inside {} (truncated?)", o.describe());
    }
    Ok(targets)
}

/// A snapshot still being read.
struct Open {
    target_id: u64,
    snapshot: RecordedSnapshot,
    expected: usize,
    line: usize,
}

impl Open {
    fn describe(&self) -> String {
        format!(
            "the snapshot of target {} begun at line {}: {} of {} regions",
            self.target_id,
            self.line,
            self.snapshot.regions.len(),
            self.expected
        )
    }
}

/// Adds a complete snapshot; damo's single-snapshot padding (-1 accesses) is dropped on parse.
fn finish(targets: &mut Vec<TargetRecord>, id: u64, mut snapshot: RecordedSnapshot) -> Result<()> {
    let target = match targets.iter().position(|t| t.target_id == id) {
        Some(i) => &mut targets[i],
        None => {
            targets.push(TargetRecord { target_id: id, intervals: None, snapshots: vec![] });
            targets.last_mut().expect("just pushed")
        }
    };
    match target.snapshots.last() {
        Some(last) if last.end_ns > snapshot.end_ns => bail!("the trace is not sorted by time"),
        Some(last) => snapshot.start_ns = last.end_ns,
        // The first snapshot's start is unknown: assume it lasted as long as the next one.
        None => snapshot.start_ns = snapshot.end_ns,
    }
    target.snapshots.push(snapshot);
    if let [first, second] = &mut target.snapshots[..] {
        first.start_ns = first.end_ns.saturating_sub(second.end_ns - first.end_ns);
    }
    Ok(())
}

enum Line {
    Region {
        end_ns: u64,
        target_id: u64,
        nr_regions: usize,
        region: Region,
    },
    /// damo's fake snapshot after a lone one (-1 accesses): it only tells the lone one's length.
    Padding {
        end_ns: u64,
        target_id: u64,
    },
}

fn parse_line(line: &str, event: usize) -> Result<Line> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let time = event.checked_sub(1).map(|i| fields[i]).context("no timestamp before the event")?;
    let end_ns = parse_seconds(time.trim_end_matches(':')).context("bad timestamp")?;
    let rest = &fields[event + 1..];
    let [target, nr, range, accesses, age] = rest else {
        bail!("expected `target_id=N nr_regions=N START-END: ACCESSES AGE`");
    };
    let value = |field: &str, key: &str| -> Result<u64> {
        field
            .strip_prefix(key)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("expected {key}N, found `{field}`"))
    };
    let target_id = value(target, "target_id=")?;
    let nr_regions = value(nr, "nr_regions=")? as usize;
    let (start, end) = range
        .trim_end_matches(':')
        .split_once('-')
        .and_then(|(s, e)| Some((s.parse::<u64>().ok()?, e.parse::<u64>().ok()?)))
        .with_context(|| format!("bad address range `{range}`"))?;
    // Exactly damo's padding; any other negative count is an error of its own line.
    if (start, end, *accesses, *age) == (0, 0, "-1", "-1") {
        return Ok(Line::Padding { end_ns, target_id });
    }
    let count = |text: &str, what: &str| -> Result<u32> {
        text.parse().map_err(|_| {
            anyhow::anyhow!("bad {what} `{text}`: not a whole number from 0 to 2^32 - 1")
        })
    };
    let (nr_accesses, age) = (count(accesses, "access count")?, count(age, "age")?);
    if nr_regions == 0 || start >= end {
        bail!("an empty region or snapshot");
    }
    Ok(Line::Region {
        end_ns,
        target_id,
        nr_regions,
        region: Region::new(start, end, nr_accesses, age),
    })
}

fn parse_seconds(text: &str) -> Option<u64> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_ns: u64 = format!("{frac:0<9}").parse().ok()?;
    secs.parse::<u64>().ok()?.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_and_trace_cmd_lines_read() {
        let text = "\
kdamond.0  4452 [000] 82877.315633: damon:damon_aggregated: target_id=18446623435582458880 nr_regions=2 4096-8192: 0 3
kdamond.0  4452 [000] 82877.315633: damon:damon_aggregated: target_id=18446623435582458880 nr_regions=2 8192-12288: 5 1
some unrelated line
  kdamond.0-4452  [000] .....  82877.415633: damon_aggregated: target_id=18446623435582458880 nr_regions=1 4096-12288: 2 0
";
        let record = parse(text).unwrap();
        assert_eq!(record.len(), 1);
        let t = &record[0];
        assert_eq!(t.target_id, 18446623435582458880);
        assert_eq!(t.snapshots.len(), 2);
        assert_eq!(t.snapshots[0].end_ns, 82_877_315_633_000);
        assert_eq!(t.snapshots[0].start_ns, 82_877_215_633_000);
        assert_eq!(t.snapshots[1].start_ns, 82_877_315_633_000);
        assert_eq!(t.snapshots[0].regions[1], Region::new(8192, 12288, 5, 1));
    }

    #[test]
    fn a_trace_cut_inside_a_snapshot_is_refused() {
        let text = "x 1 [0] 1.0: damon:damon_aggregated: target_id=1 nr_regions=3 0-4096: 0 0\n";
        let err = parse(text).unwrap_err().to_string();
        assert_eq!(
            err,
            "the trace ends inside the snapshot of target 1 begun at line 1: 1 of 3 regions (truncated?)"
        );
        let text = "x 1 [0] 1.0: damon:damon_aggregated: target_id=1 nr_regions=x 0-4096: 0 0\n";
        assert!(format!("{:#}", parse(text).unwrap_err()).contains("line 1"));
    }

    /// A line skipped (not an event) or wrongly taken as padding must not shift the blame.
    #[test]
    fn errors_name_the_line_at_fault() {
        let line = |time: &str, nr: u32, range: &str, accesses: &str| {
            format!(
                "k 1 [0] {time}: damon:damon_aggregated: target_id=1 nr_regions={nr} {range}: {accesses} 0\n"
            )
        };
        let error = |lines: &[String]| format!("{:#}", parse(&lines.concat()).unwrap_err());
        let skipped = "unrelated\n".to_owned();
        assert_eq!(
            error(&[line("1.0", 1, "0-4096", "0"), skipped.clone(), line("2.0", 1, "0-4096", "x")]),
            "line 3: bad access count `x`: not a whole number from 0 to 2^32 - 1"
        );
        assert_eq!(
            error(&[
                line("1.0", 2, "0-4096", "5"),
                line("1.0", 2, "4096-8192", "-5"),
                line("2.0", 2, "0-4096", "0")
            ]),
            "line 2: bad access count `-5`: not a whole number from 0 to 2^32 - 1"
        );
        // A region line lost (here: mangled into a skipped one) is found where the next
        // snapshot begins, naming where the incomplete one did.
        let incomplete = "the snapshot of target 1 begun at line 1: 1 of 2 regions";
        assert_eq!(
            error(&[line("1.0", 2, "0-4096", "5"), skipped.clone(), line("2.0", 2, "0-4096", "0")]),
            format!("line 3: regions overlap or are out of order in {incomplete}")
        );
        assert_eq!(
            error(&[line("1.0", 2, "0-4096", "5"), skipped, line("2.0", 1, "0-4096", "0")]),
            format!("line 3: a new snapshot of target 1 begins inside {incomplete}")
        );
    }

    #[test]
    fn damo_padding_line_is_skipped() {
        let text = "\
kdamond.x xxxx xxxx 1.000000: damon:damon_aggregated: target_id=1 nr_regions=1 0-4096: 1 0
kdamond.x xxxx xxxx 1.100000: damon:damon_aggregated: target_id=1 nr_regions=1 0-0: -1 -1
";
        let record = parse(text).unwrap();
        assert_eq!(record[0].snapshots.len(), 1);
        assert_eq!(record[0].snapshots[0].start_ns, 900_000_000);
    }
}
