//! What a page-table walk found, and how to read it.

use damon_common::{
    LEAF_FAULT, LEAF_NONE, LEAF_PMD, LEAF_PTE, LEAF_PUD, WalkResult,
    x86::{ACCESSED, ADDRESS, PMD_SIZE, PUD_SIZE, WRITABLE},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leaf {
    /// No record came back (the walk did not run, or the ring buffer was full).
    #[default]
    Missing,
    /// Not mapped: an entry on the way was not present.
    None,
    /// Reading a page table failed.
    Fault,
    Pte(u64),
    Pmd(u64),
    Pud(u64),
}

impl Leaf {
    pub fn from_result(result: &WalkResult) -> Self {
        match result.leaf {
            LEAF_NONE => Self::None,
            LEAF_PTE => Self::Pte(result.entry),
            LEAF_PMD => Self::Pmd(result.entry),
            LEAF_PUD => Self::Pud(result.entry),
            LEAF_FAULT => Self::Fault,
            _ => Self::Missing,
        }
    }

    /// The leaf entry and the size of the page it maps.
    fn mapping(self) -> Option<(u64, u64)> {
        match self {
            Self::Pte(e) => Some((e, 4096)),
            Self::Pmd(e) => Some((e, PMD_SIZE)),
            Self::Pud(e) => Some((e, PUD_SIZE)),
            Self::Missing | Self::None | Self::Fault => None,
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

    /// Size of the mapped page: what a clear must cover so as not to split it.
    pub fn page_size(self) -> Option<u64> {
        self.mapping().map(|(_, size)| size)
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
        let pte = Leaf::Pte(0x8000_0000_1234_5067); // NX, pfn 0x12345, accessed, present
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
}
