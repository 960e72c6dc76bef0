//! The vaddr operations on processes.
//!
//! Each sample interval takes one walk for every target together (the addresses checked now and
//! those chosen for the next interval), then, per target with any, one call that clears the
//! newly chosen pages that are marked accessed: whole pages, 2 MiB for a huge page, which is
//! therefore never split. Idle pages need no clearing, which keeps idle memory cheap: a target
//! none of whose new pages is accessed costs no system call of its own.
//!
//! Mappings whose accessed bits `MADV_COLD` refuses to clear (locked, hugetlb, PFN-mapped:
//! smaps' `VmFlags`) are never cleared: a clear accessed bit there still proves idleness, a set
//! one says nothing, so it reads unknown. A mapping that becomes locked while monitored is found
//! by the refusal of its clear, which re-reads the flags.
//!
//! Each clear deactivates the page (`MADV_COLD`), so a page touched before a sample and idle
//! since goes to reclaim sooner. Under memory pressure (PSI of the target's cgroup, or of the
//! system) above the backoff threshold, only one in `CLEAR_ONE_IN` accessed pages is cleared;
//! the others read unknown at their next check.
//!
//! A failure that is not an exit (an unexplained refusal, a failed call or map) ends nothing: it
//! is kept as a problem for the monitor to report, and the samples it cost read unknown.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use damon_engine::{
    Access, NO_PREPARE, Operations, Target,
    schemes::{Action, Applied, Filter, Metric, Scheme},
};

use super::{actions, regions};
use crate::{
    dataplane::{
        AddressSpace, DataPlane, DataPlaneError, Walker,
        leaf::Leaf,
        walker::{Refusal, Request},
    },
    monitor::{OpsStats, Problem, Source, TargetError},
    sys::{
        claim::{self, Claim, Refused},
        damon_sysfs, memory,
        pidfd::PidFd,
        pressure,
        proc_maps::{self, Mapping},
        process,
    },
};

/// A process may move to another group, and the group its pressure is read from with it; it is
/// looked up again every this many updates (a file read per target otherwise).
const PRESSURE_SOURCE_UPDATES: u64 = 10;

/// Under memory pressure, one accessed page in this many is cleared.
pub const CLEAR_ONE_IN: u64 = 16;

/// A monitored process.
struct Process {
    pidfd: PidFd,
    /// This udamon's claim on the process; none where claims cannot be made (no /run).
    _claim: Option<Claim>,
    /// What the walker walks; replaced when an exec replaces it.
    space: AddressSpace,
    /// With their flags (from smaps), re-read when the layout changes or a clear is refused.
    mappings: Vec<Mapping>,
    /// Sampling addresses prepared without a clear (their accessed bit stays set), until their
    /// check.
    uncleared: HashSet<u64>,
    exited: bool,
    /// Where its memory pressure is read, whether it is above the threshold, and the clears
    /// withheld for it.
    pressure: Option<PathBuf>,
    backing_off: bool,
    withheld: u64,
}

impl Process {
    fn mapping(&self, addr: u64) -> Option<&Mapping> {
        proc_maps::find(&self.mappings, addr)
    }

    /// The range to clear for the accessed page at `addr`, or `None` if none may be: one the
    /// kernel refuses, a read-only page of a file (page cache shared with other processes), or
    /// no range that keeps its folio whole inside its mapping.
    fn clear_range(&self, addr: u64, leaf: Leaf) -> Option<(u64, u64)> {
        let mapping = self.mapping(addr);
        if !clearable(mapping) || mapping.is_some_and(|m| m.file && !leaf.writable()) {
            return None;
        }
        let (start, len) = leaf.clear_range(addr)?;
        mapping.is_none_or(|m| m.start <= start && start + len <= m.end).then_some((start, len))
    }
}

pub struct VaddrOps {
    walker: Walker,
    processes: HashMap<u64, Process>,
    /// Problems since the monitor last asked, per (pid, kind): the first message and a count.
    problems: HashMap<(u32, &'static str), (String, u64)>,
    /// This tick's addresses, every target's in turn (its checked ones first), what the walker
    /// is asked for them, and what it found.
    addrs: Vec<u64>,
    request: Request,
    leaves: Vec<Leaf>,
    /// Per target in this tick's walk: which of the above are its.
    spans: Vec<Span>,
    /// Per address above: whether it was left uncleared when prepared.
    uncleared: Vec<bool>,
    pages: Vec<(u64, u64)>,
    refused: Vec<Refusal>,
    /// Memory pressure (PSI "some", %) from which clears back off; `None`: never.
    backoff: Option<f64>,
    /// Clears withheld for targets since closed.
    withheld_closed: u64,
    /// Updates so far: a target's pressure source is looked up again every
    /// `PRESSURE_SOURCE_UPDATES`.
    updates: u64,
    actions: actions::Scratch,
}

impl VaddrOps {
    pub fn new(walker: Walker) -> Self {
        Self {
            walker,
            backoff: None,
            withheld_closed: 0,
            updates: 0,
            actions: actions::Scratch::default(),
            processes: HashMap::new(),
            problems: HashMap::new(),
            addrs: Vec::new(),
            request: Request::default(),
            leaves: Vec::new(),
            spans: Vec::new(),
            uncleared: Vec::new(),
            pages: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Clears back off from this memory pressure (PSI "some avg10", in percent) on.
    pub fn with_backoff(mut self, threshold: Option<f64>) -> Self {
        self.backoff = threshold;
        self
    }

    /// Loads the data plane (without the fault stream) for operations of their own.
    pub fn load() -> Result<Self> {
        let (walker, _) = DataPlane::load()?.start(false)?;
        Ok(Self::new(walker))
    }

    pub fn walker(&self) -> &Walker {
        &self.walker
    }

    fn note(&mut self, pid: u64, kind: &'static str, message: impl FnOnce() -> String) {
        match self.problems.entry((pid as u32, kind)) {
            Entry::Occupied(mut seen) => seen.get_mut().1 += 1,
            Entry::Vacant(new) => {
                new.insert((message(), 1));
            }
        }
    }

    fn note_error(&mut self, pid: u64, err: &DataPlaneError) {
        self.note(pid, err.kind(), || err.to_string());
    }

    /// The kernel refused clears in `self.refused`: re-reads the mappings' flags (a mapping may
    /// have been locked since), and reports the refusals they do not explain.
    fn explain_refusals(&mut self, pid: u64) {
        let refused = std::mem::take(&mut self.refused);
        let Some(process) = self.processes.get_mut(&pid) else { return };
        if let Ok(mappings) = proc_maps::read_with_flags(pid as u32) {
            process.mappings = mappings;
        }
        let mut unexplained = Vec::new();
        for r in refused {
            let mapping = process.mappings.iter_mut().find(|m| (m.start..m.end).contains(&r.addr));
            if let Some(mapping) = mapping.filter(|m| m.clearable()) {
                mapping.refused = true;
                unexplained.push(r);
            }
        }
        for refusal in unexplained {
            self.note_error(pid, &refusal.into());
        }
    }

    /// Regions for `target` from its mappings; memory the clear refuses gets regions of its
    /// own, so its unknown samples never dilute (or are diluted by) the rest.
    fn fit(process: &Process, target: &mut Target) -> Result<()> {
        let spans: Vec<(u64, u64)> = process.mappings.iter().map(|m| (m.start, m.end)).collect();
        let apart: Vec<(u64, u64)> =
            process.mappings.iter().filter(|m| !m.clearable()).map(|m| (m.start, m.end)).collect();
        regions::fit(&mut target.regions, &spans, &apart)
    }

    /// What a walked leaf says about an access. A set accessed bit is trusted only on a page the
    /// clears can reset: a private writable page is the process's own; anything else is asked
    /// of pagemap.
    fn classify(process: &Process, addr: u64, leaf: Leaf, uncleared: bool) -> Access {
        match leaf {
            Leaf::Missing | Leaf::Fault | Leaf::Gone => Access::Unknown,
            _ if !leaf.accessed() => Access::Idle,
            // Set, and nothing reset it: it says nothing about this interval.
            _ if uncleared => Access::Unknown,
            _ => {
                let mapping = process.mapping(addr);
                if !clearable(mapping) {
                    return Access::Unknown;
                }
                let shared = mapping.is_none_or(|m| m.shared);
                if (leaf.writable() && !shared)
                    || process.space.pagemap().exclusive(addr).unwrap_or(false)
                {
                    Access::Accessed
                } else {
                    Access::Unknown
                }
            }
        }
    }

    /// Walks every target's current sampling addresses (the check, into `results`) and/or
    /// `next` (chosen for the coming interval, then cleared) in one go, then clears per target.
    fn sample(
        &mut self,
        targets: &[Target],
        next: Option<&[u64]>,
        mut results: Option<&mut [Access]>,
    ) {
        self.request(targets, next, results.as_deref_mut());
        let walked = self.walker.walk(&self.request, &mut self.leaves);
        if let Err(err) = &walked {
            self.leaves.clear();
            self.leaves.resize(self.request.len(), Leaf::Missing);
            for id in self.spans.iter().map(|s| s.id).collect::<Vec<_>>() {
                self.note_error(id, err);
            }
        }
        for k in 0..self.spans.len() {
            let span = self.spans[k].clone();
            self.finish(&span, results.as_deref_mut());
        }
    }

    /// This tick's walk request: for each target with a region due, its checked addresses
    /// (its regions' own, then its pairs' second pages), then those to prepare (with their
    /// pairs' second pages).
    fn request(
        &mut self,
        targets: &[Target],
        next: Option<&[u64]>,
        mut results: Option<&mut [Access]>,
    ) {
        self.addrs.clear();
        self.request.clear();
        self.uncleared.clear();
        self.spans.clear();
        let mut offset = 0;
        // Pairs' second pages have their slots after every region's.
        let mut partner_slot = targets.iter().map(|t| t.regions.len()).sum::<usize>();
        for target in targets {
            let regions = offset..offset + target.regions.len();
            offset = regions.end;
            let start = self.addrs.len();
            let mut partners = partner_slot..partner_slot;
            if let Some(out) = results.as_deref() {
                let due = target.regions.iter().zip(&out[regions.clone()]);
                let due = due.filter(|(_, a)| **a != Access::NotChecked).map(|(r, _)| r);
                self.addrs.extend(due.clone().map(|r| r.sampling_addr));
                let before = self.addrs.len();
                self.addrs.extend(due.filter_map(|r| r.partner_of(r.sampling_addr)));
                partner_slot += self.addrs.len() - before;
                partners.end = partner_slot;
            }
            let checks = self.addrs.len() - start;
            if let Some(next) = next {
                let prepared = target.regions.iter().zip(&next[regions.clone()]);
                let prepared = prepared.filter(|(_, a)| **a != NO_PREPARE);
                self.addrs
                    .extend(prepared.flat_map(|(r, &a)| std::iter::once(a).chain(r.partner_of(a))));
            }
            let Some(process) = self.processes.get_mut(&target.id) else {
                self.addrs.truncate(start);
                continue;
            };
            if process.exited {
                // Gone between checks: nothing was accessed; the engine drops it at aggregation.
                if let Some(out) = results.as_deref_mut() {
                    checked_slots(&mut out[regions]).for_each(|a| *a = Access::Idle);
                    out[partners].fill(Access::Idle);
                }
                self.addrs.truncate(start);
                continue;
            }
            if self.addrs.len() == start {
                continue;
            }
            // Whether each checked page was left uncleared when prepared: taken now, before
            // this walk prepares (and may leave uncleared) the next ones.
            let addrs = &self.addrs[start..];
            self.uncleared.extend(addrs[..checks].iter().map(|a| process.uncleared.remove(a)));
            self.uncleared.resize(self.addrs.len(), false);
            self.request.space(&process.space);
            addrs.iter().enumerate().for_each(|(k, &a)| self.request.push(a, k >= checks));
            self.spans.push(Span {
                id: target.id,
                regions,
                partners,
                addrs: start..self.addrs.len(),
                checks,
            });
        }
    }

    /// One target's part of the tick after the walk: its clears, and its checks' results
    /// (into its slots of `results`).
    fn finish(&mut self, span: &Span, results: Option<&mut [Access]>) {
        let Some(process) = self.processes.get_mut(&span.id) else { return };
        let (addrs, leaves) = (&self.addrs[span.addrs.clone()], &self.leaves[span.addrs.clone()]);
        if leaves.contains(&Leaf::Gone) {
            self.address_space_gone(span.id);
            let Some(process) = self.processes.get_mut(&span.id) else { return };
            // This tick's new samples were never cleared: their first check cannot trust a set
            // bit.
            process.uncleared.extend(&self.addrs[span.addrs.start + span.checks..span.addrs.end]);
            if let Some(out) = results {
                let read = if process.exited { Access::Idle } else { Access::Unknown };
                span.slots(out).for_each(|a| *a = read);
            }
            return;
        }
        self.refused.clear();
        let cleared = clear(
            &mut self.walker,
            process,
            (&addrs[span.checks..], &leaves[span.checks..]),
            (&mut self.pages, &mut self.refused),
        );
        if let Some(out) = results {
            let uncleared = &self.uncleared[span.addrs.clone()];
            let checked = addrs.iter().zip(leaves).zip(uncleared);
            for (slot, ((&addr, &leaf), &uncleared)) in span.slots(out).zip(checked) {
                *slot = Self::classify(process, addr, leaf, uncleared);
            }
        }
        let unread = |kind| leaves.iter().filter(|&&l| l == kind).count();
        let (failed, missing) = (unread(Leaf::Fault), unread(Leaf::Missing));
        let id = span.id;
        if failed > 0 {
            self.note(id, "walk_failed", || {
                format!("{failed} page-table reads failed in one walk; their samples read unknown")
            });
        }
        if missing > 0 {
            self.note(id, "walk_incomplete", || {
                format!("the walk returned no result for {missing} addresses; their samples read unknown")
            });
        }
        match cleared {
            Ok(()) => {}
            Err(DataPlaneError::Exited) => {
                if let Some(process) = self.processes.get_mut(&id) {
                    process.exited = true;
                }
            }
            Err(err) => self.note_error(id, &err),
        }
        if !self.refused.is_empty() {
            self.explain_refusals(id);
        }
    }

    /// The walker found a target's address space without users: it exited, or an exec
    /// replaced the address space, which is then opened anew.
    /// After a layout change: whether the process moved to another address space, which it
    /// then walks. An exec shows as a walk of an `mm` without users, unless another process
    /// shares that `mm` (a vfork child opened before its exec shares its parent's until then).
    fn moved(walker: &Walker, process: &mut Process, pid: u32) -> bool {
        match walker.address_space(pid) {
            Ok(space) if space.mm() != process.space.mm() => {
                process.space = space;
                true
            }
            _ => false,
        }
    }

    fn address_space_gone(&mut self, id: u64) {
        let Some(process) = self.processes.get_mut(&id) else { return };
        process.exited |= process.pidfd.exited();
        if process.exited {
            return;
        }
        match self.walker.address_space(id as u32) {
            Ok(space) => {
                process.space = space;
                process.uncleared.clear();
                if let Ok(mappings) = proc_maps::read_with_flags(id as u32) {
                    process.mappings = mappings;
                }
            }
            // On its way out (no address space to open): its pidfd will say so.
            Err(err) if crate::sys::io_errno(&err) == Some(libc::ESRCH) => {}
            Err(err) => self.note(id, "address_space", || format!("{err:#}")),
        }
    }
}

/// Whether the clear may be asked for an address in `mapping` (an address in no known mapping
/// may be a new one: asking costs nothing, the kernel says ENOMEM).
fn clearable(mapping: Option<&Mapping>) -> bool {
    mapping.is_none_or(Mapping::clearable)
}

/// One target's share of a tick's walk.
#[derive(Clone)]
struct Span {
    id: u64,
    /// Its regions, in the engine's flat order, and its pairs' second pages checked now, in
    /// the slots after every region's.
    regions: std::ops::Range<usize>,
    partners: std::ops::Range<usize>,
    /// Its addresses in the walk; the first `checks` are checked, the rest prepared.
    addrs: std::ops::Range<usize>,
    checks: usize,
}

impl Span {
    /// Its slots of `results` checked now, in the order of its checked addresses.
    fn slots<'a>(&self, results: &'a mut [Access]) -> impl Iterator<Item = &'a mut Access> {
        let (own, rest) = results.split_at_mut(self.regions.end);
        let partners =
            &mut rest[self.partners.start - self.regions.end..self.partners.end - self.regions.end];
        checked_slots(&mut own[self.regions.clone()]).chain(partners.iter_mut())
    }
}

/// The slots of regions checked now.
fn checked_slots(out: &mut [Access]) -> impl Iterator<Item = &mut Access> {
    out.iter_mut().filter(|a| **a != Access::NotChecked)
}

/// Clears the accessed pages among the prepared `addrs` (walked into `leaves`), each over the
/// range that splits nothing: a huge page or a large folio whole. A page no range can be
/// cleared for, or that should not be cleared (a shared library's page: clearing it would cool
/// it for every process), is left set and remembered, so its next check reads unknown; so is
/// one the walk did not read.
fn clear(
    walker: &mut Walker,
    process: &mut Process,
    (addrs, leaves): (&[u64], &[Leaf]),
    (pages, refused): (&mut Vec<(u64, u64)>, &mut Vec<Refusal>),
) -> Result<(), DataPlaneError> {
    pages.clear();
    let mut candidates = 0u64;
    for (&addr, leaf) in addrs.iter().zip(leaves) {
        process.uncleared.remove(&addr);
        // Not read: its bit may be set and is not cleared, so its check must not trust it.
        if matches!(leaf, Leaf::Missing | Leaf::Fault | Leaf::Gone) {
            process.uncleared.insert(addr);
            continue;
        }
        if !leaf.accessed() {
            continue;
        }
        let range = process.clear_range(addr, *leaf);
        candidates += range.is_some() as u64;
        let withhold = process.backing_off && !candidates.is_multiple_of(CLEAR_ONE_IN);
        match range {
            Some(range) if !withhold => pages.push(range),
            _ => {
                process.withheld += withhold as u64;
                process.uncleared.insert(addr);
            }
        }
    }
    if pages.is_empty() {
        return Ok(());
    }
    walker.clear(&process.pidfd, pages, refused)
}

/// Refuses what a pid cannot be monitored as, before trying: none the kernel gives out (0,
/// beyond pid_max), udamon itself, or a thread rather than a process.
fn identify(pid: u32) -> Result<(), TargetError> {
    if !process::possible(pid) {
        return Err(TargetError::NoSuchProcess(pid));
    }
    match process::thread_group(pid) {
        Some(group) if group == std::process::id() => Err(TargetError::Itself(pid)),
        Some(group) if group != pid => Err(TargetError::Thread(pid, group)),
        _ => Ok(()),
    }
}

impl Source for VaddrOps {
    fn open(&mut self, pid: u32) -> Result<Target, TargetError> {
        identify(pid)?;
        let pidfd = PidFd::open(pid).map_err(|err| match err.raw_os_error() {
            Some(libc::ESRCH) => TargetError::NoSuchProcess(pid),
            Some(libc::EPERM | libc::EACCES) => TargetError::Denied(pid, err),
            _ => TargetError::Other(pid, err.into()),
        })?;
        let denied_or = |err: anyhow::Error, other: fn(u32, anyhow::Error) -> TargetError| match err
            .downcast_ref::<std::io::Error>()
        {
            Some(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                TargetError::Denied(pid, std::io::Error::from(io.kind()))
            }
            _ => other(pid, err),
        };
        let mappings = proc_maps::read_with_flags(pid).map_err(|err| {
            if pidfd.exited() {
                TargetError::Exited(pid)
            } else {
                denied_or(err, TargetError::Other)
            }
        })?;
        if mappings.is_empty() {
            // A zombie, or a process whose exit has released its memory, has none either.
            return Err(if process::is_kernel_thread(pid) == Some(true) {
                TargetError::KernelThread(pid)
            } else {
                TargetError::Exited(pid)
            });
        }
        let space = self.walker.address_space(pid).map_err(|err| {
            // ESRCH: its exit released the address space after the maps were read.
            if pidfd.exited() || crate::sys::io_errno(&err) == Some(libc::ESRCH) {
                TargetError::Exited(pid)
            } else {
                denied_or(err, TargetError::Other)
            }
        })?;
        let claim = match claim::claim(pid) {
            Ok(claim) => Some(claim),
            Err(Refused::Held(holder)) => return Err(TargetError::Claimed(pid, holder)),
            Err(Refused::Io(_)) => None,
        };
        let process = Process {
            pidfd,
            _claim: claim,
            space,
            mappings,
            uncleared: HashSet::new(),
            exited: false,
            pressure: self.backoff.and_then(|_| pressure::source(pid)),
            backing_off: false,
            withheld: 0,
        };
        self.processes.insert(pid as u64, process);
        let kernel = damon_sysfs::vaddr_monitoring(pid);
        if !kernel.is_empty() {
            self.note(pid.into(), "kernel_damon", || {
                format!("the kernel's DAMON monitors it too (kdamonds {kernel:?}): both clear its accessed bits and both read too cold")
            });
        }
        Ok(Target::new(pid as u64))
    }

    fn close(&mut self, pid: u32) {
        if let Some(process) = self.processes.remove(&(pid as u64)) {
            self.withheld_closed += process.withheld;
        }
        self.problems.retain(|&(p, _), _| p != pid);
    }

    fn problems(&mut self) -> Vec<Problem> {
        self.problems
            .drain()
            .map(|((pid, kind), (message, count))| Problem { pid, kind, message, count })
            .collect()
    }

    fn poll_exits(&mut self) -> bool {
        let mut any = false;
        for process in self.processes.values_mut().filter(|p| !p.exited) {
            process.exited = process.pidfd.exited();
            any |= process.exited;
        }
        any
    }

    fn stats(&self) -> OpsStats {
        let walk = self.walker.stats().unwrap_or_default();
        let calls = self.walker.call_times();
        OpsStats {
            walk_time: std::time::Duration::from_nanos(walk.nanoseconds),
            walked_addresses: walk.addresses,
            walking: calls.walking,
            clearing: calls.clearing,
            cleared_pages: calls.cleared_pages,
            withheld_clears: self.withheld_closed
                + self.processes.values().map(|p| p.withheld).sum::<u64>(),
        }
    }
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
        // Targets of one group share its pressure file: read once per update.
        let mut pressures: HashMap<PathBuf, Option<f64>> = HashMap::new();
        self.updates += 1;
        let find_pressure = self.updates.is_multiple_of(PRESSURE_SOURCE_UPDATES);
        for target in targets {
            let Some(process) = self.processes.get_mut(&target.id) else { continue };
            let pid = target.id as u32;
            // Entries wait for their check; those of samples dropped unchecked (their regions
            // merged) go, so the set stays as small as the target's regions.
            let mut pending: Vec<u64> = target
                .regions
                .iter()
                .flat_map(|r| std::iter::once(r.sampling_addr).chain(r.partner_of(r.sampling_addr)))
                .collect();
            pending.sort_unstable();
            process.uncleared.retain(|addr| pending.binary_search(addr).is_ok());
            // The new mappings if the layout changed (`None`: as before). Flags are read again
            // only then: smaps costs a page walk.
            let read = proc_maps::read(pid).and_then(|m| {
                if proc_maps::same_layout(&m, &process.mappings) {
                    Ok(None)
                } else {
                    proc_maps::read_with_flags(pid).map(Some)
                }
            });
            if matches!(read, Ok(Some(_))) && Self::moved(&self.walker, process, pid) {
                // Every pending sample was prepared in the old space.
                process.uncleared = pending.iter().copied().collect();
            }
            // Unreadable or empty maps are not an exit by themselves: the pidfd says.
            process.exited |= process.pidfd.exited();
            if let Some(threshold) = self.backoff {
                if find_pressure {
                    process.pressure = pressure::source(pid).or(process.pressure.take());
                }
                let now = process.pressure.as_ref().and_then(|source| {
                    *pressures.entry(source.clone()).or_insert_with(|| pressure::some_avg10(source))
                });
                process.backing_off = now.is_some_and(|p| p >= threshold);
            }
            match read {
                _ if process.exited => {}
                Ok(Some(mappings)) if mappings.is_empty() => {}
                Ok(changed) => {
                    if let Some(mappings) = changed {
                        process.mappings = mappings;
                    }
                    // As the kernel: if the regions cannot be fitted, the target keeps its own.
                    let _ = Self::fit(process, target);
                }
                Err(err) => self.note(target.id, "maps_unreadable", || {
                    format!("{err:#}; its regions keep their last shape")
                }),
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

    /// Without a system call: an exit is seen by the walk (every target is walked at least
    /// once per aggregation, and an exited one's address space has no users), confirmed by the
    /// pidfd, and by every update's look at the pidfd.
    fn target_valid(&mut self, target: &Target) -> bool {
        self.processes.get(&target.id).is_some_and(|p| !p.exited)
    }

    fn apply_scheme(
        &mut self,
        target: &Target,
        range: (u64, u64),
        scheme: &Scheme,
        filters: &[&Filter],
    ) -> Applied {
        let action = scheme.action;
        let Some(process) = self.processes.get_mut(&target.id).filter(|p| !p.exited) else {
            return Applied::default();
        };
        let on = actions::Process {
            pid: target.id as u32,
            pidfd: &process.pidfd,
            space: &process.space,
            mappings: &process.mappings,
        };
        match actions::apply(&mut self.walker, &mut self.actions, &on, range, scheme, filters) {
            Ok(outcome) => {
                // COLLAPSE fails where it cannot make a huge page now (EAGAIN, EINVAL for a
                // mapping it cannot take): an outcome, not a problem.
                let told = outcome
                    .refused
                    .iter()
                    .find(|r| action != Action::Collapse || r.1 == libc::EPERM);
                if let Some(&(addr, errno)) = told {
                    let err = std::io::Error::from_raw_os_error(errno);
                    self.note(target.id, "action_refused", || {
                        format!("the kernel refused {} at {addr:#x}: {err}", action.name())
                    });
                }
                outcome.applied
            }
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {
                process.exited = true;
                Applied::default()
            }
            Err(err) => {
                self.note(target.id, "action_failed", || format!("{}: {err}", action.name()));
                Applied::default()
            }
        }
    }

    fn metric(&mut self, metric: &Metric) -> Option<u64> {
        memory::metric(metric)
    }

    fn free_mem_permil(&mut self) -> Option<u64> {
        memory::free_permil()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_that_cannot_be_monitored_are_named() {
        let me = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid cannot fail.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = wait.recv();
        });
        let tid = rx.recv().unwrap();
        let message = |pid| identify(pid).unwrap_err().to_string();
        assert_eq!(message(me), format!("pid {me} is udamon itself"));
        assert_eq!(message(tid), format!("pid {tid} is udamon itself"));
        drop(done);
        thread.join().unwrap();
        for pid in [0, u32::MAX] {
            assert_eq!(message(pid), format!("no process with pid {pid}"));
        }
        let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        assert!(identify(child.id()).is_ok());
        let _ = child.kill();
        let _ = child.wait();
    }
}
