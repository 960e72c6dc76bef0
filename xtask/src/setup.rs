//! `cargo xtask setup`: installs what building the eBPF object needs on a fresh Debian 12 machine.
//!
//! Every step first checks whether it is already satisfied, so running it again costs a few
//! process spawns. A step that cannot be done here stops with the exact command to run by hand.

use std::{
    env,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

pub const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "LLVM_PREFIX=/usr/lib/llvm-22";
const LLVM_PACKAGES: [&str; 2] = ["llvm-22-dev", "libpolly-22-dev"];

pub fn run() -> Result<()> {
    let cargo_bin = cargo_bin_dir();
    prepend_to_path(&cargo_bin);

    step(
        "nightly toolchain",
        nightly_installed,
        &["rustup", "toolchain", "install", NIGHTLY, "--profile", "minimal"],
    )?;
    step(
        "nightly rust-src",
        rust_src_installed,
        &["rustup", "component", "add", "rust-src", "--toolchain", NIGHTLY],
    )?;
    if bpf_linker_ok() {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} ... present");
        return Ok(());
    }
    // bpf-linker links against the system LLVM, which must match nightly's LLVM major (22).
    if !llvm_dev_installed() {
        install_llvm_dev()?;
    }
    // bpf-linker's build takes the first `llvm-config` on PATH (Debian's default may be LLVM 14)
    // unless LLVM_PREFIX names the one to use.
    step(
        "bpf-linker",
        bpf_linker_ok,
        &[
            LLVM_PREFIX,
            "cargo",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
            "--locked",
        ],
    )
}

const DAMO_VERSION: &str = "3.4.3";

/// What `vm-test` needs: QEMU and a static busybox for the guests. QEMU comes from backports:
/// the image's qemu-utils is backports' already, and the release's own qemu-system-x86 (7.2)
/// conflicts with it. Backports is read through lists of our own, not added to the host's
/// sources. Returns the busybox to pack.
pub fn vm_tools() -> Result<PathBuf> {
    let busybox = PathBuf::from("/bin/busybox");
    // Debian's plain `busybox` is dynamically linked and would not run in the guest.
    let present = || {
        run_ok(&["qemu-system-x86_64", "--version"])
            && output(&["dpkg-query", "-W", "-f=${Status}", "busybox-static"])
                .is_some_and(|status| status == "install ok installed")
    };
    if present() {
        eprintln!("setup: qemu-system-x86, busybox-static ... present");
        return Ok(busybox);
    }
    let packages = ["qemu-system-x86", "qemu-utils", "busybox-static"];
    if !is_root() {
        bail!("setup: QEMU is missing and installing it needs root: {}", packages.join(" "));
    }
    let release = crate::apt::codename()?;
    let backports = format!("{release}-backports");
    let mirror = "http://deb.debian.org/debian";
    let sources = format!(
        "deb {mirror} {release} main\ndeb {mirror} {release}-updates main\n\
         deb {mirror}-security {release}-security main\ndeb {mirror} {backports} main\n"
    );
    let options =
        crate::apt::private_sources(std::path::Path::new("target/vm/apt-backports"), &sources)?;
    eprintln!("setup: qemu-system-x86, busybox-static ... installing from {backports}");
    let mut install: Vec<&str> = vec!["apt-get"];
    install.extend(options.iter().map(String::as_str));
    install.extend(["install", "-y", "--no-install-recommends", "-t", &backports]);
    install.extend(packages);
    if !run_ok(&install) || !present() {
        bail!("setup: could not install QEMU: `{}` failed", install.join(" "));
    }
    Ok(busybox)
}

/// Real programs the tests check udamon against, in ignored directories under target/.
pub struct TestTools {
    /// damo from PyPI, to read our records.
    pub damo: PathBuf,
    /// Debian's prometheus and promtool, to scrape and lint our metrics.
    pub prometheus: PathBuf,
    pub promtool: PathBuf,
}

pub fn test_tools() -> Result<TestTools> {
    let damo = damo()?;
    let (prometheus, promtool) = prometheus()?;
    Ok(TestTools { damo, prometheus, promtool })
}

/// Debian's `prometheus` package, downloaded (not installed: no service starts) and unpacked.
fn prometheus() -> Result<(PathBuf, PathBuf)> {
    let dir = std::path::absolute("target/test-tools/prometheus")?;
    let (prometheus, promtool) = (dir.join("usr/bin/prometheus"), dir.join("usr/bin/promtool"));
    let works = || output(&[prometheus.to_str().unwrap_or("prometheus"), "--version"]).is_some();
    if works() && promtool.exists() {
        eprintln!("setup: prometheus (Debian package) ... present");
        return Ok((prometheus, promtool));
    }
    std::fs::create_dir_all(&dir)?;
    let dir_str = dir.to_str().expect("a UTF-8 path");
    let manual =
        format!("cd {dir_str} && apt-get download prometheus && dpkg-deb -x prometheus_*.deb .");
    eprintln!("setup: prometheus (Debian package) ... fetching: {manual}");
    let download = || {
        Command::new("apt-get")
            .args(["download", "prometheus"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh image's package lists may lack it: refresh once (root) on failure.
    if !(download() || (is_root() && run_ok(&["apt-get", "update"]) && download())) {
        bail!("setup: could not download prometheus; run this yourself, then retry:\n    {manual}");
    }
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| anyhow::anyhow!("setup: apt-get download left no .deb in {dir_str}"))?;
    let deb_str = deb.to_str().expect("a UTF-8 path");
    if !run_ok(&["dpkg-deb", "-x", deb_str, dir_str]) || !works() {
        bail!("setup: could not unpack prometheus; run this yourself, then retry:\n    {manual}");
    }
    let _ = std::fs::remove_file(&deb);
    eprintln!("setup: prometheus (Debian package) ... unpacked");
    Ok((prometheus, promtool))
}

/// cargo-fuzz, for `cargo xtask fuzz` (the tests replay the corpus without it).
pub fn cargo_fuzz() -> Result<()> {
    step("cargo-fuzz", cargo_fuzz_ok, &["cargo", "install", "cargo-fuzz", "--locked"])
}

fn cargo_fuzz_ok() -> bool {
    run_ok(&["cargo", "fuzz", "--version"])
}

/// Debian's stress-ng, a real workload for the benches (installed: it has no service).
pub fn stress_ng() -> Result<()> {
    if output(&["stress-ng", "--version"]).is_some() {
        eprintln!("setup: stress-ng ... present");
        return Ok(());
    }
    eprintln!("setup: stress-ng ... installing (apt-get install stress-ng)");
    if !apt_install("stress-ng") {
        bail!(
            "setup: could not install stress-ng; run this yourself, then retry:\n    apt-get install stress-ng"
        );
    }
    Ok(())
}

/// `apt-get install` of `package` as root, refreshing the package lists once on failure (a
/// fresh image's may be stale).
fn apt_install(package: &str) -> bool {
    let install = ["apt-get", "install", "-y", "--no-install-recommends", package];
    is_root() && (run_ok(&install) || (run_ok(&["apt-get", "update"]) && run_ok(&install)))
}

/// The real damo (PyPI) in a virtualenv under target/. Returns the `damo` executable.
fn damo() -> Result<PathBuf> {
    let venv = PathBuf::from("target/test-tools/damo-venv");
    let damo = std::path::absolute(venv.join("bin/damo"))?;
    let installed = || {
        output(&[damo.to_str().unwrap_or("damo"), "version"])
            .is_some_and(|v| v.trim() == DAMO_VERSION)
    };
    if installed() {
        eprintln!("setup: damo {DAMO_VERSION} ... present");
        return Ok(damo);
    }
    let venv_str = venv.to_str().expect("a UTF-8 path");
    if !run_ok(&["python3", "-m", "venv", "--clear", venv_str]) {
        // Debian ships venv separately.
        if !apt_install("python3-venv") || !run_ok(&["python3", "-m", "venv", "--clear", venv_str])
        {
            bail!(
                "setup: cannot create a Python virtualenv for damo; run this yourself, then retry:\n    apt-get install python3-venv && python3 -m venv {venv_str}"
            );
        }
    }
    let pip = venv.join("bin/pip");
    let spec = format!("damo=={DAMO_VERSION}");
    let cmd = [pip.to_str().expect("a UTF-8 path"), "install", "--quiet", &spec];
    eprintln!("setup: damo {DAMO_VERSION} ... installing: {}", cmd.join(" "));
    if !run_ok(&cmd) || !installed() {
        bail!(
            "setup: could not install damo; run this yourself, then retry:\n    {}",
            cmd.join(" ")
        );
    }
    eprintln!("setup: damo {DAMO_VERSION} ... installed");
    Ok(damo)
}

/// Checks `done`; if not, runs `cmd` and checks again.
fn step(name: &str, done: fn() -> bool, cmd: &[&str]) -> Result<()> {
    if done() {
        eprintln!("setup: {name} ... present");
        return Ok(());
    }
    eprintln!("setup: {name} ... installing: {}", cmd.join(" "));
    if !run_ok(cmd) || !done() {
        bail!(
            "setup: could not install {name}; run this yourself, then retry:\n    {}",
            cmd.join(" ")
        );
    }
    eprintln!("setup: {name} ... installed");
    Ok(())
}

fn install_llvm_dev() -> Result<()> {
    let install: Vec<&str> = ["apt-get", "install", "-y", "--no-install-recommends"]
        .into_iter()
        .chain(LLVM_PACKAGES)
        .collect();
    let manual = format!("apt-get update && {}", install.join(" "));
    if !is_root() {
        bail!(
            "setup: LLVM 22 development files are missing and installing them needs root; run as root, then retry:\n    {manual}"
        );
    }
    eprintln!("setup: LLVM 22 dev files ... installing: {}", install.join(" "));
    // A fresh image's package lists may predate llvm-22 in bookworm-security: refresh once on failure.
    let ok = run_ok(&install) || (run_ok(&["apt-get", "update"]) && run_ok(&install));
    if !ok || !llvm_dev_installed() {
        bail!(
            "setup: could not install LLVM 22 development files; run this yourself, then retry:\n    {manual}"
        );
    }
    eprintln!("setup: LLVM 22 dev files ... installed");
    Ok(())
}

fn nightly_installed() -> bool {
    output(&["rustup", "toolchain", "list"])
        .is_some_and(|out| out.lines().any(|line| line.starts_with(&format!("{NIGHTLY}-"))))
}

fn rust_src_installed() -> bool {
    output(&["rustup", "component", "list", "--installed", "--toolchain", NIGHTLY])
        .is_some_and(|out| out.lines().any(|line| line.starts_with("rust-src")))
}

fn bpf_linker_ok() -> bool {
    output(&["bpf-linker", "--version"])
        .is_some_and(|out| out.split_whitespace().any(|word| word == BPF_LINKER_VERSION))
}

fn llvm_dev_installed() -> bool {
    let mut query = vec!["dpkg-query", "-W", "-f=${Status}\n"];
    query.extend(LLVM_PACKAGES);
    output(&query).is_some_and(|out| {
        out.lines().filter(|line| line.ends_with(" installed")).count() == LLVM_PACKAGES.len()
    })
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Where `cargo install` puts binaries; put first on PATH so aya-build finds bpf-linker there.
fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn prepend_to_path(dir: &PathBuf) {
    let old = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&old).any(|p| &p == dir) {
        return;
    }
    let new = env::join_paths(std::iter::once(dir.clone()).chain(env::split_paths(&old)))
        .expect("PATH entries contain no separator");
    // SAFETY: xtask is single-threaded; nothing reads the environment concurrently.
    unsafe { env::set_var("PATH", new) };
}

/// Runs `cmd`, whose leading `NAME=value` words are environment assignments as in a shell.
fn run_ok(cmd: &[&str]) -> bool {
    let split = cmd.iter().position(|word| !word.contains('=')).unwrap_or(cmd.len());
    let (assignments, argv) = cmd.split_at(split);
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    Command::new(program)
        .args(args)
        .envs(assignments.iter().filter_map(|a| a.split_once('=')))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|status| status.success())
}

fn output(cmd: &[&str]) -> Option<String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
