//! `peek`: reads kernel words for userspace, run on demand by `BPF_PROG_TEST_RUN`. Start-up uses
//! it to find the sampler's own page tables and calibrate `page_offset_base`.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use damon_common::{PEEK_CURRENT_TASK, PEEK_READ, PeekResult};

#[map]
static PEEK_OUT: Array<PeekResult> = Array::with_max_entries(1, 0);

#[raw_tracepoint]
pub fn peek(ctx: RawTracePointContext) -> i32 {
    let (op, address): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    let result = match op {
        // SAFETY: returns a pointer value; nothing is dereferenced.
        PEEK_CURRENT_TASK => PeekResult { value: unsafe { bpf_get_current_task() }, error: 0 },
        // SAFETY: a checked read of kernel memory.
        PEEK_READ => match unsafe { bpf_probe_read_kernel(address as *const u64) } {
            Ok(value) => PeekResult { value, error: 0 },
            Err(error) => PeekResult { value: 0, error: error as i64 },
        },
        _ => PeekResult { value: 0, error: -22 },
    };
    if let Some(out) = PEEK_OUT.get_ptr_mut(0) {
        // SAFETY: the single slot of a map this program owns.
        unsafe { *out = result };
    }
    0
}
