//! damo's JSON record: a list of targets, each with its intervals and snapshots of regions.
//! damo writes numbers either plainly or as text with units and thousands separators
//! (`"4,096"`, `"1.500 KiB"`, `"1 s 500 ms"`, `{"samples": 3, "percent": null}`); all of it
//! reads here. We write plain integers in damo's key order.

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Deserializer, Serialize, de};
use serde_json::Value;

use damon_engine::schemes::Stats;

use super::{Intervals, RecordedSnapshot, Region, TargetRecord};

#[derive(Serialize, Deserialize)]
struct JsonTarget {
    #[serde(default)]
    kdamond_idx: Option<u64>,
    #[serde(default)]
    context_idx: Option<u64>,
    #[serde(default)]
    intervals: Option<JsonIntervals>,
    #[serde(default)]
    scheme_idx: Option<Value>,
    target_id: Number<COUNT>,
    #[serde(default)]
    scheme_filters: Vec<Value>,
    snapshots: Vec<JsonSnapshot>,
    #[serde(default)]
    data_source: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct JsonIntervals {
    sample_us: Number<MICROS>,
    aggr_us: Number<MICROS>,
    ops_update_us: Number<MICROS>,
}

#[derive(Serialize, Deserialize)]
struct JsonSnapshot {
    start_time: Option<Number<NANOS>>,
    end_time: Number<NANOS>,
    regions: Vec<JsonRegion>,
    #[serde(default)]
    total_bytes: Option<Number<BYTES>>,
    #[serde(default)]
    damos_stats: Option<Value>,
    #[serde(default)]
    sample_interval_us: Option<Number<MICROS>>,
    /// udamon's own: every scheme's stats (damo's `damos_stats` holds the first's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    udamon_damos_stats: Vec<Stats>,
}

#[derive(Serialize, Deserialize)]
struct JsonRegion {
    start: Number<BYTES>,
    end: Number<BYTES>,
    #[serde(default)]
    nr_accesses: Option<NrAccesses>,
    #[serde(default)]
    age: Option<Age>,
    #[serde(default)]
    probe_hits: Vec<Value>,
    #[serde(default)]
    sz_filter_passed: Option<Number<BYTES>>,
    /// udamon's own: the region could not be monitored (damo has no such state and ignores the
    /// key; it reads the region as idle).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    udamon_unknown: bool,
}

#[derive(Serialize, Deserialize)]
struct NrAccesses {
    #[serde(default)]
    samples: Option<Number<COUNT>>,
    #[serde(default)]
    percent: Option<Value>,
}

#[derive(Serialize, Deserialize)]
struct Age {
    #[serde(default)]
    usec: Option<Number<MICROS>>,
    #[serde(default)]
    aggr_intervals: Option<Number<COUNT>>,
}

pub fn to_vec(record: &[TargetRecord]) -> Result<Vec<u8>> {
    // A target that never got a snapshot (it exited first) has nothing to say.
    let targets: Vec<JsonTarget> =
        record.iter().filter(|t| !t.snapshots.is_empty()).map(to_json).collect();
    Ok(serde_json::to_vec_pretty(&targets)?)
}

/// The targets, and a warning for each target whose counts had to be mended.
pub fn from_reader(reader: impl std::io::Read) -> Result<(Vec<TargetRecord>, Vec<String>)> {
    let targets: Vec<JsonTarget> = serde_json::from_reader(reader).map_err(|err| {
        if err.is_eof() {
            anyhow::anyhow!("the JSON ends early: the file is truncated")
        } else if err.is_io() {
            anyhow::anyhow!("corrupt or truncated compressed data: {err}")
        } else {
            anyhow::anyhow!("not damo's record JSON: {err}")
        }
    })?;
    let mut warnings = Vec::new();
    let targets = targets
        .into_iter()
        .map(|t| {
            let (target, clamped) = from_json(t)?;
            if let (Some(max), true) = (target.intervals.map(|i| i.max_accesses()), clamped > 0) {
                warnings.push(format!(
                    "target {}: {clamped} region(s) had more accesses than the {max} samples per aggregation of the record's intervals; read as {max}",
                    target.target_id
                ));
            }
            Ok(target)
        })
        .collect::<Result<_>>()?;
    Ok((targets, warnings))
}

fn to_json(target: &TargetRecord) -> JsonTarget {
    JsonTarget {
        kdamond_idx: Some(0),
        context_idx: Some(0),
        intervals: target.intervals.map(|i| JsonIntervals {
            sample_us: Number(i.sample_us as i128),
            aggr_us: Number(i.aggr_us as i128),
            ops_update_us: Number(i.ops_update_us as i128),
        }),
        scheme_idx: None,
        target_id: Number(target.target_id as i128),
        scheme_filters: Vec::new(),
        snapshots: target
            .snapshots
            .iter()
            .map(|s| JsonSnapshot {
                start_time: Some(Number(s.start_ns as i128)),
                end_time: Number(s.end_ns as i128),
                regions: s
                    .regions
                    .iter()
                    .map(|r| JsonRegion {
                        start: Number(r.start as i128),
                        end: Number(r.end as i128),
                        nr_accesses: Some(NrAccesses {
                            samples: Some(Number(r.nr_accesses as i128)),
                            percent: None,
                        }),
                        age: Some(Age { usec: None, aggr_intervals: Some(Number(r.age as i128)) }),
                        probe_hits: Vec::new(),
                        sz_filter_passed: Some(Number(0)),
                        udamon_unknown: r.unknown,
                    })
                    .collect(),
                total_bytes: Some(Number(s.total_bytes() as i128)),
                damos_stats: s
                    .schemes
                    .first()
                    .map(|stats| serde_json::to_value(stats).expect("stats serialize")),
                sample_interval_us: s.sample_us.map(|us| Number(us as i128)),
                udamon_damos_stats: s.schemes.clone(),
            })
            .collect(),
        data_source: Some("udamon".to_owned()),
    }
}

/// A target, and how many of its regions had their access counts clamped.
fn from_json(target: JsonTarget) -> Result<(TargetRecord, u64)> {
    let target_id = target.target_id.unsigned("target_id")?;
    let intervals = target
        .intervals
        .map(|i| -> Result<Intervals> {
            let positive = |n: Number<MICROS>, what: &str| match n.unsigned(what)? {
                0 => bail!("{what} is 0: an interval must be positive"),
                us => Ok(us),
            };
            let (sample_us, aggr_us) =
                (positive(i.sample_us, "sample_us")?, positive(i.aggr_us, "aggr_us")?);
            if sample_us > aggr_us {
                bail!("sample_us ({sample_us}) exceeds aggr_us ({aggr_us})");
            }
            Ok(Intervals {
                sample_us,
                aggr_us,
                ops_update_us: i.ops_update_us.unsigned("ops_update_us")?,
            })
        })
        .transpose()
        .with_context(|| format!("target {target_id}, intervals"))?;
    let mut snapshots = Vec::with_capacity(target.snapshots.len());
    let mut clamped = 0;
    for (i, s) in target.snapshots.into_iter().enumerate() {
        let context = || format!("target {target_id}, snapshot {i}");
        let snapshot = snapshot(s, intervals.as_ref(), &mut clamped).with_context(context)?;
        // damo pads single-snapshot records with a fake one (-1 accesses); it is not data.
        let Some(snapshot) = snapshot else { continue };
        if let Some(before) =
            snapshots.last().filter(|b: &&RecordedSnapshot| b.end_ns > snapshot.end_ns)
        {
            bail!(
                "{}: it ends ({} ns) before the snapshot before it does ({} ns): snapshots go in time order",
                context(),
                snapshot.end_ns,
                before.end_ns
            );
        }
        snapshots.push(snapshot);
    }
    Ok((TargetRecord { target_id, intervals, snapshots }, clamped))
}

/// A snapshot; accesses beyond the samples an aggregation has (by the intervals) are clamped to
/// them and counted in `clamped`, so no report shows a rate above 100 %.
fn snapshot(
    s: JsonSnapshot,
    intervals: Option<&Intervals>,
    clamped: &mut u64,
) -> Result<Option<RecordedSnapshot>> {
    let end_ns = s.end_time.unsigned("end_time")?;
    let mut regions = Vec::with_capacity(s.regions.len());
    for r in s.regions {
        let (start, end) = (r.start.unsigned("start")?, r.end.unsigned("end")?);
        let samples = r.nr_accesses.as_ref().and_then(|n| n.samples.as_ref()).map(|n| n.0);
        if samples.is_some_and(|n| n < 0) {
            return Ok(None);
        }
        if start >= end {
            bail!("region {start}-{end} is empty or reversed");
        }
        let nr_accesses = match (samples, r.nr_accesses.and_then(|n| n.percent)) {
            (Some(n), _) => n,
            (None, Some(percent)) => {
                let percent = Number::<COUNT>::deserialize(percent)?.0 as f64;
                let max = intervals.context("nr_accesses in percent but no intervals")?;
                (percent * max.max_accesses() as f64 / 100.0) as i128
            }
            (None, None) => 0,
        };
        let nr_accesses = match intervals.map(|i| i128::from(i.max_accesses())) {
            Some(max) if nr_accesses > max => {
                *clamped += 1;
                max
            }
            _ => nr_accesses,
        };
        let age = match r.age {
            Some(Age { aggr_intervals: Some(n), .. }) => n.unsigned("age")?,
            Some(Age { usec: Some(us), .. }) => {
                us.unsigned("age")?
                    / intervals.context("age in time but no intervals")?.aggr_us.max(1)
            }
            _ => 0,
        };
        regions.push(Region {
            unknown: r.udamon_unknown,
            ..Region::new(
                start,
                end,
                u32::try_from(nr_accesses).context("nr_accesses out of range")?,
                u32::try_from(age).unwrap_or(u32::MAX),
            )
        });
    }
    if regions.windows(2).any(|w| w[1].start < w[0].end) {
        bail!("regions overlap or are out of order");
    }
    let start_ns = match s.start_time {
        Some(t) => t.unsigned("start_time")?,
        None => end_ns.saturating_sub(intervals.map_or(0, |i| i.aggr_us * 1000)),
    };
    if start_ns > end_ns {
        bail!("start_time {start_ns} is after end_time {end_ns}");
    }
    let sample_us = s.sample_interval_us.map(|us| us.unsigned("sample_interval_us")).transpose()?;
    // Every scheme's, or damo's one (ignored where damo wrote its numbers as text).
    let schemes = match (s.udamon_damos_stats, s.damos_stats) {
        (all, _) if !all.is_empty() => all,
        (_, Some(one)) => serde_json::from_value::<Stats>(one).into_iter().collect(),
        _ => Vec::new(),
    };
    Ok(Some(RecordedSnapshot { start_ns, end_ns, regions, sample_us, schemes }))
}

// What a number's text may carry as a unit.
const COUNT: u8 = 0;
const BYTES: u8 = 1;
const MICROS: u8 = 2;
const NANOS: u8 = 3;

/// A number as damo may write it: plain, or text with thousands separators and units of `KIND`.
/// Negative values exist only as damo's "fake snapshot" marker.
struct Number<const KIND: u8>(i128);

impl<const KIND: u8> Number<KIND> {
    fn unsigned(&self, what: &str) -> Result<u64> {
        match u64::try_from(self.0) {
            Ok(n) => Ok(n),
            Err(_) if self.0 < 0 => bail!("{what} is negative ({})", self.0),
            Err(_) => bail!("{what} is 2^64 or more ({})", self.0),
        }
    }
}

impl<const KIND: u8> Serialize for Number<KIND> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i128(self.0)
    }
}

impl<'de, const KIND: u8> Deserialize<'de> for Number<KIND> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<const KIND: u8>;
        impl<const KIND: u8> de::Visitor<'_> for Visitor<KIND> {
            type Value = Number<KIND>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, or a text with a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Number(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                // Fractions come only as damo's rounded text ("1.500 KiB"), never as numbers.
                if v.fract() != 0.0 {
                    return Err(E::custom(format!("{v} is not a whole number")));
                }
                Ok(Number(v as i128))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_text(v, KIND).map(Number).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor::<KIND>)
    }
}

/// `"4,096"`, `"max"`, `"1.500 KiB"`, `"100 ms"`, `"1 m 40 s"`: damo's human numbers.
fn parse_text(text: &str, kind: u8) -> Result<i128> {
    let plain: String = text.chars().filter(|&c| c != ',').collect();
    let plain = plain.trim();
    if plain == "max" {
        return Ok(u64::MAX.into());
    }
    if let Ok(n) = plain.parse::<i128>() {
        return Ok(n);
    }
    if let Ok(x) = plain.parse::<f64>() {
        return Ok(x as i128);
    }
    // Number-unit pairs, summed ("1 m 40 s"); units may be glued to the number ("100ms").
    let mut total = 0f64;
    let mut rest = plain;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .filter(|&i| i > 0)
            .with_context(|| format!("`{text}` is not a number"))?;
        let value: f64 =
            rest[..split].parse().with_context(|| format!("`{text}` is not a number"))?;
        let after = rest[split..].trim_start();
        let unit_end = after.find(|c: char| c.is_ascii_whitespace()).unwrap_or(after.len());
        let unit = &after[..unit_end];
        total += value
            * scale(unit, kind).with_context(|| format!("unknown unit `{unit}` in `{text}`"))?;
        rest = after[unit_end..].trim_start();
    }
    Ok(total.round() as i128)
}

fn scale(unit: &str, kind: u8) -> Option<f64> {
    let ns = |n: f64| match kind {
        MICROS => Some(n / 1e3),
        NANOS => Some(n),
        _ => None,
    };
    match unit {
        "B" if kind == BYTES => Some(1.0),
        "K" | "KB" | "KiB" if kind == BYTES => Some(1024f64),
        "M" | "MB" | "MiB" if kind == BYTES => Some(1024f64.powi(2)),
        "G" | "GB" | "GiB" if kind == BYTES => Some(1024f64.powi(3)),
        "T" | "TB" | "TiB" if kind == BYTES => Some(1024f64.powi(4)),
        "P" | "PB" | "PiB" if kind == BYTES => Some(1024f64.powi(5)),
        "ns" => ns(1.0),
        "us" => ns(1e3),
        "ms" => ns(1e6),
        "s" => ns(1e9),
        "m" => ns(60e9),
        "h" => ns(3600e9),
        "d" => ns(86400e9),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_slice(bytes: &[u8]) -> Result<Vec<TargetRecord>> {
        from_reader(bytes).map(|(targets, _)| targets)
    }

    #[test]
    fn damo_human_numbers_read() {
        assert_eq!(parse_text("4,096", BYTES).unwrap(), 4096);
        assert_eq!(parse_text("1.500 KiB", BYTES).unwrap(), 1536);
        assert_eq!(parse_text("0 B", BYTES).unwrap(), 0);
        assert_eq!(parse_text("100 ms", MICROS).unwrap(), 100_000);
        assert_eq!(parse_text("1 m 40 s 100 ms", NANOS).unwrap(), 100_100_000_000);
        assert_eq!(parse_text("5ms", MICROS).unwrap(), 5000);
        assert_eq!(parse_text("18446623435582458880", COUNT).unwrap(), 18446623435582458880);
        assert!(parse_text("12 parsecs", BYTES).is_err());
        assert!(parse_text("4 KiB", NANOS).is_err());
    }

    /// The shape `damo convert_record_format --format json` writes (damo 3.4.3).
    #[test]
    fn damo_written_json_reads() {
        let text = r#"[{"kdamond_idx": 0, "context_idx": 0, "intervals": null, "scheme_idx": null,
            "target_id": 42, "scheme_filters": [], "snapshots": [
            {"start_time": "100000000000", "end_time": "100100000000", "regions": [
              {"start": "4,096", "end": "8,192", "nr_accesses": {"samples": 3, "percent": null},
               "age": {"usec": null, "aggr_intervals": "1"}, "probe_hits": [],
               "sz_filter_passed": "0 B"}],
             "total_bytes": "4096", "damos_stats": null, "sample_interval_us": null},
            {"start_time": "100100000000", "end_time": "100200000000", "regions": [
              {"start": "0", "end": "0", "nr_accesses": {"samples": -1, "percent": null},
               "age": {"usec": null, "aggr_intervals": -1}}]}]}]"#;
        let record = from_slice(text.as_bytes()).unwrap();
        assert_eq!(record.len(), 1);
        let target = &record[0];
        assert_eq!((target.target_id, target.intervals), (42, None));
        assert_eq!(target.snapshots.len(), 1, "the fake snapshot is dropped");
        let s = &target.snapshots[0];
        assert_eq!((s.start_ns, s.end_ns), (100_000_000_000, 100_100_000_000));
        assert_eq!(s.regions, [Region::new(4096, 8192, 3, 1)]);
    }

    #[test]
    fn scheme_stats_go_to_damos_stats_and_come_back() {
        let stats =
            |n| Stats { nr_tried: n, sz_tried: 4096 * n, qt_exceeds: 1, ..Stats::default() };
        let snapshot = RecordedSnapshot {
            start_ns: 0,
            end_ns: 100_000_000,
            regions: vec![Region::new(4096, 8192, 3, 1)],
            sample_us: None,
            schemes: vec![stats(2), stats(5)],
        };
        let record = [TargetRecord { target_id: 7, intervals: None, snapshots: vec![snapshot] }];
        let text = to_vec(&record).unwrap();
        let json: Value = serde_json::from_slice(&text).unwrap();
        // damo reads the first scheme's, with its key names.
        let damo = &json[0]["snapshots"][0]["damos_stats"];
        assert_eq!((damo["nr_tried"].as_u64(), damo["sz_tried"].as_u64()), (Some(2), Some(8192)));
        assert_eq!(from_slice(&text).unwrap()[0].snapshots[0].schemes, [stats(2), stats(5)]);
        // A damo record's one scheme reads too.
        let damo = r#"[{"target_id": 1, "snapshots": [{"start_time": 0, "end_time": 1,
            "regions": [{"start": 0, "end": 4096, "nr_accesses": {"samples": 0}}],
            "damos_stats": {"nr_tried": 3, "sz_tried": 12288, "nr_applied": 0, "sz_applied": 0,
            "sz_ops_filter_passed": 0, "qt_exceeds": 1, "nr_snapshots": 9}}]}]"#;
        let read = from_slice(damo.as_bytes()).unwrap();
        assert_eq!(
            read[0].snapshots[0].schemes,
            [Stats { nr_tried: 3, sz_tried: 12288, qt_exceeds: 1, ..Stats::default() }]
        );
    }

    #[test]
    fn percent_and_time_units_convert_through_the_intervals() {
        let text = r#"[{"target_id": 1, "intervals": {"sample_us": "5 ms", "aggr_us": "100 ms",
            "ops_update_us": "1 s"}, "snapshots": [{"start_time": 0, "end_time": 100000000,
            "regions": [{"start": 0, "end": 4096, "nr_accesses": {"percent": 50},
            "age": {"usec": "300 ms", "aggr_intervals": null}}]}]}]"#;
        let record = from_slice(text.as_bytes()).unwrap();
        assert_eq!(record[0].snapshots[0].regions[0].nr_accesses, 10);
        assert_eq!(record[0].snapshots[0].regions[0].age, 3);
    }

    #[test]
    fn counts_beyond_the_samples_are_clamped_with_a_warning_and_zero_intervals_refused() {
        let record = |sample_us: &str, accesses: u64| {
            format!(
                r#"[{{"target_id": 3, "intervals": {{"sample_us": {sample_us}, "aggr_us": 100000,
                "ops_update_us": 1000000}}, "snapshots": [{{"start_time": 0, "end_time": 100000000,
                "regions": [{{"start": 0, "end": 4096, "nr_accesses": {{"samples": {accesses}}}}},
                {{"start": 4096, "end": 8192, "nr_accesses": {{"samples": 99999}}}}]}}]}}]"#
            )
        };
        let (targets, warnings) = from_reader(record("5000", 20).as_bytes()).unwrap();
        let counts: Vec<u32> =
            targets[0].snapshots[0].regions.iter().map(|r| r.nr_accesses).collect();
        assert_eq!(counts, [20, 20]);
        assert_eq!(
            warnings,
            [
                "target 3: 1 region(s) had more accesses than the 20 samples per aggregation of the record's intervals; read as 20"
            ]
        );
        let err = format!("{:#}", from_reader(record("0", 1).as_bytes()).unwrap_err());
        assert_eq!(err, "target 3, intervals: sample_us is 0: an interval must be positive");
    }

    #[test]
    fn inconsistent_regions_are_refused() {
        let text = r#"[{"target_id": 1, "snapshots": [{"start_time": 0, "end_time": 1, "regions": [
            {"start": 8192, "end": 4096}]}]}]"#;
        let err = format!("{:#}", from_slice(text.as_bytes()).unwrap_err());
        assert!(err.contains("snapshot 0") && err.contains("reversed"), "{err}");
    }

    #[test]
    fn times_intervals_and_numbers_that_cannot_be_are_refused() {
        let one = |snapshots: &str, intervals: &str| {
            let text = format!(
                r#"[{{"target_id": 1, "intervals": {intervals}, "snapshots": [{snapshots}]}}]"#
            );
            from_slice(text.as_bytes()).map(drop).map_err(|err| format!("{err:#}"))
        };
        let snapshot = |start: &str, end: &str, region_start: &str| {
            format!(
                r#"{{"start_time": {start}, "end_time": {end}, "regions": [{{"start": {region_start}, "end": 8192}}]}}"#
            )
        };
        let fine = r#"{"sample_us": 5000, "aggr_us": 100000, "ops_update_us": 1000000}"#;
        assert_eq!(one(&snapshot("0", "100", "4096"), fine), Ok(()));
        assert_eq!(one(&snapshot("0", "100", "4096.0"), fine), Ok(()), "a whole float is a number");
        for (snapshots, intervals, says) in [
            (snapshot("0", "100", "4096.5"), fine, "4096.5 is not a whole number"),
            (snapshot("200", "100", "4096"), fine, "start_time 200 is after end_time 100"),
            (
                snapshot("0", "100", "4096"),
                r#"{"sample_us": 200000, "aggr_us": 100000, "ops_update_us": 0}"#,
                "sample_us (200000) exceeds aggr_us (100000)",
            ),
            (
                format!("{}, {}", snapshot("100", "200", "4096"), snapshot("0", "100", "4096")),
                fine,
                "snapshot 1: it ends (100 ns) before the snapshot before it does (200 ns)",
            ),
        ] {
            let err = one(&snapshots, intervals).unwrap_err();
            assert!(err.contains(says), "{says}: {err}");
        }
    }
}
