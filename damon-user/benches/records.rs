//! `cargo xtask bench` (records part): reading a big record and reporting on it, udamon against
//! the real damo (when `UDAMON_DAMO` names it; `cargo xtask bench` sets it). Both run as
//! processes on the same file, one after the other; docs/benchmarks.md quotes the ratio.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use damon_user::output::record::{self, Format, Intervals, RecordedSnapshot, Region, TargetRecord};

/// An hour at one aggregation a second would be 3600 snapshots; take 2000 of 500 regions.
const SNAPSHOTS: u64 = 2000;
const REGIONS: u64 = 500;

fn big_record() -> Vec<TargetRecord> {
    let snapshots = (0..SNAPSHOTS)
        .map(|s| RecordedSnapshot {
            sample_us: None,
            schemes: Vec::new(),
            start_ns: s * 100_000_000,
            end_ns: (s + 1) * 100_000_000,
            regions: (0..REGIONS)
                .map(|r| {
                    Region::new(
                        0x7f00_0000_0000 + r * (1 << 20),
                        0x7f00_0000_0000 + (r + 1) * (1 << 20),
                        ((r * 7 + s) % 21) as u32,
                        (s % 50) as u32,
                    )
                })
                .collect(),
        })
        .collect();
    vec![TargetRecord {
        target_id: 1,
        intervals: Some(Intervals { sample_us: 5000, aggr_us: 100_000, ops_update_us: 1_000_000 }),
        snapshots,
    }]
}

/// Best of three wall-clock runs of a command that must succeed.
fn time(program: &Path, args: &[&str]) -> Duration {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let out = Command::new(program).args(args).output().expect("run");
            assert!(
                out.status.success(),
                "{program:?} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            started.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join("bench-record.data");
    let record = big_record();
    let output = damon_user::util::atomic_file::Output::new(&file).unwrap();
    record::save(&output, &record, Format::JsonCompressed).unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    println!(
        "record: {SNAPSHOTS} snapshots x {REGIONS} regions, json_compressed {:.1} MiB",
        size as f64 / (1 << 20) as f64
    );
    let udamon = Path::new(env!("CARGO_BIN_EXE_udamon"));
    let path = file.to_str().unwrap();
    let ours_wss = time(udamon, &["report", "wss", "-i", path]);
    let ours_heatmap = time(udamon, &["report", "heatmap", "-i", path]);
    println!(
        "udamon report wss: {:.2} s; report heatmap: {:.2} s",
        ours_wss.as_secs_f64(),
        ours_heatmap.as_secs_f64()
    );
    let Some(damo) = std::env::var_os("UDAMON_DAMO") else {
        println!("damo: UDAMON_DAMO not set, no comparison");
        return;
    };
    let damo = Path::new(&damo);
    let damo_wss = time(damo, &["report", "wss", "--input", path]);
    let damo_heatmap = time(damo, &["report", "heatmap", "--input", path]);
    println!(
        "damo 3.4.3 report wss: {:.2} s ({:.0}x udamon); report heatmap: {:.2} s ({:.0}x udamon)",
        damo_wss.as_secs_f64(),
        damo_wss.as_secs_f64() / ours_wss.as_secs_f64(),
        damo_heatmap.as_secs_f64(),
        damo_heatmap.as_secs_f64() / ours_heatmap.as_secs_f64()
    );
}
