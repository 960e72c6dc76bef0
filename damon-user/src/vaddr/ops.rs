//! The vaddr operations: processes' virtual address spaces, checked by the eBPF page-table walker
//! and cleared by `process_madvise(MADV_COLD)`.
//!
//! Each sample interval takes two calls per target. The first walks the addresses checked now
//! and those chosen for the next interval (the kernel takes the mmap lock, the walker reads the
//! page tables, the call itself advises nothing). The second clears the newly chosen pages that
//! are marked accessed: whole pages, 2 MiB for a huge page, which is therefore never split.
//! Idle pages need no clearing, which keeps idle memory cheap.

use std::{collections::HashMap, fmt};

use anyhow::{Context as _, Result, bail};

use super::{
    leaf::Leaf,
    maps::{self, Mapping},
    pagemap::Pagemap,
    walker::Walker,
};
use crate::{
    engine::{
        Access, Operations, Target,
        set_regions::{self, PAGE_SIZE},
    },
    pidfd::PidFd,
};

/// A monitored process.
struct Process {
    pidfd: PidFd,
    pagemap: Pagemap,
    mappings: Vec<Mapping>,
    exited: bool,
}

/// Why a pid cannot be monitored: one line for the user.
#[derive(Debug)]
pub enum TargetError {
    NoSuchProcess(u32),
    KernelThread(u32),
    /// It exited (or is exiting) before monitoring began.
    Exited(u32),
    Denied(u32, std::io::Error),
    Other(u32, anyhow::Error),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchProcess(pid) => write!(f, "no process with pid {pid}"),
            Self::KernelThread(pid) => {
                write!(f, "pid {pid} is a kernel thread: it has no address space to monitor")
            }
            Self::Exited(pid) => write!(f, "pid {pid} exited before the first sample"),
            Self::Denied(pid, err) => write!(
                f,
                "cannot monitor pid {pid}: {err} (another user's process needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)"
            ),
            Self::Other(pid, err) => write!(f, "cannot monitor pid {pid}: {err:#}"),
        }
    }
}

impl std::error::Error for TargetError {}

pub struct VaddrOps {
    walker: Walker,
    processes: HashMap<u64, Process>,
    addrs: Vec<u64>,
    leaves: Vec<Leaf>,
    pages: Vec<(u64, u64)>,
}

impl VaddrOps {
    pub fn new(walker: Walker) -> Self {
        Self {
            walker,
            processes: HashMap::new(),
            addrs: Vec::new(),
            leaves: Vec::new(),
            pages: Vec::new(),
        }
    }

    pub fn walker(&self) -> &Walker {
        &self.walker
    }

    /// Starts watching process `pid`; returns its (still empty) engine target.
    pub fn add(&mut self, pid: u32) -> Result<Target, TargetError> {
        let pidfd = PidFd::open(pid).map_err(|err| match err.raw_os_error() {
            Some(libc::ESRCH) => TargetError::NoSuchProcess(pid),
            _ => TargetError::Denied(pid, err),
        })?;
        let mappings =
            maps::read(pid).map_err(|err| match err.downcast_ref::<std::io::Error>() {
                _ if pidfd.exited() => TargetError::Exited(pid),
                Some(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    TargetError::Denied(pid, std::io::Error::from(io.kind()))
                }
                _ => TargetError::Other(pid, err),
            })?;
        if mappings.is_empty() {
            // A zombie has no mappings either.
            let exited = pidfd.exited();
            return Err(if exited {
                TargetError::Exited(pid)
            } else {
                TargetError::KernelThread(pid)
            });
        }
        let pagemap =
            Pagemap::open(pid).map_err(|err| match err.downcast_ref::<std::io::Error>() {
                Some(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    TargetError::Denied(pid, std::io::Error::from(io.kind()))
                }
                _ => TargetError::Other(pid, err),
            })?;
        self.processes.insert(pid as u64, Process { pidfd, pagemap, mappings, exited: false });
        Ok(Target::new(pid as u64))
    }

    /// Forgets process `pid` (after its target left the engine).
    pub fn remove(&mut self, pid: u32) {
        self.processes.remove(&(pid as u64));
    }

    /// Regions for `target` from its mappings: the kernel's three regions around the two biggest
    /// gaps; or, for a process with fewer gaps, one region from its first to its last mapping.
    fn fit(process: &Process, target: &mut Target) -> Result<()> {
        let (Some(first), Some(last)) = (process.mappings.first(), process.mappings.last()) else {
            bail!("no mappings");
        };
        let spans: Vec<(u64, u64)> = process.mappings.iter().map(|m| (m.start, m.end)).collect();
        let ranges = set_regions::three_regions(&spans)
            .map_or_else(|| vec![(first.start, last.end)], |r| r.to_vec());
        set_regions::set_regions(&mut target.regions, &ranges, PAGE_SIZE)
    }

    /// What a walked leaf says about an access. A set accessed bit is trusted only on a page the
    /// clears can reset: a private writable page is the process's own; anything else is asked
    /// of pagemap.
    fn classify(process: &Process, addr: u64, leaf: Leaf) -> Access {
        match leaf {
            Leaf::Missing | Leaf::Fault => Access::Unknown,
            _ if !leaf.accessed() => Access::Idle,
            _ => {
                let shared = maps::find(&process.mappings, addr).is_none_or(|m| m.shared);
                if (leaf.writable() && !shared) || process.pagemap.exclusive(addr).unwrap_or(false)
                {
                    Access::Accessed
                } else {
                    Access::Unknown
                }
            }
        }
    }

    /// Walks, for each target, its regions' current sampling addresses (the check, into
    /// `results`) and/or `next` (chosen for the coming interval, then cleared).
    fn sample(
        &mut self,
        targets: &[Target],
        next: Option<&[u64]>,
        mut results: Option<&mut [Access]>,
    ) {
        let mut offset = 0;
        for target in targets {
            let n = target.regions.len();
            let range = offset..offset + n;
            offset += n;
            let Some(process) = self.processes.get_mut(&target.id) else { continue };
            let outcome = if process.exited {
                Ok(())
            } else {
                self.addrs.clear();
                if results.is_some() {
                    self.addrs.extend(target.regions.iter().map(|r| r.sampling_addr));
                }
                if let Some(next) = next {
                    self.addrs.extend_from_slice(&next[range.clone()]);
                }
                let checked = if results.is_some() { n } else { 0 };
                walk_and_clear(
                    &mut self.walker,
                    process,
                    &self.addrs,
                    checked,
                    &mut self.leaves,
                    &mut self.pages,
                )
            };
            if outcome.is_err() || process.exited {
                // Gone between checks: nothing was accessed; the engine drops it at aggregation.
                process.exited = true;
                if let Some(out) = results.as_deref_mut() {
                    out[range].fill(Access::Idle);
                }
                continue;
            }
            if let Some(out) = results.as_deref_mut() {
                for ((slot, r), &leaf) in
                    out[range].iter_mut().zip(&target.regions).zip(&self.leaves)
                {
                    *slot = Self::classify(process, r.sampling_addr, leaf);
                }
            }
        }
    }
}

/// One target's walk of `addrs`, then the clearing of the accessed pages among them after the
/// first `checked` (those are only checked), in the page sizes the walk found.
fn walk_and_clear(
    walker: &mut Walker,
    process: &Process,
    addrs: &[u64],
    checked: usize,
    leaves: &mut Vec<Leaf>,
    pages: &mut Vec<(u64, u64)>,
) -> Result<()> {
    walker.walk(&process.pidfd, addrs, leaves)?;
    pages.clear();
    pages.extend(
        addrs[checked..]
            .iter()
            .zip(&leaves[checked..])
            .filter(|(_, leaf)| leaf.accessed())
            .filter_map(|(&addr, leaf)| Some((addr, leaf.page_size()?))),
    );
    if pages.is_empty() {
        return Ok(());
    }
    walker.clear(&process.pidfd, pages)
}

impl Operations for VaddrOps {
    fn init(&mut self, targets: &mut [Target]) -> Result<()> {
        for target in targets.iter_mut().filter(|t| t.regions.is_empty()) {
            let process = self.processes.get(&target.id).context("target without a process")?;
            Self::fit(process, target)
                .with_context(|| format!("cannot set regions of pid {}", target.id))?;
        }
        Ok(())
    }

    fn update(&mut self, targets: &mut [Target]) -> Result<()> {
        for target in targets {
            let Some(process) = self.processes.get_mut(&target.id) else { continue };
            match maps::read(target.id as u32) {
                Ok(mappings) if !mappings.is_empty() => {
                    process.mappings = mappings;
                    // As the kernel: if the regions cannot be fitted, the target keeps its own.
                    let _ = Self::fit(process, target);
                }
                _ => process.exited = true,
            }
        }
        Ok(())
    }

    fn prepare_access_checks(&mut self, targets: &[Target], addrs: &[u64]) {
        self.sample(targets, Some(addrs), None);
    }

    fn check_accesses(&mut self, targets: &[Target], results: &mut [Access]) {
        self.sample(targets, None, Some(results));
    }

    fn check_and_prepare(&mut self, targets: &[Target], next: &[u64], results: &mut [Access]) {
        self.sample(targets, Some(next), Some(results));
    }

    fn target_valid(&mut self, target: &Target) -> bool {
        self.processes.get_mut(&target.id).is_some_and(|p| {
            p.exited |= p.pidfd.exited();
            !p.exited
        })
    }
}
