//! Capability probes for `udamon check`: one tiny program per program type the data plane may use.
//! Each records in `PROBE_FIRED` that it ran in the checking process, so the check proves that the
//! type loads, attaches *and* fires on this kernel, not only that the verifier accepts it.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_loop, bpf_probe_read_kernel},
    macros::{fentry, kprobe, map, perf_event, raw_tracepoint, tracepoint},
    maps::Array,
    programs::{
        FEntryContext, PerfEventContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
};
use damon_common::{NR_PROBES, Probe, raw_tp_probe_answer};

#[map]
static PROBE_FIRED: Array<u64> = Array::with_max_entries(NR_PROBES, 0);

/// The checking process; set by the loader so probes ignore the rest of the system.
#[unsafe(no_mangle)]
static PROBE_TGID: u32 = 0;

fn mark(probe: Probe, value: u64) {
    // SAFETY: a read of a global the loader fills in before load.
    let tgid = unsafe { core::ptr::read_volatile(&PROBE_TGID) };
    if crate::current_tgid() != tgid {
        return;
    }
    if let Some(slot) = PROBE_FIRED.get_ptr_mut(probe as u32) {
        // SAFETY: an in-bounds array slot; concurrent writers store the same value.
        unsafe { *slot = value };
    }
}

#[tracepoint(category = "exceptions", name = "page_fault_user")]
pub fn probe_tracepoint(_ctx: TracePointContext) -> u32 {
    mark(Probe::TracePoint, 1);
    0
}

/// What `read_word` leaves when the read worked (the word itself may be 0).
const READ_OK: u64 = 1;

/// `bpf_loop` callback: replaces `*ctx`, a kernel address, with whether it could be read.
extern "C" fn read_word(_index: u64, ctx: *mut c_void) -> i64 {
    let word = ctx as *mut u64;
    // SAFETY: `ctx` is the probe's stack slot; the address it holds is read by a checked helper.
    unsafe { *word = bpf_probe_read_kernel(*word as *const u64).map_or(0, |_: u64| READ_OK) };
    1
}

/// What the page-table walker needs: a raw_tp program run on demand (`BPF_PROG_TEST_RUN`),
/// `bpf_loop`, and `bpf_probe_read_kernel` (refused under lockdown=confidentiality). It answers
/// only if all of them worked.
#[raw_tracepoint]
pub fn probe_raw_tp(ctx: RawTracePointContext) -> i32 {
    let arg: u64 = ctx.arg(0);
    // SAFETY: returns a pointer value; the callback reads it with a checked helper.
    let mut word = unsafe { bpf_get_current_task() };
    // SAFETY: the callback and its context live for the duration of the call.
    unsafe { bpf_loop(1, read_word as *mut c_void, &mut word as *mut u64 as *mut c_void, 0) };
    if word == READ_OK {
        mark(Probe::RawTracePointTestRun, raw_tp_probe_answer(arg));
    }
    0
}

#[perf_event]
pub fn probe_perf_event(_ctx: PerfEventContext) -> u32 {
    mark(Probe::PerfEvent, 1);
    0
}

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    mark(Probe::KProbe, 1);
    0
}

#[fentry]
pub fn probe_fentry(_ctx: FEntryContext) -> i32 {
    mark(Probe::FEntry, 1);
    0
}
