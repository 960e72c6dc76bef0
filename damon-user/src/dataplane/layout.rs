//! The kernel's page-table layout for the walker: 4 or 5 levels, and `page_offset_base` (the
//! randomised start of the direct map, which kallsyms does not show), found by walking the
//! sampler's own page tables through the `peek` program and then checked two ways: a page of
//! our own, walked to its frame, must hold what we wrote when read through the direct map; and,
//! where pagemap shows frames (CAP_SYS_ADMIN), the frame must be pagemap's.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use damon_common::{
    FolioLayout, PEEK_CURRENT_TASK, PEEK_READ, PeekResult, names,
    x86::{ADDRESS, HUGE, LEVEL_BITS, PAGE_SHIFT, PRESENT},
};

use super::object::{FolioOffsets, Offsets};
use crate::sys::{anon::AnonMapping, pagemap};

const GIB: u64 = 1 << 30;
/// Calibration attempts before giving up: a run can meet page tables in flux.
const ATTEMPTS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub levels: u32,
    pub page_offset_base: u64,
    pub offsets: Offsets,
    /// How the calibration was confirmed.
    pub verified: Verified,
    /// How the walker finds a page's folio (`vmemmap_base` found and checked); `Err`: why it
    /// cannot, and large folios are then never cleared.
    pub folio: Result<FolioLayout, &'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// A read through the direct map found what we wrote, and pagemap names the same frame.
    Pagemap,
    /// A read through the direct map found what we wrote; pagemap hides frames here.
    DirectMapRead,
}

impl Verified {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Pagemap => "agrees with pagemap and with a read through the direct map",
            Self::DirectMapRead => {
                "checked by a read through the direct map (pagemap hides frames without CAP_SYS_ADMIN)"
            }
        }
    }
}

/// Reads kernel words.
trait KernelMemory {
    fn read(&self, address: u64) -> Option<u64>;
}

/// Reads kernel words by test-running `peek` (loaded by `discover`).
pub(crate) struct Peek<'a> {
    program: &'a RawTracePoint,
    out: Array<&'a MapData, PeekResult>,
}

impl<'a> Peek<'a> {
    pub(crate) fn of(bpf: &'a Ebpf) -> Result<Self> {
        let program: &RawTracePoint = bpf.program(names::PEEK).context("peek")?.try_into()?;
        let map = bpf.map(names::PEEK_OUT).context("eBPF object has no PEEK_OUT map")?;
        Ok(Self { program, out: Array::try_from(map)? })
    }

    fn run(&self, op: u64, address: u64) -> Option<u64> {
        let mut options = RawTracePointRunOptions::new();
        options.args[0] = op;
        options.args[1] = address;
        self.program.test_run(options).ok()?;
        let result = self.out.get(&0, 0).ok()?;
        (result.error == 0).then_some(result.value)
    }

    /// The calling thread's `task_struct`.
    pub(crate) fn current_task(&self) -> Option<u64> {
        self.run(PEEK_CURRENT_TASK, 0)
    }

    pub(crate) fn read(&self, address: u64) -> Option<u64> {
        self.run(PEEK_READ, address)
    }
}

impl KernelMemory for Peek<'_> {
    fn read(&self, address: u64) -> Option<u64> {
        Peek::read(self, address)
    }
}

/// Finds and checks the layout, retrying a failed attempt.
pub fn discover(bpf: &mut Ebpf, offsets: Offsets) -> Result<Layout> {
    let program: &mut RawTracePoint =
        bpf.program_mut(names::PEEK).context("eBPF object has no peek program")?.try_into()?;
    super::refused::load(program.load(), names::PEEK, "the peek program (raw_tp)")?;
    let peek = Peek::of(bpf)?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match attempt(&peek, offsets) {
            Ok(layout) => return Ok(layout),
            Err(err) => last = Some(err),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Kernel addresses of our own, all in the direct map: the page-table root, the mm, the task.
struct Anchors {
    pgd: u64,
    others: [u64; 2],
}

fn attempt(peek: &Peek, offsets: Offsets) -> Result<Layout> {
    let task = peek.current_task().context("the peek program does not run here")?;
    let mm = peek.read(task + offsets.task_mm).context("cannot read current->mm")?;
    let pgd = peek.read(mm + offsets.mm_pgd).context("cannot read current->mm->pgd")?;
    let anchors = Anchors { pgd, others: [mm, task] };
    // 5-level kernels translate nothing consistently as 4 levels, and vice versa.
    for levels in [4, 5] {
        if let Some(page_offset_base) = find_base(peek, &anchors, levels, physical_span()) {
            let mut layout = Layout {
                levels,
                page_offset_base,
                offsets,
                verified: Verified::DirectMapRead,
                folio: Err("not looked for"),
            };
            layout.verified = verify(peek, pgd, &layout)?;
            layout.folio = offsets.folio.and_then(|f| folio_layout(peek, pgd, &layout, f));
            return Ok(layout);
        }
    }
    bail!(
        "cannot locate the kernel's direct map: no base translates its own page tables consistently"
    )
}

/// Translates `addr` through the tables rooted at `root` (a direct-map address), assuming the
/// direct map starts at `base`. `None` on any read failure or missing entry.
fn translate(
    peek: &impl KernelMemory,
    root: u64,
    addr: u64,
    base: u64,
    levels: u32,
) -> Option<u64> {
    let mut table = root;
    for level in (1..=levels).rev() {
        let shift = PAGE_SHIFT + LEVEL_BITS * (level - 1);
        let entry = peek.read(table + ((addr >> shift) & 511) * 8)?;
        if entry & PRESENT == 0 {
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

/// The direct map's base: the lowest 1 GiB-aligned address below `pgd` from which the page
/// tables translate every anchor (each a direct-map address) to itself minus the base. One
/// anchor alone can be matched by chance (tables at another offset of physical memory); three
/// cannot.
fn find_base(
    peek: &impl KernelMemory,
    anchors: &Anchors,
    levels: u32,
    physical_span: u64,
) -> Option<u64> {
    let highest = anchors.pgd / GIB * GIB;
    // The base lies at most the highest physical address below pgd.
    let candidates = physical_span / GIB + 1;
    let consistent = |base: u64| {
        std::iter::once(anchors.pgd).chain(anchors.others).all(|addr| {
            addr >= base && translate(peek, anchors.pgd, addr, base, levels) == Some(addr - base)
        })
    };
    // Lowest first: the largest distance below pgd comes first.
    (0..candidates).rev().filter_map(|k| highest.checked_sub(k * GIB)).find(|&b| consistent(b))
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

/// A page of our own, walked to its frame, must hold what we wrote there when read through the
/// direct map; and where pagemap shows frames, it must name the same one.
fn verify(peek: &Peek, pgd: u64, layout: &Layout) -> Result<Verified> {
    let page = AnonMapping::new(1)?;
    let cookie = 0x7564_616d_6f6e_0000 | u64::from(std::process::id() & 0xffff);
    page.write_u64(0, cookie);
    let addr = page.addr() as u64;
    let walked = translate(peek, pgd, addr, layout.page_offset_base, layout.levels);
    let seen = walked.and_then(|phys| peek.read(layout.page_offset_base + phys));
    if seen != Some(cookie) {
        bail!(
            "the page-table walk disagrees with memory: page {addr:#x} walks to {walked:#x?}, which reads {seen:#x?} instead of {cookie:#x} (page_offset_base {:#x}, {} levels)",
            layout.page_offset_base,
            layout.levels
        );
    }
    let frame = walked.map(|p| p >> PAGE_SHIFT);
    match pagemap::frame(std::process::id(), addr)? {
        // Without CAP_SYS_ADMIN pagemap hides frames: the read above is the check.
        None => Ok(Verified::DirectMapRead),
        Some(expected) if frame == Some(expected) => Ok(Verified::Pagemap),
        Some(expected) => bail!(
            "the kernel disagrees with the page-table walk: page {addr:#x} walks to frame {frame:x?}, pagemap says {expected:#x} (page_offset_base {:#x}, {} levels)",
            layout.page_offset_base,
            layout.levels
        ),
    }
}

/// The vmemmap (`struct page` of every frame): its base from kallsyms if listed, else the
/// fixed one, else searched, 1 GiB-aligned as KASLR places it; each candidate checked on pages
/// of our own.
fn folio_layout(
    peek: &impl KernelMemory,
    pgd: u64,
    layout: &Layout,
    offsets: FolioOffsets,
) -> Result<FolioLayout, &'static str> {
    // Small pages of our own, freshly faulted: their `struct page` is known.
    let pages = AnonMapping::new(2).map_err(|_| "cannot map pages of our own")?;
    // SAFETY: advising our own fresh mapping.
    unsafe { libc::madvise(pages.addr() as *mut libc::c_void, pages.len(), libc::MADV_NOHUGEPAGE) };
    let mut own = Vec::new();
    for i in 0..2 {
        pages.touch(i);
        let addr = (pages.addr() + i * 4096) as u64;
        let phys = translate(peek, pgd, addr, layout.page_offset_base, layout.levels)
            .ok_or("cannot walk to pages of our own")?;
        own.push((addr, phys >> PAGE_SHIFT));
    }
    let fits = |base: u64| {
        own.iter().all(|&(addr, pfn)| {
            let page = base.wrapping_add(pfn * offsets.page_size);
            let word = |offset: u64| peek.read(page.wrapping_add(offset));
            // An anonymous page: its mapping an anon_vma (low bit set), its index its page
            // number (a fresh mapping), mapped once (stored minus one).
            word(offsets.mapping).is_some_and(|m| m & 3 == 1)
                && word(offsets.index) == Some(addr >> PAGE_SHIFT)
                && word(offsets.mapcount).is_some_and(|m| m as u32 == 0)
        })
    };
    let listed = kallsyms("vmemmap_base").and_then(|at| peek.read(at));
    let fixed = if layout.levels == 5 { 0xffd4_0000_0000_0000 } else { 0xffff_ea00_0000_0000 };
    // KASLR puts it above the direct map and below the fixed maps, 1 GiB-aligned.
    let searched =
        (layout.page_offset_base / GIB + 1..0xffff_fe00_0000_0000 / GIB).map(|k| k * GIB);
    let vmemmap_base = listed
        .into_iter()
        .chain([fixed])
        .chain(searched)
        .find(|&base| fits(base))
        .ok_or("cannot locate the vmemmap")?;
    Ok(FolioLayout {
        vmemmap_base,
        page_size: offsets.page_size,
        compound_offset: offsets.compound,
        head_bit: offsets.head_bit,
        order_offset: offsets.order,
        mapcount_offset: offsets.large_mapcount.unwrap_or(u64::MAX),
    })
}

/// The address of kernel symbol `name`, if /proc/kallsyms shows it (to root).
fn kallsyms(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (addr, _, symbol) = (fields.next()?, fields.next()?, fields.next()?);
        (symbol == name).then(|| u64::from_str_radix(addr, 16).ok()).flatten().filter(|&a| a != 0)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use damon_common::x86::PMD_SIZE;

    use super::*;

    /// Kernel memory as a map from addresses to words; anything else reads as a fault.
    struct Memory(HashMap<u64, u64>);

    impl KernelMemory for Memory {
        fn read(&self, address: u64) -> Option<u64> {
            self.0.get(&address).copied()
        }
    }

    fn index(addr: u64, level: u32) -> u64 {
        (addr >> (PAGE_SHIFT + LEVEL_BITS * (level - 1))) & 511
    }

    impl Memory {
        /// Maps direct-map address `addr` (base `base`) through a PUD table at physical `pud`
        /// and a PMD table at physical `pmd` to a 2 MiB page: the tables the kernel would have.
        fn map(&mut self, pgd: u64, addr: u64, base: u64, (pud, pmd): (u64, u64)) {
            self.0.insert(pgd + index(addr, 4) * 8, pud | PRESENT);
            self.0.insert(base + pud + index(addr, 3) * 8, pmd | PRESENT);
            let frame = (addr - base) / PMD_SIZE * PMD_SIZE;
            self.0.insert(base + pmd + index(addr, 2) * 8, frame | PRESENT | HUGE);
        }
    }

    /// Early in a machine's life other physical memory can hold tables that translate the page
    /// tables' own address consistently for a wrong base (seen: 5 GiB too high). The mm and the
    /// task, translated through the same root, expose it; the lowest consistent base wins.
    #[test]
    fn a_base_that_translates_only_the_page_tables_is_not_taken() {
        let base = 0xffff_8880_0000_0000;
        // All above the decoy base, so only the translation can tell them apart.
        let (pgd, mm, task) =
            (base + 8 * GIB, base + 6 * GIB + 0x20_0000, base + 7 * GIB + 0x40_0000);
        let mut memory = Memory(HashMap::new());
        memory.map(pgd, pgd, base, (0x10_0000, 0x20_0000));
        memory.map(pgd, mm, base, (0x10_0000, 0x30_0000));
        memory.map(pgd, task, base, (0x10_0000, 0x40_0000));
        // The decoy: 5 GiB up, tables that translate pgd to pgd minus the decoy base.
        let decoy = base + 5 * GIB;
        memory.0.insert(decoy + 0x10_0000 + index(pgd, 3) * 8, 0x50_0000 | PRESENT);
        let frame = (pgd - decoy) / PMD_SIZE * PMD_SIZE;
        memory.0.insert(decoy + 0x50_0000 + index(pgd, 2) * 8, frame | PRESENT | HUGE);
        assert_eq!(
            translate(&memory, pgd, pgd, decoy, 4),
            Some(pgd - decoy),
            "the decoy is consistent for the page tables alone"
        );
        let anchors = Anchors { pgd, others: [mm, task] };
        assert_eq!(find_base(&memory, &anchors, 4, 64 * GIB), Some(base));
        let pgd_only = Anchors { pgd, others: [pgd, pgd] };
        assert_eq!(find_base(&memory, &pgd_only, 4, 64 * GIB), Some(base), "lowest first");
    }
}
