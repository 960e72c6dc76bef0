//! Types shared by the eBPF programs (damon-ebpf) and the control plane (damon-user).
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so layouts are `#[repr(C)]`
//! with explicit padding, and the userspace side marks them `aya::Pod` (feature `user`).
#![no_std]

pub mod kdamond;

/// Names of the object's maps and programs, as both sides spell them: the eBPF side names its
/// statics after these (aya takes a static's name as the map's), userspace looks them up by
/// them, and a test checks the built object against this list.
pub mod names {
    pub const WALK_CONFIG: &str = "WALK_CONFIG";
    pub const WALK_SEGMENTS: &str = "WALK_SEGMENTS";
    pub const WALK_ADDRS: &str = "WALK_ADDRS";
    pub const WALK_OUT: &str = "WALK_OUT";
    pub const WALK_STATS: &str = "WALK_STATS";
    pub const WALK_PTES: &str = "WALK_PTES";
    pub const FAULT_TARGETS: &str = "FAULT_TARGETS";
    pub const FAULT_EVENTS: &str = "FAULT_EVENTS";
    pub const FAULT_LOST: &str = "FAULT_LOST";
    pub const PEEK_OUT: &str = "PEEK_OUT";
    pub const PROBE_FIRED: &str = "PROBE_FIRED";
    pub const KDAMOND_CONFIG: &str = "KDAMOND_CONFIG";
    pub const KDAMOND_TARGETS: &str = "KDAMOND_TARGETS";
    pub const KDAMOND_ZERO: &str = "KDAMOND_ZERO";
    pub const KDAMOND_REGIONS: &str = "KDAMOND_REGIONS";
    pub const KDAMOND_LOST: &str = "KDAMOND_LOST";
    pub const KDAMOND_SCHEMES: &str = "KDAMOND_SCHEMES";
    pub const MAPS: [&str; 17] = [
        WALK_CONFIG,
        WALK_SEGMENTS,
        WALK_ADDRS,
        WALK_OUT,
        WALK_STATS,
        WALK_PTES,
        FAULT_TARGETS,
        FAULT_EVENTS,
        FAULT_LOST,
        PEEK_OUT,
        PROBE_FIRED,
        KDAMOND_CONFIG,
        KDAMOND_TARGETS,
        KDAMOND_ZERO,
        KDAMOND_REGIONS,
        KDAMOND_LOST,
        KDAMOND_SCHEMES,
    ];

    pub const WALK: &str = "walk";
    pub const PAGE_FAULT_USER: &str = "page_fault_user";
    pub const PEEK: &str = "peek";
    pub const PROBE_TRACEPOINT: &str = "probe_tracepoint";
    pub const PROBE_RAW_TP: &str = "probe_raw_tp";
    pub const PROBE_PERF_EVENT: &str = "probe_perf_event";
    pub const PROBE_KPROBE: &str = "probe_kprobe";
    pub const PROBE_FENTRY: &str = "probe_fentry";
    pub const DAMON_AGGREGATED: &str = "damon_aggregated";
    pub const DAMOS_BEFORE_APPLY: &str = "damos_before_apply";
    pub const DAMOS_ESZ: &str = "damos_esz";
    pub const PROGRAMS: [&str; 11] = [
        WALK,
        PAGE_FAULT_USER,
        PEEK,
        PROBE_TRACEPOINT,
        PROBE_RAW_TP,
        PROBE_PERF_EVENT,
        PROBE_KPROBE,
        PROBE_FENTRY,
        DAMON_AGGREGATED,
        DAMOS_BEFORE_APPLY,
        DAMOS_ESZ,
    ];

    /// The global the loader sets to its own process id, so probes ignore other processes.
    pub const PROBE_TGID: &str = "PROBE_TGID";
}

/// x86-64 page-table entry bits, the same at every level.
pub mod x86 {
    pub const PRESENT: u64 = 1;
    pub const WRITABLE: u64 = 1 << 1;
    pub const ACCESSED: u64 = 1 << 5;
    /// PSE: at the PUD and PMD levels, the entry maps a huge page instead of a table.
    pub const HUGE: u64 = 1 << 7;
    /// The physical address bits of an entry (for a huge page, its low bits are flags).
    pub const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
    pub const PAGE_SHIFT: u32 = 12;
    /// Index bits per table level.
    pub const LEVEL_BITS: u32 = 9;
    pub const PMD_SIZE: u64 = 1 << 21;
    pub const PUD_SIZE: u64 = 1 << 30;
}

/// One page fault taken by a monitored process, from the `exceptions:page_fault_user` tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// The faulting user virtual address (exact, not page-aligned).
    pub addr: u64,
    /// x86 page-fault error code (bit 1: write, bit 2: user mode, bit 4: instruction fetch).
    pub error_code: u64,
    /// Thread-group id (the process id) that faulted.
    pub tgid: u32,
    pub _pad: u32,
}

/// Layout of `exceptions:page_fault_user` in tracefs (`.../page_fault_user/format`): the eBPF side
/// reads these offsets, the userspace loader checks them against the running kernel first.
pub mod page_fault_user {
    pub const CATEGORY: &str = "exceptions";
    pub const NAME: &str = "page_fault_user";
    pub const ADDRESS_OFFSET: usize = 8;
    pub const ERROR_CODE_OFFSET: usize = 24;
}

/// Maximum number of processes whose faults are streamed at once.
pub const MAX_FAULT_TARGETS: u32 = 4096;

/// Byte size of the fault ring buffer (a power of two, as the kernel requires).
pub const FAULT_RING_BYTES: u32 = 1 << 20;

/// The tiny capability probes `udamon check` loads: each marks its slot in `PROBE_FIRED` when it
/// runs in the checking process, proving the program type loads, attaches and fires here.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    TracePoint = 0,
    RawTracePointTestRun = 1,
    PerfEvent = 2,
    KProbe = 3,
    FEntry = 4,
}

pub const NR_PROBES: u32 = 5;

/// The value the raw_tp probe returns from a test run for argument `arg`: proves both that the
/// program ran and that arguments reach it.
pub const fn raw_tp_probe_answer(arg: u64) -> u64 {
    arg ^ 0x5a5a
}

/// Addresses one walk run can carry (a power of two: indexes are masked with it).
pub const WALK_CAPACITY: usize = 4096;

/// What the userspace sampler tells the walker about this kernel; set once after calibration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkConfig {
    /// 4 or 5 levels of page tables.
    pub levels: u32,
    pub _pad: u32,
    /// Start of the kernel's direct map (`page_offset_base`), calibrated at start-up.
    pub page_offset_base: u64,
    /// Byte offsets from BTF: `mm_struct.pgd` and `mm_struct.mm_users`.
    pub mm_pgd_offset: u64,
    pub mm_users_offset: u64,
    pub folio: FolioLayout,
}

/// How to find the folio of a mapped page from its frame, for clears that must cover whole
/// large folios (a part of one would split it). `vmemmap_base` 0: unknown, no lookups.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FolioLayout {
    /// Where `struct page` of frame 0 lies; each is `page_size` bytes.
    pub vmemmap_base: u64,
    pub page_size: u64,
    /// `compound_head` (`compound_info` on 7.2+): bit 0 set on a tail page.
    pub compound_offset: u64,
    /// `PG_head` in `page->flags`.
    pub head_bit: u64,
    /// Offset from the head page of the byte holding the folio's order.
    pub order_offset: u64,
    /// Offset from the head page of `_large_mapcount` (stored minus one).
    pub mapcount_offset: u64,
}

/// `WalkResult::folio`: looked up (else 0), and for a large folio its order, the page's index
/// in it, and whether clearing the folio's whole range keeps it whole (mapped once, page after
/// page, in this page table).
pub const FOLIO_LOOKED_UP: u32 = 1 << 31;
pub const FOLIO_WHOLE_OK: u32 = 1 << 30;
pub const FOLIO_ORDER_MASK: u32 = 0xff;
pub const FOLIO_INDEX_SHIFT: u32 = 8;
pub const FOLIO_INDEX_MASK: u32 = 0xffff;

/// A run of addresses in one address space, in the mmap-able segment array: the
/// `mm_struct`, and which addresses of the request array are its. Consecutive addresses of one
/// address space share their walk's upper tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkSegment {
    pub mm: u64,
    pub first: u32,
    pub count: u32,
}

/// Flag in the low bits of a page in the request array: the page is to be cleared next, so its
/// folio is looked up.
pub const WALK_FOLIO: u64 = 1;

/// What the walk found for one address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkResult {
    /// One of the `LEAF_*` constants.
    pub leaf: u32,
    /// For a page to be cleared: its folio (`FOLIO_*`).
    pub folio: u32,
    /// The leaf entry (see `x86`), or the entry that was not present.
    pub entry: u64,
}

/// The walk goes in batches of this many addresses: each walked, then the folios of those to
/// be cleared looked up (a pass of its own, for the verifier's sake).
pub const WALK_BATCH: usize = 16;

/// No mapping: an entry on the way was not present.
pub const LEAF_NONE: u32 = 0;
pub const LEAF_PTE: u32 = 1;
/// A 2 MiB huge page (THP).
pub const LEAF_PMD: u32 = 2;
/// A 1 GiB huge page.
pub const LEAF_PUD: u32 = 3;
/// Reading a table failed.
pub const LEAF_FAULT: u32 = 4;
/// The address space is gone (its last user left: the process exited or replaced it by exec).
pub const LEAF_GONE: u32 = 5;
/// Set by userspace before a run: a slot the walk never reached keeps it.
pub const LEAF_UNSET: u32 = u32::MAX;

/// Walk totals, per CPU: how many walks and addresses, and how long they took.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    pub walks: u64,
    pub addresses: u64,
    pub nanoseconds: u64,
}

/// `peek` test-run operations: arguments `[op, address]`; the answer lands in `PEEK_OUT`.
pub const PEEK_CURRENT_TASK: u64 = 0;
pub const PEEK_READ: u64 = 1;

/// `PEEK_OUT` after a test run: the value, or the helper's error.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeekResult {
    pub value: u64,
    pub error: i64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all `#[repr(C)]` plain integers without implicit padding.
    unsafe impl aya::Pod for super::FaultRecord {}
    unsafe impl aya::Pod for super::WalkConfig {}
    unsafe impl aya::Pod for super::WalkSegment {}
    unsafe impl aya::Pod for super::WalkResult {}
    unsafe impl aya::Pod for super::WalkStats {}
    unsafe impl aya::Pod for super::PeekResult {}
    unsafe impl aya::Pod for super::kdamond::KdamondConfig {}
    unsafe impl aya::Pod for super::kdamond::KdamondKey {}
    unsafe impl aya::Pod for super::kdamond::KdamondTarget {}
    unsafe impl aya::Pod for super::kdamond::KdamondRegion {}
    unsafe impl aya::Pod for super::kdamond::SchemeKey {}
    unsafe impl aya::Pod for super::kdamond::SchemeSums {}
}
