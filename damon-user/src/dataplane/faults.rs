//! The page-fault stream: every fault of the target processes, from the `page_fault_user`
//! tracepoint through a BPF ring buffer.

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use bytes::Buf as _;
use damon_common::{FaultRecord, names, page_fault_user};

use super::object::take_map;
use crate::sys::tracefs;

pub struct FaultStream {
    targets: HashMap<MapData, u32, u8>,
    events: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// Keeps the program attached.
    _object: Arc<Ebpf>,
}

/// The fault stream's maps, taken from the object once its program is attached.
pub(crate) struct FaultMaps {
    targets: HashMap<MapData, u32, u8>,
    events: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

/// Attaches the page-fault program to its tracepoint (mounting tracefs if need be) and takes
/// its maps.
pub(crate) fn attach(bpf: &mut Ebpf) -> Result<FaultMaps> {
    let tracefs = tracefs::ensure_mounted()?.path();
    check_layout(tracefs)?;
    let program: &mut TracePoint = bpf
        .program_mut(names::PAGE_FAULT_USER)
        .context("eBPF object has no page_fault_user program")?
        .try_into()?;
    super::refused::load(program.load(), names::PAGE_FAULT_USER, "the page-fault program")?;
    program
        .attach(page_fault_user::CATEGORY, page_fault_user::NAME)
        .context("cannot attach to exceptions:page_fault_user")?;
    Ok(FaultMaps {
        targets: HashMap::try_from(take_map(bpf, names::FAULT_TARGETS)?)?,
        events: RingBuf::try_from(take_map(bpf, names::FAULT_EVENTS)?)?,
        lost: PerCpuArray::try_from(take_map(bpf, names::FAULT_LOST)?)?,
    })
}

impl FaultMaps {
    pub fn into_stream(self, object: Arc<Ebpf>) -> FaultStream {
        FaultStream { targets: self.targets, events: self.events, lost: self.lost, _object: object }
    }
}

impl FaultStream {
    /// Starts reporting faults of process `tgid`.
    pub fn add_target(&mut self, tgid: u32) -> Result<()> {
        self.targets
            .insert(tgid, 0, 0)
            .with_context(|| format!("cannot add process {tgid} to the fault filter"))
    }

    /// Stops reporting faults of process `tgid`; records already in the ring stay there.
    pub fn remove_target(&mut self, tgid: u32) -> Result<()> {
        self.targets
            .remove(&tgid)
            .with_context(|| format!("cannot remove process {tgid} from the fault filter"))
    }

    /// Hands every record waiting in the ring buffer to `each`; returns how many there were.
    pub fn drain(&mut self, mut each: impl FnMut(FaultRecord)) -> usize {
        let mut count = 0;
        while let Some(item) = self.events.next() {
            if let Some(record) = parse_record(&item) {
                each(record);
                count += 1;
            }
        }
        count
    }

    /// Records dropped so far because the ring buffer was full.
    pub fn lost(&self) -> Result<u64> {
        let per_cpu = self.lost.get(&0, 0).context("cannot read the fault-loss counter")?;
        Ok(per_cpu.iter().sum())
    }
}

/// A `FaultRecord` from a ring item (native byte order); `None` if short.
fn parse_record(mut bytes: &[u8]) -> Option<FaultRecord> {
    if bytes.len() < size_of::<FaultRecord>() {
        return None;
    }
    let (addr, error_code, tgid) = (bytes.get_u64_ne(), bytes.get_u64_ne(), bytes.get_u32_ne());
    Some(FaultRecord { addr, error_code, tgid, _pad: 0 })
}

/// The eBPF program reads the tracepoint's fields at fixed offsets; refuse a kernel that moved them.
fn check_layout(tracefs: &str) -> Result<()> {
    use page_fault_user::{ADDRESS_OFFSET, CATEGORY, ERROR_CODE_OFFSET, NAME};
    for (field, expected) in [("address", ADDRESS_OFFSET), ("error_code", ERROR_CODE_OFFSET)] {
        let found = tracefs::field_offset(tracefs, CATEGORY, NAME, field)?;
        if found != expected {
            bail!("{CATEGORY}:{NAME} has `{field}` at offset {found}, udamon expects {expected}");
        }
    }
    Ok(())
}

/// The ring buffer's descriptor: readable when records wait (for tokio's `AsyncFd`).
impl AsRawFd for FaultStream {
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}
