//! `cargo xtask`: the project's build, run, test and benchmark entry points. Every command that
//! builds runs `setup` first, so a fresh machine needs nothing installed by hand.

mod apt;
mod setup;
mod vm;

use std::{
    env,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run, test and benchmark udamon")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build needs (nightly rust-src, LLVM 22 dev files, bpf-linker); idempotent.
    Setup,
    /// Build only the eBPF object, into target/ebpf/damon-ebpf.
    BuildEbpf,
    /// Build everything (release).
    Build,
    /// Build, then run `udamon ARGS` (default: the main job).
    Run {
        /// Arguments for udamon, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit, integration and privileged (which fail instead of skipping under
    /// CI=true), then the kernel matrix (vm-test) on all its kernels.
    Test {
        /// Add a failing step to every guest of the matrix, to see CI fail.
        #[arg(long)]
        inject_vm_failure: bool,
    },
    /// Run the benchmarks and print their figures.
    Bench {
        /// Only these (engine, vaddr, records, metrics, reclaim, cost, kdamond); default: all.
        names: Vec<String>,
    },
    /// Fuzz the readers of untrusted input (cargo fuzz on nightly), each for the given time or
    /// number of inputs, whichever ends first; new inputs that reach new code are kept in
    /// fuzz/corpus, crashes in fuzz/artifacts.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Inputs per target (libFuzzer's -runs), e.g. 10000000; default: no limit.
        #[arg(long)]
        runs: Option<u64>,
        /// Only these (record, proc_maps, btf, scenario, config, metrics_request); default: all.
        targets: Vec<String>,
    },
    /// Boot Debian kernels under QEMU and run udamon's checks and privileged tests in each.
    VmTest {
        /// Kernels to test (6.1, 6.12, 7.2); default: all.
        #[arg(long = "kernel", value_name = "VERSION")]
        kernels: Vec<String>,
        /// Add a failing step to every guest, to see a failure reported.
        #[arg(long)]
        inject_failure: bool,
    },
}

/// What `cargo xtask run` runs without arguments.
const MAIN_JOB: &[&str] = &["demo"];

fn main() {
    let result = env::set_current_dir(workspace_root())
        .context("cannot enter the workspace root")
        .and_then(|()| match Cli::parse().command {
            Cmd::Setup => setup::run(),
            Cmd::BuildEbpf => setup::run().and_then(|()| build_ebpf()),
            Cmd::Build => setup::run().and_then(|()| build()),
            Cmd::Run { args } => setup::run().and_then(|()| build()).and_then(|()| run(&args)),
            Cmd::Test { inject_vm_failure } => setup::run()
                .and_then(|()| test(&setup::test_tools()?))
                .and_then(|()| vm::run(&[], inject_vm_failure)),
            Cmd::Bench { names } => {
                setup::run().and_then(|()| bench(&setup::test_tools()?, &names))
            }
            Cmd::Fuzz { seconds, runs, targets } => setup::run()
                .and_then(|()| setup::cargo_fuzz())
                .and_then(|()| fuzz(seconds, runs, &targets)),
            Cmd::VmTest { kernels, inject_failure } => {
                setup::run().and_then(|()| vm::run(&kernels, inject_failure))
            }
        });
    if let Err(err) = result {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// The same aya-build call damon-user's build script makes, with the environment cargo would give it.
fn build_ebpf() -> Result<()> {
    let out_dir = workspace_root().join("target/ebpf");
    std::fs::create_dir_all(&out_dir)?;
    let endian = if cfg!(target_endian = "little") { "little" } else { "big" };
    // SAFETY: single-threaded here; aya-build reads these as a build script would.
    unsafe {
        env::set_var("OUT_DIR", &out_dir);
        env::set_var("CARGO_CFG_TARGET_ENDIAN", endian);
        env::set_var("CARGO_CFG_TARGET_ARCH", env::consts::ARCH);
    }
    let root_dir = workspace_root().join("damon-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "damon-ebpf",
            root_dir: root_dir.to_str().context("workspace path is not UTF-8")?,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )?;
    let object = out_dir.join("damon-ebpf");
    let size = std::fs::metadata(&object)
        .with_context(|| format!("{} was not built", object.display()))?
        .len();
    println!("eBPF object: {} ({} KiB)", object.display(), size / 1024);
    Ok(())
}

fn build() -> Result<()> {
    run_command(cargo().args(["build", "--release"]))
}

fn run(args: &[String]) -> Result<()> {
    let args: Vec<&str> =
        if args.is_empty() { MAIN_JOB.to_vec() } else { args.iter().map(String::as_str).collect() };
    let binary = workspace_root().join("target/release/udamon");
    // exec: udamon gets the terminal's signals and its exit code is ours.
    let err = Command::new(&binary).args(&args).exec();
    bail!("cannot run {}: {err}", binary.display())
}

fn test(tools: &setup::TestTools) -> Result<()> {
    run_command(cargo().args(["fmt", "--all", "--check"]))?;
    run_command(cargo().args(["clippy", "--release", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate is not a default member: lint it for its own target, on nightly.
    run_command(
        Command::new("rustup")
            .args([
                "run",
                setup::NIGHTLY,
                "cargo",
                "clippy",
                "--release",
                "--package",
                "damon-ebpf",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--target-dir", "target/ebpf-lint", "--", "-D", "warnings"])
            // Set by the outer (stable) cargo; they would pin the stable compiler.
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )?;
    // Tests that need the real damo or Prometheus find them here (and fail under CI=true
    // without them).
    run_command(with_tools(cargo().args(["test", "--release"]), tools))
}

fn with_tools<'a>(command: &'a mut Command, tools: &setup::TestTools) -> &'a mut Command {
    command
        .env("UDAMON_DAMO", &tools.damo)
        .env("UDAMON_PROMETHEUS", &tools.prometheus)
        .env("UDAMON_PROMTOOL", &tools.promtool)
}

/// Every benchmark, each printing its figures; docs/benchmarks.md quotes them beside this command.
/// The host benches, then the guests' (`kdamond`), or only those named.
fn bench(tools: &setup::TestTools, names: &[String]) -> Result<()> {
    let wanted = |name: &str| names.is_empty() || names.iter().any(|n| n == name);
    if wanted("policies") {
        setup::stress_ng()?;
    }
    for (package, bench) in [
        ("damon-engine", "engine"),
        ("damon-user", "vaddr"),
        ("damon-user", "records"),
        ("damon-user", "metrics"),
        ("damon-user", "reclaim"),
        ("damon-user", "cost"),
        ("damon-user", "policies"),
        ("damon-user", "soak"),
    ] {
        if wanted(bench) {
            run_command(with_tools(
                cargo().args(["bench", "--package", package, "--bench", bench]),
                tools,
            ))?;
        }
    }
    if wanted("kdamond") { vm::bench() } else { Ok(()) }
}

/// The fuzz targets, as fuzz/Cargo.toml names them.
const FUZZ_TARGETS: [&str; 6] =
    ["record", "proc_maps", "btf", "scenario", "config", "metrics_request"];

/// Each target for `seconds` (or `runs` inputs), with debug assertions (overflows are crashes too), a timeout per
/// input and a memory cap, so a hang or unbounded memory fails as a crash does.
fn fuzz(seconds: u64, runs: Option<u64>, names: &[String]) -> Result<()> {
    if let Some(unknown) = names.iter().find(|n| !FUZZ_TARGETS.contains(&n.as_str())) {
        bail!("no fuzz target `{unknown}` (targets: {})", FUZZ_TARGETS.join(", "));
    }
    let wanted = |name: &str| names.is_empty() || names.iter().any(|n| n == name);
    for target in FUZZ_TARGETS.into_iter().filter(|t| wanted(t)) {
        let corpus = format!("corpus/{target}");
        run_command(
            Command::new("rustup")
                .args(["run", setup::NIGHTLY, "cargo", "fuzz", "run", "-O", "-a", target, &corpus])
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .args(runs.map(|runs| format!("-runs={runs}")))
                .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
                .current_dir(workspace_root().join("fuzz"))
                // Set by the outer (stable) cargo; they would pin the stable compiler.
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER"),
        )?;
    }
    Ok(())
}

/// The cargo that runs xtask (stable), for the workspace's host crates.
pub(crate) fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub(crate) fn run_command(command: &mut Command) -> Result<()> {
    let shown = format!(
        "{} {}",
        command.get_program().display(),
        command.get_args().map(|a| a.display().to_string()).collect::<Vec<_>>().join(" ")
    );
    eprintln!("xtask: {shown}");
    let status = command.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}
