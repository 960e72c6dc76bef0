//! udamon's eBPF programs, built for `bpfel-unknown-none` by aya-build and embedded in `udamon`.
#![no_std]
#![no_main]

mod faults;
mod kdamond;
mod peek;
mod probes;
mod walk;

/// The process-id half of `bpf_get_current_pid_tgid()`.
fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}

/// The thread-id half.
fn current_tid() -> u32 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_probe_read_kernel and the tracing helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
