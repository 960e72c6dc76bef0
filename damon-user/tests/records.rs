//! Records and reports through the `udamon` binary: golden outputs, format round trips, error
//! lines, and the real damo (PyPI, found through `UDAMON_DAMO`, which `cargo xtask test` sets)
//! reading what we write. None of these need privileges.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/two-targets.json");

fn udamon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_udamon")).args(args).output().expect("run udamon")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "udamon failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("udamon-records-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The real damo, or None (a skip, printed) outside CI; under CI=true its absence fails.
fn damo(test: &str) -> Option<PathBuf> {
    match std::env::var_os("UDAMON_DAMO").map(PathBuf::from).filter(|p| p.exists()) {
        Some(damo) => Some(damo),
        None if damon_user::test_support::in_ci() => {
            panic!("{test}: UDAMON_DAMO does not name damo under CI=true (run `cargo xtask test`)")
        }
        None => {
            eprintln!("skipping {test}: UDAMON_DAMO is not set (`cargo xtask test` sets it)");
            None
        }
    }
}

fn run_damo(damo: &Path, args: &[&str]) -> String {
    let out = Command::new(damo).args(args).output().expect("run damo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.contains("Traceback"),
        "damo {args:?} failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn golden_access_report() {
    let text = stdout(&udamon(&[
        "report",
        "access",
        "-i",
        FIXTURE,
        "--target",
        "4242",
        "--snapshot",
        "-1",
    ]));
    assert_eq!(
        text,
        "\
target 4242 snapshot 2 at 100.3 s: 2 regions, 1.0 MiB total, working set 512.0 KiB
#  start         size  access   hz  age  (time)
0  0x1000   512.0 KiB    50 %  100    0    0 ms
1  0x81000  520.0 KiB     0 %    0    1  100 ms
heatmap |5555555555555555555555555555555300000000000000000000000000000000|

"
    );
}

#[test]
fn golden_heatmap() {
    let args = [
        "report",
        "heatmap",
        "-i",
        FIXTURE,
        "--target",
        "4242",
        "--time-bins",
        "3",
        "--address-bins",
        "16",
    ];
    assert_eq!(
        stdout(&udamon(&args)),
        "\
# target 4242: time 100.0–100.3 s downwards, addresses across (1.1 MiB monitored, 2 span(s)); 0–9: access rate in tenths
# 0x1000 … 0x800000000000
1000000000000002
1000000000000000
5555555200000000
"
    );
    // Colours only when asked (stdout is not a terminal here).
    let coloured = stdout(&udamon(&[&args[..], &["--colour", "always"]].concat()));
    assert!(coloured.contains("\x1b[48;5;"));
}

#[test]
fn golden_distributions() {
    let wss = stdout(&udamon(&["report", "wss", "-i", FIXTURE, "--skip", "0", "--target", "7"]));
    assert_eq!(
        wss,
        "\
# target 7: working-set size over 3 snapshots
avg       1.3 MiB
  0           0 B  |                                                  |
 25           0 B  |                                                  |
 50       2.0 MiB  |**************************************************|
 75       2.0 MiB  |**************************************************|
100       2.0 MiB  |**************************************************|
"
    );
    let json = stdout(&udamon(&["report", "nr-regions", "-i", FIXTURE, "--skip", "0", "--json"]));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value[0]["target_id"], 4242);
    assert_eq!(
        value[0]["percentiles"],
        serde_json::json!([[0, 2], [25, 2], [50, 2], [75, 3], [100, 3]])
    );
    assert_eq!(value[1]["average"], 1.0);
}

#[test]
fn every_report_has_json() {
    for kind in ["access", "heatmap", "wss", "nr-regions"] {
        let out = stdout(&udamon(&["report", kind, "-i", FIXTURE, "--json"]));
        let value: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(value.as_array().map(Vec::len), Some(2), "{kind}: one entry per target");
    }
}

#[test]
fn pictures_are_written_whole() {
    let dir = scratch("pictures");
    for name in ["h.png", "h.svg"] {
        let out = dir.join(name);
        stdout(&udamon(&[
            "report",
            "heatmap",
            "-i",
            FIXTURE,
            "--target",
            "4242",
            "-o",
            path(&out),
        ]));
        let bytes = std::fs::read(&out).unwrap();
        if name.ends_with("png") {
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        } else {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        }
    }
    // Two targets, one picture: the user must choose; nothing is written.
    let out = udamon(&["report", "heatmap", "-i", FIXTURE, "-o", path(&dir.join("both.png"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no partial or temporary file left");
}

#[test]
fn every_format_converts_and_reads_back_the_same() {
    let dir = scratch("convert");
    let reference = stdout(&udamon(&["report", "access", "-i", FIXTURE, "--all", "--json"]));
    for format in ["json_compressed", "json", "perf_script"] {
        let out = dir.join(format);
        stdout(&udamon(&["convert", "-i", FIXTURE, "-o", path(&out), "--format", format]));
        let again = stdout(&udamon(&["report", "access", "-i", path(&out), "--all", "--json"]));
        assert_eq!(again, reference, "{format}");
    }
}

#[test]
fn bad_record_files_get_one_line_and_exit_2() {
    let dir = scratch("bad");
    let good = dir.join("good.data");
    stdout(&udamon(&["convert", "-i", FIXTURE, "-o", path(&good)]));
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.data");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.join("garbage.data");
    std::fs::write(&garbage, "hello, world\n").unwrap();
    let json = dir.join("cut.json");
    stdout(&udamon(&["convert", "-i", FIXTURE, "-o", path(&json), "--format", "json"]));
    let text = std::fs::read(&json).unwrap();
    std::fs::write(&json, &text[..text.len() - 40]).unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["report", "access", "-i", path(&truncated)], "truncated"),
        (&["report", "wss", "-i", path(&garbage)], "neither damo JSON"),
        (&["report", "heatmap", "-i", path(&json)], "truncated"),
        (&["report", "access", "-i", "/nonexistent/record"], "cannot read /nonexistent/record"),
        (&["report", "access", "-i", FIXTURE, "--target", "5"], "no target 5"),
        (&["report", "access", "-i", FIXTURE, "--snapshot", "3"], "--snapshot 3"),
        (&["report", "heatmap", "-i", FIXTURE, "--address-range", "9-2"], "--address-range"),
        (&["report", "heatmap", "-i", FIXTURE, "--target", "7", "-o", "x.gif"], ".png or .svg"),
    ];
    for (args, expected) in cases {
        let out = udamon(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed a partial report");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn completions_and_config_errors() {
    let script = stdout(&udamon(&["completions", "bash"]));
    assert!(script.contains("udamon") && script.contains("record"));
    let dir = scratch("config");
    let config = dir.join("udamon.toml");
    std::fs::write(&config, "sample = \"fast\"\n").unwrap();
    let out = udamon(&["monitor", "--config", path(&config), "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--config") && err.contains("fast"), "{err}");
    let out = udamon(&["monitor", "--sample", "10ms", "--aggr", "5ms", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = udamon(&["record", "-o", "/nonexistent/dir/r.data", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write /nonexistent/dir/r.data"));
}

#[test]
fn damo_reads_every_format_we_write_and_agrees_on_the_numbers() {
    let Some(damo) = damo("damo_reads_every_format_we_write_and_agrees_on_the_numbers") else {
        return;
    };
    let dir = scratch("damo");
    // damo 3.4.3 skips plain JSON where `file` calls it "JSON text data"; the others it reads.
    for format in ["json_compressed", "perf_script"] {
        let f = dir.join(format);
        stdout(&udamon(&["convert", "-i", FIXTURE, "-o", path(&f), "--format", format]));
        // Trace text has no intervals, and damo's access report refuses such records (its own
        // perf records too); the compressed JSON carries ours.
        if format == "json_compressed" {
            let access =
                run_damo(&damo, &["report", "access", "--input", path(&f), "--raw_number"]);
            assert!(
                access.contains("528384") && access.contains("94000000000000"),
                "our regions: {access}"
            );
            assert!(
                access.contains("intervals: sample 5000 aggr 100000"),
                "our intervals: {access}"
            );
        }
        run_damo(&damo, &["report", "heatmap", "--input", path(&f)]);
        let wss = run_damo(
            &damo,
            &[
                "report",
                "wss",
                "--input",
                path(&f),
                "--raw_number",
                "--exclude_samples",
                "0",
                "--per_target",
            ],
        );
        let ours = stdout(&udamon(&["report", "wss", "-i", path(&f), "--skip", "0", "--json"]));
        let ours: serde_json::Value = serde_json::from_str(&ours).unwrap();
        for target in ours.as_array().unwrap() {
            let median = target["percentiles"][2][1].as_u64().unwrap();
            let line = format!(" 50 {median:>15}");
            assert!(
                wss.contains(&line),
                "{format}: damo's median differs from ours ({median}): {wss}"
            );
        }
    }
}

#[test]
fn we_read_what_damo_writes() {
    let Some(damo) = damo("we_read_what_damo_writes") else { return };
    let dir = scratch("from-damo");
    let reference = stdout(&udamon(&["report", "access", "-i", FIXTURE, "--all", "--json"]));
    // damo cannot read the plain-JSON fixture (see above): hand it the compressed form.
    let input = dir.join("input");
    stdout(&udamon(&["convert", "-i", FIXTURE, "-o", path(&input)]));
    for format in ["json", "json_compressed", "perf_script"] {
        let out = dir.join(format);
        run_damo(
            &damo,
            &[
                "convert_record_format",
                "--record_file",
                path(&input),
                "--format",
                format,
                "--output_file",
                path(&out),
            ],
        );
        let ours = stdout(&udamon(&["report", "access", "-i", path(&out), "--all", "--json"]));
        assert_eq!(ours, reference, "damo's {format}");
    }
}

/// `-o` never replaces what is not a regular file: a device is written through (a full one is a
/// runtime error), a symlink followed (dangling too) and kept, a directory refused alike by
/// every command.
#[test]
fn outputs_never_replace_devices_or_links() {
    use std::os::unix::fs::FileTypeExt as _;
    let dir = scratch("outputs");
    let convert = |output: &str| udamon(&["convert", "-i", FIXTURE, "-o", output]);
    let out = convert("/dev/null");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    let out = convert("/dev/full");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("udamon: cannot write /dev/full: No space left on device"), "{err}");

    let (link, target) = (dir.join("link.data"), dir.join("target.data"));
    std::os::unix::fs::symlink("target.data", &link).unwrap();
    for _ in 0..2 {
        // Dangling the first time, to an existing file the second.
        stdout(&convert(path(&link)));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        stdout(&udamon(&["report", "access", "-i", path(&target)]));
    }
    let picture = dir.join("heat.svg");
    std::os::unix::fs::symlink("/dev/null", &picture).unwrap();
    stdout(&udamon(&["report", "heatmap", "-i", FIXTURE, "--target", "7", "-o", path(&picture)]));
    assert!(std::fs::symlink_metadata(&picture).unwrap().file_type().is_symlink());
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    let subdir = dir.join("a.svg");
    std::fs::create_dir(&subdir).unwrap();
    let expected = format!("udamon: cannot write {}: it is a directory\n", path(&subdir));
    for args in [
        &["convert", "-i", FIXTURE, "-o", path(&subdir)][..],
        &["report", "heatmap", "-i", FIXTURE, "--target", "7", "-o", path(&subdir)],
        &["record", "-o", path(&subdir), "1"],
    ] {
        let out = udamon(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{args:?}");
    }
}

/// A zlib bomb: `prefix`, then `chunks` MiB of `fill`, built from one compressed MiB repeated
/// (after the first, each sync-flushed MiB of the same bytes compresses to the same bytes), so
/// 4 GiB take 4 MB and no time.
fn bomb(prefix: &[u8], fill: u8, chunks: usize) -> Vec<u8> {
    use std::io::Write as _;
    let chunk = vec![fill; 1 << 20];
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(prefix).unwrap();
    let mut ends = Vec::new();
    for _ in 0..2 {
        encoder.write_all(&chunk).unwrap();
        encoder.flush().unwrap();
        ends.push(encoder.get_ref().len());
    }
    let bytes = encoder.get_ref();
    let (first, repeated) = (&bytes[..ends[0]], &bytes[ends[0]..ends[1]]);
    [first, &repeated.repeat(chunks - 1)].concat()
}

/// `udamon args` with at most 512 MiB of address space: inflating a bomb whole would abort.
fn udamon_in_512_mib(args: &[&str]) -> (Output, std::time::Duration) {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(env!("CARGO_BIN_EXE_udamon"));
    command.args(args);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 512 << 20, rlim_max: 512 << 20 };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    };
    let started = std::time::Instant::now();
    let out = command.output().unwrap();
    (out, started.elapsed())
}

#[test]
fn decompression_bombs_fail_fast_in_bounded_memory() {
    let dir = scratch("bomb");
    // 4 GiB of zeros: not JSON, told at the first byte.
    let zeros = dir.join("zeros");
    std::fs::write(&zeros, bomb(b"", 0, 4096)).unwrap();
    // 4 GiB of JSON's white space: only the limit stops it.
    let spaces = dir.join("spaces");
    std::fs::write(&spaces, bomb(b"[", b' ', 4096)).unwrap();
    let converted = dir.join("converted");
    let cases: [(&[&str], &str); 4] = [
        (&["report", "wss", "-i", path(&zeros)], "not damo's record JSON"),
        (
            &["report", "wss", "-i", path(&spaces)],
            "it holds more than 1GiB of record (inflated): raise --max-input to read it",
        ),
        (
            &["convert", "-i", path(&spaces), "-o", path(&converted), "--max-input", "64MiB"],
            "it holds more than 64MiB of record",
        ),
        (&["report", "access", "-i", FIXTURE, "--max-input", "1 parsec"], "--max-input"),
    ];
    for (args, expected) in cases {
        let (out, took) = udamon_in_512_mib(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(took.as_secs() < 15, "{args:?} took {took:?}");
    }
    // A record within a small limit still reads.
    stdout(&udamon(&["report", "wss", "-i", FIXTURE, "--max-input", "1MiB"]));
}

/// Counts beyond the samples an aggregation has are read as that many, with one warning line;
/// an interval of 0 is refused.
#[test]
fn impossible_counts_are_clamped_and_zero_intervals_refused() {
    let dir = scratch("loose");
    let record = |sample_us: u64| {
        format!(
            r#"[{{"target_id": 3, "intervals": {{"sample_us": {sample_us}, "aggr_us": 100000,
            "ops_update_us": 1000000}}, "snapshots": [{{"start_time": 0, "end_time": 100000000,
            "regions": [{{"start": 0, "end": 4096, "nr_accesses": {{"samples": 99999}}}}]}}]}}]"#
        )
    };
    let (clamped, zero) = (dir.join("clamped.json"), dir.join("zero.json"));
    std::fs::write(&clamped, record(5000)).unwrap();
    std::fs::write(&zero, record(0)).unwrap();
    let out = udamon(&["report", "access", "--json", "-i", path(&clamped)]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report[0]["regions"][0]["access_percent"], 100.0);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "udamon: {}: target 3: 1 region(s) had more accesses than the 20 samples per aggregation of the record's intervals; read as 20\n",
            path(&clamped)
        )
    );
    let out = udamon(&["report", "access", "-i", path(&zero)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.ends_with("target 3, intervals: sample_us is 0: an interval must be positive\n"));
}
