//! DAMOS filters: which memory a scheme may act on beyond its access pattern. The engine
//! handles the filters on addresses and targets (a region is cut at an address filter's
//! bounds, so each piece matches whole); the operations handle those on pages (anon, memcg, ...).
//!
//! As in the kernel: the first filter whose condition holds (or, for a `matching: false`
//! filter, does not hold) decides, allowing or rejecting; when none does, memory is allowed
//! unless the last filter was an allow filter. The engine's filters go first; memory they
//! allow skips the operations' (as the kernel's `core_filters_allowed`), memory they leave
//! undecided goes on to them when there are any.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// Anonymous pages.
    Anon,
    /// Pages charged to this cgroup (path under the cgroup root).
    Memcg(String),
    /// Pages not mapped (swapped out, or never touched).
    Unmapped,
    /// Pages on the active LRU list.
    Active,
    /// Pages of a folio of `[min, max]` bytes (a small page's folio is one page).
    HugepageSize(u64, u64),
    /// `[start, end)` of the target's address space.
    Addr(u64, u64),
    /// The target at this index (in the order targets were given).
    Target(usize),
}

impl FilterKind {
    /// damo's names.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Anon => "anon",
            Self::Memcg(_) => "memcg",
            Self::Unmapped => "unmapped",
            Self::Active => "active",
            Self::HugepageSize(..) => "hugepage_size",
            Self::Addr(..) => "addr",
            Self::Target(_) => "target",
        }
    }

    /// Whether the engine decides it for whole regions (the others are the operations').
    pub fn is_core(&self) -> bool {
        matches!(self, Self::Addr(..) | Self::Target(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub kind: FilterKind,
    /// Whether the filter applies to memory that has the property (true) or lacks it.
    pub matching: bool,
    /// Whether memory it applies to is allowed (true) or rejected.
    pub allow: bool,
}

/// What a group of filters says of memory whose properties answer `has` (per filter, in
/// order): the first filter that applies decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Reject,
    /// No filter applied.
    Undecided,
}

pub fn decide(filters: &[&Filter], mut has: impl FnMut(&FilterKind) -> bool) -> Verdict {
    match filters.iter().find(|f| has(&f.kind) == f.matching) {
        Some(f) if f.allow => Verdict::Allow,
        Some(_) => Verdict::Reject,
        None => Verdict::Undecided,
    }
}

/// Whether memory passes `filters`, one group (the engine's or the operations'). Memory the
/// group leaves undecided goes on to a later group if there is one; otherwise it passes unless
/// the last filter was an allow filter.
pub fn passes(
    filters: &[&Filter],
    later_group: bool,
    has: impl FnMut(&FilterKind) -> bool,
) -> bool {
    match decide(filters, has) {
        Verdict::Allow => true,
        Verdict::Reject => false,
        Verdict::Undecided => later_group || !filters.last().is_some_and(|f| f.allow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_applying_filter_decides_and_the_last_sets_the_default() {
        let anon_reject = Filter { kind: FilterKind::Anon, matching: true, allow: false };
        let anon_allow = Filter { allow: true, ..anon_reject.clone() };
        let not_anon_allow = Filter { matching: false, ..anon_allow.clone() };
        assert!(passes(&[], false, |_| true), "no filter: everything passes");
        assert!(!passes(&[&anon_reject], false, |_| true));
        assert!(passes(&[&anon_reject], false, |_| false), "not rejected: passes by default");
        assert!(passes(&[&anon_allow], false, |_| true));
        assert!(
            !passes(&[&anon_allow], false, |_| false),
            "after an allow filter, the rest is rejected"
        );
        assert!(passes(&[&not_anon_allow], false, |_| false));
        let target = Filter { kind: FilterKind::Target(1), matching: true, allow: false };
        assert!(!passes(&[&target, &anon_allow], false, |k| matches!(k, FilterKind::Target(1))));
        assert!(passes(&[&anon_allow], true, |_| false), "undecided: on to the next group");
    }
}
