//! Page faults of monitored processes: certain accesses, free to observe, and a hint of where new
//! structure appears inside a region. Streamed to userspace through a ring buffer.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use damon_common::{FAULT_RING_BYTES, FaultRecord, MAX_FAULT_TARGETS, page_fault_user};

/// Processes whose faults are reported (key: tgid; the value is unused).
#[map]
static FAULT_TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FAULT_TARGETS, 0);

#[map]
static FAULT_EVENTS: RingBuf = RingBuf::with_byte_size(FAULT_RING_BYTES, 0);

/// Records dropped because the ring buffer was full; per CPU, so a plain add is race-free.
#[map]
static FAULT_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint(category = "exceptions", name = "page_fault_user")]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    let tgid = crate::current_tgid();
    // SAFETY: a lookup in a map this program owns; the value is not used.
    if unsafe { FAULT_TARGETS.get(tgid) }.is_none() {
        return 0;
    }
    // SAFETY: offsets of the tracepoint's fields, checked against tracefs by the loader.
    let (Ok(addr), Ok(error_code)) =
        (unsafe { ctx.read_at::<u64>(page_fault_user::ADDRESS_OFFSET) }, unsafe {
            ctx.read_at::<u64>(page_fault_user::ERROR_CODE_OFFSET)
        })
    else {
        return 0;
    };
    match FAULT_EVENTS.reserve::<FaultRecord>(0) {
        Some(mut entry) => {
            entry.write(FaultRecord { addr, error_code, tgid, _pad: 0 });
            entry.submit(0);
        }
        None => {
            if let Some(lost) = FAULT_LOST.get_ptr_mut(0) {
                // SAFETY: this CPU's slot; BPF programs do not migrate while running.
                unsafe { *lost += 1 };
            }
        }
    }
    0
}
