//! The kernel's page-table layout for the walker: member offsets from BTF, 4 or 5 levels, and
//! `page_offset_base` (the randomised start of the direct map, which kallsyms does not show),
//! found by walking the sampler's own page tables through the `peek` program and checked
//! against `/proc/self/pagemap`.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use damon_common::{PEEK_CURRENT_TASK, PEEK_READ, PeekResult};

use super::pagemap;
use crate::{anon::AnonMapping, btf::Btf};

const GIB: u64 = 1 << 30;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
const HUGE: u64 = 1 << 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub levels: u32,
    pub page_offset_base: u64,
    pub mm_pgd_offset: u64,
    pub task_mm_offset: u64,
}

/// Reads kernel words by test-running `peek`.
struct Peek<'a> {
    program: &'a RawTracePoint,
    out: Array<&'a MapData, PeekResult>,
}

impl Peek<'_> {
    fn run(&self, op: u64, address: u64) -> Option<u64> {
        let mut options = RawTracePointRunOptions::new();
        options.args[0] = op;
        options.args[1] = address;
        self.program.test_run(options).ok()?;
        let result = self.out.get(&0, 0).ok()?;
        (result.error == 0).then_some(result.value)
    }

    fn read(&self, address: u64) -> Option<u64> {
        self.run(PEEK_READ, address)
    }
}

pub fn discover(bpf: &mut Ebpf) -> Result<Layout> {
    let btf = Btf::from_sys_fs()?;
    let mm_pgd_offset = btf.member_offset("mm_struct", "pgd")? as u64;
    let task_mm_offset = btf.member_offset("task_struct", "mm")? as u64;
    let program: &mut RawTracePoint =
        bpf.program_mut("peek").context("eBPF object has no peek program")?.try_into()?;
    program.load().context("cannot load the peek program (raw_tp)")?;
    let program: &RawTracePoint = bpf.program("peek").context("peek")?.try_into()?;
    let out = Array::try_from(bpf.map("PEEK_OUT").context("eBPF object has no PEEK_OUT map")?)?;
    let peek = Peek { program, out };
    let task = peek.run(PEEK_CURRENT_TASK, 0).context("the peek program does not run here")?;
    let mm = peek.read(task + task_mm_offset).context("cannot read current->mm")?;
    let pgd = peek.read(mm + mm_pgd_offset).context("cannot read current->mm->pgd")?;
    // 5-level kernels translate nothing consistently as 4 levels, and vice versa.
    for levels in [4, 5] {
        if let Some(page_offset_base) = find_base(&peek, pgd, levels) {
            let layout = Layout { levels, page_offset_base, mm_pgd_offset, task_mm_offset };
            validate(&peek, pgd, &layout)?;
            return Ok(layout);
        }
    }
    bail!(
        "cannot locate the kernel's direct map: no base translates its own page tables consistently"
    )
}

/// Translates `addr` through the tables rooted at `root` (a direct-map address), assuming the
/// direct map starts at `base`. `None` on any read failure or missing entry.
fn translate(peek: &Peek, root: u64, addr: u64, base: u64, levels: u32) -> Option<u64> {
    let mut table = root;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let entry = peek.read(table + ((addr >> shift) & 511) * 8)?;
        if entry & 1 == 0 {
            return None;
        }
        let page = 1u64 << shift;
        if level == 1 || (level <= 3 && entry & HUGE != 0) {
            return Some((entry & ADDRESS & !(page - 1)) + (addr & (page - 1)));
        }
        table = base.checked_add(entry & ADDRESS)?;
    }
    None
}

/// The direct map's base: the 1 GiB-aligned address below `pgd` (itself a direct-map address)
/// from which the page tables translate `pgd` to its own physical address.
fn find_base(peek: &Peek, pgd: u64, levels: u32) -> Option<u64> {
    let highest = pgd / GIB * GIB;
    // The base lies at most the highest physical address below pgd.
    let candidates = physical_span() / GIB + 1;
    (0..candidates)
        .map_while(|k| highest.checked_sub(k * GIB))
        .find(|&base| translate(peek, pgd, pgd, base, levels) == Some(pgd - base))
}

/// An upper bound on physical addresses: RAM plus room for the holes below 4 GiB and above.
fn physical_span() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok()
            })
        })
        .unwrap_or(1 << 30);
    total_kib * 1024 * 2 + 8 * GIB
}

/// A page of our own must translate to the frame pagemap reports.
fn validate(peek: &Peek, pgd: u64, layout: &Layout) -> Result<()> {
    let page = AnonMapping::new(1)?;
    page.touch(0);
    let addr = page.addr() as u64;
    let Some(expected) = pagemap::frame(std::process::id(), addr)? else {
        // Without CAP_SYS_ADMIN pagemap hides frames: nothing to compare with.
        return Ok(());
    };
    let walked =
        translate(peek, pgd, addr, layout.page_offset_base, layout.levels).map(|p| p >> 12);
    if walked != Some(expected) {
        bail!(
            "the kernel disagrees with the page-table walk: page {addr:#x} walks to frame {walked:x?}, pagemap says {expected:#x} (page_offset_base {:#x}, {} levels)",
            layout.page_offset_base,
            layout.levels
        );
    }
    Ok(())
}
