//! The kernel's DAMON sysfs interface, read only: which kdamonds run, with what operations and
//! intervals. Reads are rare on purpose: `state` and `pid` take the interface's lock with a
//! trylock, so a read racing its owner's write makes that write fail with EBUSY.

use std::{fs, io, path::Path};

pub const ADMIN: &str = "/sys/kernel/mm/damon/admin";

/// One kdamond of `ADMIN/kdamonds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kdamond {
    /// Its directory's number.
    pub index: u32,
    /// The thread, when it runs.
    pub pid: Option<u32>,
    /// Its first context (kernels have at most one per kdamond).
    pub context: Option<Context>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// `vaddr`, `fvaddr` or `paddr`.
    pub ops: String,
    /// As written by the owner (auto-tuning changes the live ones; the observer reads those).
    pub sample_us: u64,
    pub aggr_us: u64,
    pub update_us: u64,
    pub max_nr_regions: u64,
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map(|s| s.trim().to_owned())
}

fn number(path: &Path) -> Option<u64> {
    read(path).ok()?.parse().ok()
}

/// Whether this kernel has DAMON's sysfs interface.
pub fn present() -> bool {
    Path::new(ADMIN).is_dir()
}

/// The kdamonds, in index order; empty without the interface.
pub fn kdamonds() -> Vec<Kdamond> {
    let dir = Path::new(ADMIN).join("kdamonds");
    let count = number(&dir.join("nr_kdamonds")).unwrap_or(0);
    (0..count as u32)
        .map(|index| {
            let k = dir.join(index.to_string());
            let pid = number(&k.join("pid")).filter(|&p| p > 0).map(|p| p as u32);
            let c = k.join("contexts/0");
            let context = c.is_dir().then(|| {
                let attrs = c.join("monitoring_attrs");
                let n = |p: &str| number(&attrs.join(p)).unwrap_or(0);
                Context {
                    ops: read(&c.join("operations")).unwrap_or_default(),
                    sample_us: n("intervals/sample_us"),
                    aggr_us: n("intervals/aggr_us"),
                    update_us: n("intervals/update_us"),
                    max_nr_regions: n("nr_regions/max"),
                }
            });
            Kdamond { index, pid, context }
        })
        .collect()
}

/// The kdamonds (their directories' numbers) with a vaddr or fvaddr context set to monitor
/// `pid`, when any kdamond runs: the kernel's own monitor would clear the accessed bits udamon
/// reads, and the other way round. Reads only what the interface serves without its lock
/// (`operations`, `pid_target`, directory listings), so it never disturbs the kdamonds' owner;
/// whether one runs comes from the kernel threads' names, not `state`.
pub fn vaddr_monitoring(pid: u32) -> Vec<u32> {
    let dir = Path::new(ADMIN).join("kdamonds");
    let entries = fs::read_dir(&dir).into_iter().flatten().flatten();
    let mut found: Vec<u32> = entries
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|k: &u32| {
            let context = dir.join(k.to_string()).join("contexts/0");
            let targets = fs::read_dir(context.join("targets")).into_iter().flatten().flatten();
            matches!(read(&context.join("operations")).as_deref(), Ok("vaddr" | "fvaddr")) && {
                targets
            }
            .any(|t| number(&t.path().join("pid_target")) == Some(pid.into()))
        })
        .collect();
    if found.is_empty() || !kdamond_runs() {
        return Vec::new();
    }
    found.sort_unstable();
    found
}

/// Whether a kdamond thread exists.
fn kdamond_runs() -> bool {
    let tasks = fs::read_dir("/proc").into_iter().flatten().flatten();
    { tasks }.any(|t| read(&t.path().join("comm")).is_ok_and(|c| c.starts_with("kdamond")))
}

/// The DAMON tracepoints this kernel has (tracefs mounted at `tracefs`).
pub fn tracepoints(tracefs: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(format!("{tracefs}/events/damon"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}
