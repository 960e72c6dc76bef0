//! The page-fault stream: every fault of the target processes, from the `page_fault_user`
//! tracepoint through a BPF ring buffer.

use std::os::fd::{AsRawFd, RawFd};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use damon_common::{FaultRecord, page_fault_user};

use crate::{ebpf, tracefs};

pub struct FaultStream {
    targets: HashMap<MapData, u32, u8>,
    events: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// Keeps the program attached.
    _bpf: Ebpf,
}

impl FaultStream {
    /// Loads an eBPF object of its own and attaches its page-fault program.
    pub fn new() -> Result<Self> {
        let btf = ebpf::kernel_btf()?;
        let mut bpf = ebpf::load(Some(&btf))?;
        let tracefs = tracefs::ensure_mounted()?.path();
        check_layout(tracefs)?;
        let program: &mut TracePoint = bpf
            .program_mut("page_fault_user")
            .context("eBPF object has no page_fault_user program")?
            .try_into()?;
        program.load().context("cannot load the page-fault program")?;
        program
            .attach(page_fault_user::CATEGORY, page_fault_user::NAME)
            .context("cannot attach to exceptions:page_fault_user")?;
        let mut take = |name: &str| ebpf::take_map(&mut bpf, name);
        let (targets, events, lost) =
            (take("FAULT_TARGETS")?, take("FAULT_EVENTS")?, take("FAULT_LOST")?);
        Ok(Self {
            targets: HashMap::try_from(targets)?,
            events: RingBuf::try_from(events)?,
            lost: PerCpuArray::try_from(lost)?,
            _bpf: bpf,
        })
    }

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
            if item.len() >= size_of::<FaultRecord>() {
                // SAFETY: the kernel wrote a whole FaultRecord; ring items are only 8-byte aligned.
                each(unsafe { item.as_ptr().cast::<FaultRecord>().read_unaligned() });
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
