//! What a page-table walk found, and how to read it.

use damon_common::{
    FOLIO_INDEX_MASK, FOLIO_INDEX_SHIFT, FOLIO_LOOKED_UP, FOLIO_ORDER_MASK, FOLIO_WHOLE_OK,
    LEAF_FAULT, LEAF_GONE, LEAF_NONE, LEAF_PMD, LEAF_PTE, LEAF_PUD, WalkResult,
    x86::{ACCESSED, ADDRESS, PMD_SIZE, PUD_SIZE, WRITABLE},
};

const PAGE: u64 = 4096;

/// What the walker found out about a PTE-mapped page's folio (`FOLIO_*`; 0: not looked up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folio(pub u32);

impl Folio {
    /// The range a clear of the page at `addr` must cover so as not to split its folio: the
    /// page itself for a small folio; a large folio's whole, naturally aligned range when it is
    /// mapped whole and aligned; `None` when no range is safe. Not looked up: the page (the
    /// folio layout is unknown here; see `udamon check`).
    pub fn clear_range(self, addr: u64) -> Option<(u64, u64)> {
        let page = addr / PAGE * PAGE;
        if self.0 & FOLIO_LOOKED_UP == 0 {
            return Some((page, PAGE));
        }
        let order = self.0 & FOLIO_ORDER_MASK;
        if order == 0 {
            return Some((page, PAGE));
        }
        if order == FOLIO_ORDER_MASK || self.0 & FOLIO_WHOLE_OK == 0 {
            return None;
        }
        let size = PAGE << order;
        let index = ((self.0 >> FOLIO_INDEX_SHIFT) & FOLIO_INDEX_MASK) as u64;
        let start = page.checked_sub(index * PAGE)?;
        start.is_multiple_of(size).then_some((start, size))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leaf {
    /// No result came back (the walk did not run, or stopped short).
    #[default]
    Missing,
    /// The address space has no users left: the process exited, or replaced it by exec.
    Gone,
    /// Not mapped: an entry on the way was not present.
    None,
    /// Reading a page table failed.
    Fault,
    /// The entry, and (for a page to be cleared) its folio.
    Pte(u64, Folio),
    Pmd(u64),
    Pud(u64),
}

impl Leaf {
    pub fn from_result(result: &WalkResult) -> Self {
        match result.leaf {
            LEAF_NONE => Self::None,
            LEAF_PTE => Self::Pte(result.entry, Folio(result.folio)),
            LEAF_PMD => Self::Pmd(result.entry),
            LEAF_PUD => Self::Pud(result.entry),
            LEAF_FAULT => Self::Fault,
            LEAF_GONE => Self::Gone,
            _ => Self::Missing,
        }
    }

    /// The leaf entry and the size of the page it maps.
    fn mapping(self) -> Option<(u64, u64)> {
        match self {
            Self::Pte(e, _) => Some((e, PAGE)),
            Self::Pmd(e) => Some((e, PMD_SIZE)),
            Self::Pud(e) => Some((e, PUD_SIZE)),
            Self::Missing | Self::Gone | Self::None | Self::Fault => None,
        }
    }

    /// Whether the page is mapped and its accessed bit is set.
    pub fn accessed(self) -> bool {
        self.mapping().is_some_and(|(entry, _)| entry & ACCESSED != 0)
    }

    /// Whether the mapping is writable: a writable page of a private mapping is the process's
    /// own (copy-on-write has happened), so a clear can reset it.
    pub fn writable(self) -> bool {
        self.mapping().is_some_and(|(entry, _)| entry & WRITABLE != 0)
    }

    /// Size of the mapped page (4 KiB for any PTE, whatever its folio).
    pub fn page_size(self) -> Option<u64> {
        self.mapping().map(|(_, size)| size)
    }

    /// What a clear of `addr` must cover so as to split nothing: a huge page whole, a large
    /// folio whole (see `Folio::clear_range`); `None` when no clear is safe.
    pub fn clear_range(self, addr: u64) -> Option<(u64, u64)> {
        match self {
            Self::Pte(_, folio) => folio.clear_range(addr),
            _ => self.page_size().map(|size| (addr / size * size, size)),
        }
    }

    /// The physical address `addr` translates to.
    pub fn physical(self, addr: u64) -> Option<u64> {
        let (entry, size) = self.mapping()?;
        Some((entry & ADDRESS & !(size - 1)) + (addr & (size - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_accessed_bits_sizes_and_addresses() {
        let pte = Leaf::Pte(0x8000_0000_1234_5067, Folio(0)); // NX, pfn 0x12345, accessed, present
        assert!(pte.accessed());
        assert_eq!(pte.page_size(), Some(4096));
        assert_eq!(pte.physical(0x7f00_0000_0abc), Some(0x1234_5abc));
        // A 2 MiB page: bit 12 is PAT there, not address.
        let pmd = Leaf::Pmd(0x0000_0001_4020_10e7 & !ACCESSED);
        assert!(!pmd.accessed());
        assert_eq!(pmd.physical(0x7f00_0012_3456), Some(0x1_4020_0000 + 0x12_3456));
        for nothing in [Leaf::None, Leaf::Fault, Leaf::Missing] {
            assert!(!nothing.accessed());
            assert_eq!(nothing.page_size(), None);
        }
    }

    #[test]
    fn clears_cover_whole_folios_or_nothing() {
        let at = 0x7f00_0001_3000; // page 3 of a 64 KiB folio at 0x7f00_0001_0000
        let folio = |bits: u32| Folio(FOLIO_LOOKED_UP | bits);
        let large = folio(4 | (3 << FOLIO_INDEX_SHIFT) | FOLIO_WHOLE_OK);
        assert_eq!(large.clear_range(at + 5), Some((0x7f00_0001_0000, 64 << 10)));
        assert_eq!(folio(4 | (3 << FOLIO_INDEX_SHIFT)).clear_range(at), None, "not mapped whole");
        assert_eq!(folio(FOLIO_ORDER_MASK).clear_range(at), None, "in flux");
        // Mapped whole but not at its natural alignment (mremap): any clear would split it.
        let shifted = folio(4 | (2 << FOLIO_INDEX_SHIFT) | FOLIO_WHOLE_OK);
        assert_eq!(shifted.clear_range(at), None);
        assert_eq!(folio(0).clear_range(at + 7), Some((at, 4096)), "a small folio");
        assert_eq!(Folio(0).clear_range(at), Some((at, 4096)), "not looked up");
        assert_eq!(
            Leaf::Pmd(0x1_4020_00e7).clear_range(0x7f00_0012_3456),
            Some((0x7f00_0000_0000, 2 << 20))
        );
    }
}
