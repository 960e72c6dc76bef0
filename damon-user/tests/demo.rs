//! End to end: `udamon demo` monitors its built-in workload through the real eBPF data plane;
//! what it reports must match the workload's known layout.

use std::process::Command;

use serde_json::Value;

/// Size-weighted mean access rate over `[start, end)` in one snapshot.
fn rate(snapshot: &Value, start: u64, end: u64) -> Option<f64> {
    let samples = snapshot["samples"].as_f64()?;
    let (mut bytes, mut weighted) = (0.0, 0.0);
    for r in snapshot["targets"][0]["regions"].as_array()? {
        let (s, e) = (r["start"].as_u64()?, r["end"].as_u64()?);
        let overlap = end.min(e).saturating_sub(start.max(s)) as f64;
        bytes += overlap;
        weighted += overlap * r["nr_accesses"].as_f64()? / samples;
    }
    (bytes > 0.0).then(|| weighted / bytes)
}

fn seconds(v: &Value) -> f64 {
    v["secs"].as_f64().unwrap_or(0.0) + v["nanos"].as_f64().unwrap_or(0.0) / 1e9
}

#[test]
fn demo_sees_the_workload_as_it_is_and_leaves_nothing_loaded() {
    if !damon_user::test_support::privileged(
        "demo_sees_the_workload_as_it_is_and_leaves_nothing_loaded",
    ) {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["demo", "--duration", "8s", "--phase-change", "4s", "--json", "--seed", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    let areas = lines[0]["layout"]["areas"].as_array().expect("the layout first").clone();
    let snapshots: Vec<&Value> = lines.iter().filter_map(|l| l.get("snapshot")).collect();
    let summary = &lines.last().unwrap()["summary"];
    assert!(snapshots.len() >= 70, "{} snapshots in 8 s", snapshots.len());
    assert!(summary["counters"]["checks"].as_u64().unwrap() > 0);

    // The workload's clock starts before monitoring does: its phase change (4 s into the
    // workload) is where the hole takes its first faults, when its first page is touched.
    let hole = areas.iter().find(|a| a["name"] == "hole").unwrap();
    let (hole_start, hole_end) = (hole["start"].as_u64().unwrap(), hole["end"].as_u64().unwrap());
    let faults_in_hole = |s: &Value| -> u64 {
        s["targets"][0]["regions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["start"].as_u64().unwrap() < hole_end && r["end"].as_u64().unwrap() > hole_start
            })
            .map(|r| r["faults"].as_u64().unwrap())
            .sum()
    };
    let phase = snapshots
        .iter()
        .find(|s| faults_in_hole(s) > 0)
        .map(|s| seconds(&s["started"]))
        .expect("the hole is touched at the phase change");
    assert!((3.0..4.5).contains(&phase), "the phase change at {phase:.2} s");

    // Settled, away from the phase change: over the run, hot areas read near the maximum and
    // cold ones near zero. (Single windows can dip together when the workload is descheduled.)
    // Settling takes up to ~1.5 s on a loaded machine: the region across a cold area's edge is
    // cut down a few pieces per aggregation.
    let settled: Vec<&Value> = snapshots
        .iter()
        .copied()
        .filter(|s| {
            let t = seconds(&s["elapsed"]);
            (2.0..phase).contains(&t) || t > phase + 1.0
        })
        .collect();
    for area in &areas {
        let (start, end) = (area["start"].as_u64().unwrap(), area["end"].as_u64().unwrap());
        let name = area["name"].as_str().unwrap();
        let rates: Vec<(f64, f64)> = settled
            .iter()
            .map(|s| (seconds(&s["elapsed"]), rate(s, start, end).unwrap()))
            .collect();
        let hot_from = if name == "hole" {
            phase
        } else if area["hot"].as_bool().unwrap() {
            0.0
        } else {
            f64::MAX
        };
        let (hot, cold): (Vec<_>, Vec<_>) = rates.iter().partition(|(t, _)| *t > hot_from);
        if !hot.is_empty() {
            let mean = hot.iter().map(|(_, r)| r).sum::<f64>() / hot.len() as f64;
            assert!(mean >= 0.8, "{name} read {mean:.2} on average while hot");
        }
        // A region along a cold area's edge may hold a strip of its hot neighbour for a while
        // (and read 1 or 2 hits of 20 from it by chance): over the run a cold area reads near
        // zero, and no window takes much of it for hot.
        if !cold.is_empty() {
            let mean = cold.iter().map(|(_, r)| r).sum::<f64>() / cold.len() as f64;
            assert!(mean <= 0.1, "{name} read {mean:.2} on average while cold");
        }
        for (t, r) in cold {
            assert!(r <= 0.3, "{name} read {r:.2} at {t:.1} s while cold");
        }
    }

    // The cold hole turns hot: within 5 aggregations it reads like the always-hot areas.
    let (start, end) = (hole_start, hole_end);
    let always_hot: Vec<(u64, u64)> = areas
        .iter()
        .filter(|a| a["hot"].as_bool().unwrap())
        .map(|a| (a["start"].as_u64().unwrap(), a["end"].as_u64().unwrap()))
        .collect();
    let after: Vec<&&Value> = snapshots.iter().filter(|s| seconds(&s["elapsed"]) > phase).collect();
    let seen = after.iter().position(|s| {
        let hot = always_hot.iter().map(|&(a, b)| rate(s, a, b).unwrap()).sum::<f64>()
            / always_hot.len() as f64;
        rate(s, start, end).unwrap() >= 0.8 * hot
    });
    assert!(seen.is_some_and(|i| i < 5), "hole seen hot after {seen:?} aggregations");

    // The hole is first touched then (nothing touches it before): its 4096 page faults reach
    // the regions as hints.
    let faults: u64 = snapshots.iter().map(|s| faults_in_hole(s)).sum();
    assert!(faults >= 4096 * 9 / 10, "{faults} page faults reported in the hole's 4096 pages");

    // Nothing of ours stays in the kernel once udamon has exited.
    damon_user::test_support::assert_nothing_of_ours_loaded();
}

/// The demo's workload dies with udamon, even when udamon is killed outright.
#[test]
fn the_workload_does_not_outlive_a_killed_demo() {
    if !damon_user::test_support::privileged("the_workload_does_not_outlive_a_killed_demo") {
        return;
    }
    let demo = Command::new(env!("CARGO_BIN_EXE_udamon"))
        .args(["demo", "--duration", "60s"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let settle = std::time::Duration::from_secs(1);
    assert!(
        !damon_user::test_support::child_outlives_sigkill(demo, settle),
        "the workload outlived udamon"
    );
}
