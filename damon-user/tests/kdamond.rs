//! `udamon kdamond` on this host's own kernel DAMON: a kdamond that is not ours, observed only
//! (nothing here writes to DAMON's sysfs). What the program sums in the kernel must equal what
//! the region stream recorded of the same aggregations.

use std::{path::Path, process::Command};

use damon_user::{
    output::record::{self, DEFAULT_MAX_INPUT},
    sys::damon_sysfs,
    test_support::{in_ci, privileged},
};
use serde_json::Value;

fn udamon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_udamon"))
}

#[test]
fn a_running_kdamond_is_summed_in_the_kernel_and_recorded_alike() {
    let test = "a_running_kdamond_is_summed_in_the_kernel_and_recorded_alike";
    if !privileged(test) {
        return;
    }
    let Some(kdamond) = damon_sysfs::kdamonds().into_iter().find(|k| k.pid.is_some()) else {
        assert!(!in_ci(), "{test}: no kdamond runs on this host (CI's has one)");
        eprintln!("skipping {test}: no kdamond runs here");
        return;
    };
    let context = kdamond.context.clone().expect("a running kdamond has a context");
    // Two whole aggregations after the one attached midway.
    let seconds = (context.aggr_us as f64 * 2.6 / 1e6 + 1.0).max(3.0);
    let dir = std::env::temp_dir().join(format!("udamon-kdamond-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kdamond.data");
    let out = udamon()
        .args(["kdamond", "--json", "--flush-every", "1s", "--kdamond"])
        .arg(kdamond.index.to_string())
        .arg("--duration")
        .arg(format!("{seconds:.1}s"))
        .arg("--record")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let aggregations: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        // Scheme lines (`{"scheme": …}`) come too, where the kdamond has schemes.
        .filter_map(|l| l.get("aggregation").cloned())
        .collect();
    assert!(aggregations.len() >= 2, "{} aggregations in {seconds} s", aggregations.len());
    let loaded = record::load(&file, DEFAULT_MAX_INPUT).unwrap();
    let target = &loaded.record[0];
    assert_eq!(target.intervals.unwrap().aggr_us, context.aggr_us);
    let sums = |s: &record::RecordedSnapshot| {
        let accessed: u64 = s.regions.iter().map(|r| r.size() * r.nr_accesses as u64).sum();
        (s.regions.len() as u64, s.total_bytes(), s.working_set(1), accessed)
    };
    let recorded: Vec<_> = target.snapshots.iter().map(sums).collect();
    for a in &aggregations {
        assert_eq!(a["kdamond"], kdamond.index);
        assert_eq!(a["ops"], context.ops.as_str());
        let nr_regions = a["nr_regions"].as_u64().unwrap();
        assert!(nr_regions >= 1 && nr_regions <= context.max_nr_regions, "{a}");
        let summed = (
            nr_regions,
            a["total_bytes"].as_u64().unwrap(),
            a["working_set_bytes"].as_u64().unwrap(),
            a["accessed_bytes"].as_u64().unwrap(),
        );
        assert!(recorded.contains(&summed), "{summed:?} summed, but recorded {recorded:?}");
    }
    for s in &target.snapshots {
        assert!(s.regions.windows(2).all(|w| w[0].end <= w[1].start), "regions in order");
        assert!(s.end_ns > s.start_ns);
    }
    // The record reads back.
    let report = udamon().args(["report", "nr-regions", "--skip", "0", "-i"]).arg(&file).output();
    assert!(report.unwrap().status.success());
    std::fs::remove_dir_all(&dir).unwrap();
    // Nothing of ours stays in the kernel once udamon has exited.
    let ours = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.name_as_str() == Some(damon_common::names::DAMON_AGGREGATED));
    assert!(!ours, "the observer is still loaded after exit");
}

#[test]
fn a_kdamond_that_is_not_there_is_one_line_and_exit_2() {
    if !Path::new(damon_sysfs::ADMIN).is_dir() {
        eprintln!("skipping: no kernel DAMON here");
        return;
    }
    let out = udamon().args(["kdamond", "--kdamond", "4096", "--duration", "1s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--kdamond 4096"), "{err}");
}
