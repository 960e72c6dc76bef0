//! Rows about the system: privileges, kernel, BTF, tracefs, lockdown, THP, kdamond, memlock.

use std::{ffi::CString, fs, ptr};

use super::Row;
use crate::{
    dataplane::{KernelTypes, object::ensure_memlock},
    sys::{
        anon::AnonMapping,
        caps::{CapSet, Capability},
        kernel::{self, KernelVersion, MEMCG_BPF_ACCOUNTING, MIN_KERNEL},
        pidfd::PidFd,
        tracefs,
    },
};

/// What the rows and the program probes need to know about the system.
pub struct Facts {
    pub caps: CapSet,
    /// The size of the kernel's BTF, if it can be read.
    pub btf: Result<u64, String>,
    /// The BTF parsed, for the full check (whose probes load programs with it).
    pub types: Option<Result<KernelTypes, String>>,
    pub tracefs: Result<tracefs::Mount, String>,
}

impl Facts {
    /// Without `parse`, the BTF is only found readable: commands about to monitor parse it once,
    /// when they load the data plane.
    pub fn read(parse: bool) -> Self {
        let caps = CapSet::current();
        let readable = fs::File::open(kernel::BTF_VMLINUX)
            .and_then(|f| f.metadata())
            .map(|m| m.len())
            .map_err(|err| format!("cannot read kernel BTF at {}: {err}", kernel::BTF_VMLINUX));
        let types = (parse && readable.is_ok())
            .then(|| KernelTypes::read().map_err(|err| format!("{err:#}")));
        Self {
            caps,
            btf: readable,
            types,
            tracefs: if caps.has(Capability::SysAdmin) {
                tracefs::ensure_mounted().map_err(|err| format!("{err:#}"))
            } else {
                tracefs::find()
                    .map(tracefs::Mount::Found)
                    .ok_or_else(|| "not mounted, or not readable without CAP_SYS_ADMIN".to_owned())
            },
        }
    }
}

const CAPABILITIES: [(Capability, bool, &str); 6] = [
    (Capability::Bpf, true, "all monitoring: eBPF programs and maps"),
    (Capability::Perfmon, true, "all monitoring: tracing, page-table reads"),
    (Capability::SysNice, true, "all monitoring: clearing accessed bits"),
    (Capability::SysPtrace, false, "monitoring other users' processes"),
    (Capability::DacReadSearch, false, "monitoring other users' processes: their pagemap"),
    (Capability::SysAdmin, false, "mounting tracefs; PFN self-check via pagemap"),
];

pub fn rows(facts: &Facts) -> Vec<Row> {
    let mut rows = vec![root()];
    rows.extend(CAPABILITIES.iter().map(|&(cap, required, if_missing)| {
        Row::new(cap.name(), required, if_missing).present_if(
            facts.caps.has(cap),
            if facts.caps.has(cap) { "effective" } else { "not effective" },
        )
    }));
    rows.push(kernel_version());
    rows.push(btf(facts));
    rows.push(tracefs_row(facts));
    rows.push(lockdown());
    rows.push(process_madvise());
    rows.push(memlock());
    rows.push(transparent_hugepages());
    rows.push(memory_pressure());
    rows.push(kdamond());
    rows.push(kernel_damon());
    rows
}

fn root() -> Row {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let row = Row::new("running as root", false, "nothing if the capabilities below are granted");
    if euid == 0 {
        row.ok("euid 0")
    } else {
        row.warn(format!("euid {euid}: the capabilities below decide"))
    }
}

fn kernel_version() -> Row {
    let row = Row::new("kernel version", true, "all monitoring: bpf_loop (5.17)");
    match (kernel::release(), KernelVersion::current()) {
        (Some(release), Some(version)) => {
            row.present_if(version >= MIN_KERNEL, format!("{release} (needs >= {MIN_KERNEL})"))
        }
        (release, _) => {
            row.missing(format!("cannot read the version ({})", release.unwrap_or_default()))
        }
    }
}

fn btf(facts: &Facts) -> Row {
    let row = Row::new(kernel::BTF_VMLINUX, true, "all monitoring: struct offsets");
    let mib = |size: u64| size as f64 / (1 << 20) as f64;
    match (&facts.btf, &facts.types) {
        (Err(err), _) | (_, Some(Err(err))) => row.missing(err.clone()),
        (Ok(size), Some(Ok(_))) => row.ok(format!("parsed, {:.1} MiB", mib(*size))),
        (Ok(size), None) => row.ok(format!("readable, {:.1} MiB", mib(*size))),
    }
}

fn tracefs_row(facts: &Facts) -> Row {
    let row = Row::new("tracefs", false, "page-fault hints (tracepoints)");
    match &facts.tracefs {
        Ok(tracefs::Mount::Found(path)) => row.ok(format!("mounted at {path}")),
        Ok(tracefs::Mount::MountedNow(path)) => {
            row.ok(format!("was not mounted; udamon mounted it at {path}"))
        }
        Err(err) => row.missing(err.clone()),
    }
}

fn lockdown() -> Row {
    let row = Row::new("lockdown", true, "all monitoring: bpf_probe_read_kernel");
    match lockdown_mode() {
        Some(mode) if mode == "confidentiality" => {
            row.missing("confidentiality: the kernel refuses reads of kernel memory from BPF")
        }
        Some(mode) if mode == "integrity" => row.ok("integrity (fentry/fexit may be refused)"),
        Some(mode) => row.ok(mode),
        None => row.ok("not built in, or securityfs unavailable: assuming none"),
    }
}

/// The kernel lockdown mode, reading securityfs where it is mounted or from a private mount.
fn lockdown_mode() -> Option<String> {
    const STANDARD: &str = "/sys/kernel/security/lockdown";
    let text = fs::read_to_string(STANDARD).ok().or_else(|| {
        let dir = std::env::temp_dir().join(format!("udamon-securityfs-{}", std::process::id()));
        fs::create_dir(&dir).ok()?;
        let text = with_mount("securityfs", &dir, || fs::read_to_string(dir.join("lockdown")).ok());
        let _ = fs::remove_dir(&dir);
        text
    })?;
    kernel::bracketed_choice(&text).map(str::to_owned)
}

/// Mounts a `fstype` instance at `dir` for the duration of `read`.
fn with_mount<T>(
    fstype: &str,
    dir: &std::path::Path,
    read: impl FnOnce() -> Option<T>,
) -> Option<T> {
    let fstype = CString::new(fstype).ok()?;
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    if unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, ptr::null()) }
        != 0
    {
        return None;
    }
    let value = read();
    // SAFETY: unmounting what was just mounted.
    unsafe { libc::umount(target.as_ptr()) };
    value
}

/// Clears the accessed bit of a page of our own through a pidfd: the syscall path the sampler uses.
fn process_madvise() -> Row {
    let row =
        Row::new("process_madvise(MADV_COLD)", true, "all monitoring: clearing accessed bits");
    let cleared = AnonMapping::new(1).and_then(|page| {
        page.touch(0);
        PidFd::open(std::process::id())?.madvise_cold(&[page.iovec()])
    });
    match cleared {
        Ok(_) => row.ok("works on a page of our own"),
        Err(err) => row.missing(err.to_string()),
    }
}

fn memlock() -> Row {
    let row = Row::new("RLIMIT_MEMLOCK", true, "BPF maps on kernels before 5.11");
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    let current = if limit.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        format!("{} KiB", limit.rlim_cur / 1024)
    };
    if KernelVersion::current().is_some_and(|v| v >= MEMCG_BPF_ACCOUNTING) {
        return row.ok(format!("{current}; unused: BPF memory is memcg-charged"));
    }
    match ensure_memlock() {
        Ok(()) => row.ok(format!("{current}; udamon raises it to unlimited at start")),
        Err(err) => row.missing(format!("{err:#}")),
    }
}

fn transparent_hugepages() -> Row {
    let row = Row::new("transparent huge pages", false, "nothing (informational)");
    match fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
        Ok(text) => row.ok(format!(
            "{}: huge pages are cleared whole, never split",
            kernel::bracketed_choice(&text).unwrap_or("?")
        )),
        Err(_) => row.ok("not built in"),
    }
}

/// Clears hurry pages towards reclaim; under memory pressure they back off, which needs PSI.
fn memory_pressure() -> Row {
    let row = Row::new("memory pressure (PSI)", false, "clears never back off under pressure");
    let system = std::path::Path::new("/proc/pressure/memory");
    match crate::sys::pressure::some_avg10(system) {
        Some(now) => row.ok(format!(
            "{now:.1} % now (system); clears back off from {} % (--reclaim-backoff)",
            crate::monitor::DEFAULT_RECLAIM_BACKOFF
        )),
        None => row.missing("no /proc/pressure/memory (kernel without PSI, or psi=0)"),
    }
}

/// Kernel DAMON threads also clear accessed bits of the pages they sample.
fn kdamond() -> Row {
    let row = Row::new("kernel DAMON (kdamond)", false, "nothing (informational)");
    let running: Vec<String> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            comm.starts_with("kdamond").then(|| format!("{} (pid {pid})", comm.trim()))
        })
        .collect();
    if running.is_empty() {
        row.ok("none running")
    } else {
        row.warn(format!("{}: clears accessed bits too; rare false idles", running.join(", ")))
    }
}

/// What `udamon kdamond` can observe: DAMON's sysfs, its tracepoints, and the kdamonds there.
fn kernel_damon() -> Row {
    use crate::sys::{damon_sysfs, tracefs};
    let row = Row::new("kernel DAMON to observe", false, "`udamon kdamond` cannot run");
    if !damon_sysfs::present() {
        return row
            .missing(format!("no {} (kernel without CONFIG_DAMON_SYSFS)", damon_sysfs::ADMIN));
    }
    let events = tracefs::find().map(damon_sysfs::tracepoints).unwrap_or_default();
    if !events.iter().any(|e| e == "damon_aggregated") {
        return row.missing("no damon:damon_aggregated tracepoint");
    }
    let kdamonds: Vec<String> = damon_sysfs::kdamonds()
        .into_iter()
        .filter_map(|k| {
            let ops = k.context.map(|c| c.ops).unwrap_or_default();
            Some(format!("kdamond {} {ops} (pid {})", k.index, k.pid?))
        })
        .collect();
    let running = if kdamonds.is_empty() { "none running".to_owned() } else { kdamonds.join(", ") };
    row.ok(format!("{running}; tracepoints: {}", events.join(", ")))
}
