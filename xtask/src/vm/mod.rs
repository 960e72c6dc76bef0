//! `cargo xtask vm-test`: udamon on other kernels. Debian kernels boot under QEMU (TCG: this
//! machine's /dev/kvm cannot run ordinary guests) with an initramfs of static test binaries; each
//! guest runs `udamon check`, the privileged integration tests and a monitored demo, and prints a
//! verdict on its serial console.

mod console;
mod initramfs;
mod kernels;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{console::Verdict, initramfs::Archive};

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The integration tests with privileged parts. Not `demo`: its accuracy bounds assume the
/// workload sweeps its hot memory at native speed, and under TCG it runs ~5× slower; the guest
/// runs `udamon demo` end to end instead.
const GUEST_TESTS: [&str; 7] =
    ["fault_stream", "walker", "gentle", "live", "cli", "metrics", "migrate"];
/// Tests of udamon against damo and Prometheus, which the guests do not have; the host runs them.
const HOST_ONLY: [&str; 2] = ["damo_", "prometheus_"];
/// What the cli tests drop privileges with (util-linux; busybox's cannot change user), and the
/// source files tests read, both packed at their host paths.
const HOST_PROGRAMS: [&str; 1] = ["/usr/bin/setpriv"];
const SOURCE_FILES: [&str; 2] = ["packaging/udamon.service", "packaging/grafana-dashboard.json"];
/// A guest takes 3 to 10 min under TCG here (7.2 is the slowest: every step about twice as long
/// as on 6.12); a hung one must not eat CI's budget.
const GUEST_TIMEOUT: Duration = Duration::from_secs(14 * 60);
/// How long each of kernel DAMON and udamon watches the workload, one after the other.
const SIDE_BY_SIDE_SECONDS: u32 = 10;
const SIDE: &str = "UDAMON-VM-SIDE-BY-SIDE:";
const KDAMOND: &str = "UDAMON-VM-KDAMOND:";
/// How long each of a kernel DAMOS pageout scheme and udamon's acts on the workload.
const DAMOS_SECONDS: u32 = 10;
const DAMOS: &str = "UDAMON-VM-DAMOS:";

pub fn run(names: &[String], inject_failure: bool) -> Result<()> {
    let kernels = if names.is_empty() {
        kernels::ALL.iter().collect()
    } else {
        names.iter().map(|n| kernels::by_name(n)).collect::<Result<Vec<_>>>()?
    };
    let busybox = crate::setup::vm_tools()?;
    let work = std::path::absolute("target/vm")?;
    std::fs::create_dir_all(&work)?;
    let initrd = work.join("initrd.cpio");
    pack(&busybox, &initrd, inject_failure)?;
    let mut results = Vec::new();
    for kernel in kernels {
        let (vmlinuz, initrd) = for_kernel(kernel, &work, &initrd)?;
        let log = work.join(format!("console-{}.log", kernel.name));
        let started = Instant::now();
        let mut verdict = boot(&vmlinuz, &initrd, &log)?;
        if let Verdict::Broken(why) = &verdict {
            eprintln!("vm-test: kernel {}: {why}; booting once more", kernel.name);
            verdict = boot(&vmlinuz, &initrd, &log)?;
        }
        eprintln!(
            "vm-test: kernel {}: {verdict:?} in {:.0} s (console: {})",
            kernel.name,
            started.elapsed().as_secs_f64(),
            log.display()
        );
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        let line = |marker: &str| {
            console
                .lines()
                .find_map(|l| l.strip_prefix(marker))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let (side, damos) = (line(SIDE), line(DAMOS));
        let observed: Vec<&str> =
            console.lines().filter_map(|l| l.strip_prefix(KDAMOND)).map(str::trim).collect();
        results.push((kernel.name, verdict, side, observed.join("; "), damos));
    }
    println!("kernel  verdict  beside kernel DAMON | kernel DAMON observed | beside kernel DAMOS");
    for (name, verdict, side, observed, damos) in &results {
        println!("{name:<7} {verdict:?}  {side} | {observed} | {damos}");
    }
    let failed: Vec<_> =
        results.iter().filter(|(_, v, ..)| *v != Verdict::Pass).map(|(n, ..)| *n).collect();
    if !failed.is_empty() {
        bail!("vm-test failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

/// `kernel`'s vmlinuz, and an initrd of `common` followed by the kernel's modules (the
/// kernel unpacks concatenated archives in turn), which /init loads.
fn for_kernel(kernel: &kernels::Kernel, work: &Path, common: &Path) -> Result<(PathBuf, PathBuf)> {
    let files = kernel.files(&work.join("kernels"))?;
    let mut archive = Archive::new();
    for (i, module) in files.modules.iter().enumerate() {
        let name = module.file_name().and_then(|n| n.to_str()).context("a module name")?;
        archive.copy(&format!("/modules/{i:02}-{name}"), module)?;
    }
    let mut bytes = std::fs::read(common)?;
    bytes.extend(archive.finish());
    let initrd = work.join(format!("initrd-{}.cpio", kernel.name));
    std::fs::write(&initrd, bytes)?;
    Ok((files.vmlinuz, initrd))
}

const STATIC: (&str, &str) =
    ("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static");

/// Builds udamon and the `tests` crate's `programs` static (glibc with crt-static), and starts
/// an archive with busybox, the mount points and udamon at its host path (where the tests look:
/// CARGO_BIN_EXE_udamon); the programs go to `/NAME`. Returns udamon's path.
fn base_archive(busybox: &Path, programs: &[&str]) -> Result<(Archive, String)> {
    crate::run_command(
        crate::cargo()
            .args(["build", "--release", "--target", TARGET, "-p", "damon-user", "--bin", "udamon"])
            .env(STATIC.0, STATIC.1),
    )?;
    let mut build = crate::cargo();
    build.args(["build", "--release", "--target", TARGET, "-p", "tests"]);
    for program in programs {
        build.args(["--bin", program]);
    }
    crate::run_command(build.env(STATIC.0, STATIC.1))?;
    let mut archive = Archive::new();
    archive.copy("/bin/busybox", busybox)?;
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/sys/kernel/tracing",
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/etc",
    ] {
        archive.dir(dir);
    }
    let udamon = std::path::absolute(format!("target/{TARGET}/release/udamon"))?;
    let udamon_path = udamon.to_str().context("a UTF-8 path")?.to_owned();
    archive.copy(&udamon_path, &udamon)?;
    for program in programs {
        let built = std::path::absolute(format!("target/{TARGET}/release/{program}"))?;
        archive.copy(&format!("/{program}"), &built)?;
    }
    Ok((archive, udamon_path))
}

/// Static binaries, and the guest's steps over them.
fn pack(busybox: &Path, initrd: &Path, inject_failure: bool) -> Result<()> {
    let (mut archive, udamon_path) =
        base_archive(busybox, &["side_by_side", "kdamond_check", "damos_side_by_side"])?;
    let udamon_path = udamon_path.as_str();
    let mut build = crate::cargo();
    build.args([
        "test",
        "--release",
        "--no-run",
        "--target",
        TARGET,
        "-p",
        "tests",
        "-p",
        "damon-user",
        "--message-format=json",
    ]);
    for test in GUEST_TESTS {
        build.args(["--test", test]);
    }
    let out = build
        .env(STATIC.0, STATIC.1)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building the static test binaries failed");
    }
    let tests: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .collect();
    if tests.len() != GUEST_TESTS.len() {
        bail!("expected {} test binaries, cargo built {tests:?}", GUEST_TESTS.len());
    }
    for program in HOST_PROGRAMS {
        copy_dynamic(&mut archive, Path::new(program))?;
    }
    for file in SOURCE_FILES {
        let path = std::path::absolute(file)?;
        archive.copy(path.to_str().context("a UTF-8 path")?, &path)?;
    }
    // Tests name those files from their crate's directory (`damon-user/../packaging/…`).
    for krate in ["damon-user", "tests"] {
        archive.dir(std::path::absolute(krate)?.to_str().context("a UTF-8 path")?);
    }
    let skips: String = HOST_ONLY.iter().map(|t| format!(" --skip {t}")).collect();
    let mut steps = vec![format!("{udamon_path} check")];
    for test in &tests {
        let name = test.file_name().and_then(|n| n.to_str()).context("a test binary name")?;
        let inside = format!("/tests/{name}");
        archive.copy(&inside, test)?;
        steps.push(format!("{inside} --test-threads=1{skips}"));
    }
    steps.push(format!("{udamon_path} demo --duration 8s --every 20"));
    // Beside the kernel's own DAMON, where the kernel has it (6.12, 7.2).
    steps.push(format!(
        "if [ -d /sys/kernel/mm/damon/admin ]; then /side_by_side {udamon_path} {SIDE_BY_SIDE_SECONDS}; else echo '{SIDE} no kernel DAMON here'; fi"
    ));
    // udamon kdamond against the kernel's own view of a vaddr and a paddr context.
    steps.push(format!(
        "if [ -d /sys/kernel/mm/damon/admin ]; then /kdamond_check {udamon_path}; else echo '{KDAMOND} no kernel DAMON here'; fi"
    ));
    // A kernel DAMOS pageout scheme and udamon's, over zram swap.
    steps.push(format!(
        "if [ -d /sys/kernel/mm/damon/admin ]; then /damos_side_by_side {udamon_path} {DAMOS_SECONDS}; else echo '{DAMOS} no kernel DAMON here'; fi"
    ));
    if inject_failure {
        steps.push("false".to_owned());
    }
    archive.file("/init", &initramfs::init_script(&steps), 0o755);
    initramfs::write(initrd, archive)
}

/// The kernels with DAMON the bench boots.
const BENCH_KERNELS: [&str; 2] = ["6.12", "7.2"];
const KDAMOND_COST: &str = "UDAMON-VM-KDAMOND-COST:";
/// Seconds per measured phase.
const KDAMOND_COST_SECONDS: u32 = 10;

/// `cargo xtask bench`'s guest part: what observing the kernel's DAMON costs a kdamond
/// (`tests/src/bin/kdamond_cost.rs`), on each kernel with DAMON; prints its lines.
pub fn bench() -> Result<()> {
    let busybox = crate::setup::vm_tools()?;
    let work = std::path::absolute("target/vm")?;
    std::fs::create_dir_all(&work)?;
    let initrd = work.join("initrd-bench.cpio");
    let (mut archive, udamon) = base_archive(&busybox, &["kdamond_cost"])?;
    let steps = [format!("/kdamond_cost {udamon} {KDAMOND_COST_SECONDS}")];
    archive.file("/init", &initramfs::init_script(&steps), 0o755);
    initramfs::write(&initrd, archive)?;
    for name in BENCH_KERNELS {
        let kernel = kernels::by_name(name)?;
        let log = work.join(format!("console-bench-{name}.log"));
        let (vmlinuz, initrd) = for_kernel(kernel, &work, &initrd)?;
        let verdict = boot(&vmlinuz, &initrd, &log)?;
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        for line in console.lines().filter_map(|l| l.strip_prefix(KDAMOND_COST)) {
            println!("kdamond cost, kernel {name}: {}", line.trim());
        }
        if verdict != Verdict::Pass {
            bail!("the kdamond cost bench failed on kernel {name} (console: {})", log.display());
        }
    }
    Ok(())
}

/// Packs a dynamically linked host program with the libraries `ldd` names, at their host paths.
fn copy_dynamic(archive: &mut Archive, program: &Path) -> Result<()> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .with_context(|| format!("cannot run ldd on {}", program.display()))?;
    if !out.status.success() {
        bail!("{} is missing (ldd failed); it comes with util-linux", program.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)"
    let libraries = text
        .lines()
        .filter_map(|l| l.split("=> ").nth(1).unwrap_or(l).split_whitespace().next())
        .filter(|p| p.starts_with('/'));
    for path in std::iter::once(program.to_str().context("a UTF-8 path")?).chain(libraries) {
        archive.copy(path, Path::new(path))?;
    }
    Ok(())
}

/// Boots `vmlinuz` with `initrd`, echoes the guest's progress, keeps the console in `log`.
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> Result<Verdict> {
    let mut qemu = Command::new("qemu-system-x86_64")
        // One TCG thread: multi-threaded TCG on QEMU 7.2 oopses in ~4 % of boots (int3).
        .args([
            "-accel",
            "tcg,thread=single",
            "-smp",
            "1",
            "-m",
            "2048",
            // Two NUMA nodes (the second without a CPU), for the migration schemes' test.
            "-object",
            "memory-backend-ram,id=m0,size=1024M",
            "-numa",
            "node,nodeid=0,cpus=0,memdev=m0",
            "-object",
            "memory-backend-ram,id=m1,size=1024M",
            "-numa",
            "node,nodeid=1,memdev=m1",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // 7.2's own DAMON monitor would hold DAMON busy.
        .args(["-append", "console=ttyS0 panic=-1 damon_stat.enabled=N"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().context("no console pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let mut console = String::new();
    // Written as it comes, so a slow or hung guest can be watched.
    let mut file = std::fs::File::create(log)?;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if line.contains("UDAMON-VM")
                    || line.contains("test result")
                    || line.contains("panicked")
                {
                    eprintln!("  guest: {line}");
                }
                let _ = writeln!(file, "{line}");
                console.push_str(&line);
                console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = qemu.kill();
                console.push_str("vm-test: the guest timed out\n");
                break;
            }
        }
    }
    let _ = qemu.wait();
    Ok(console::verdict(&console))
}
