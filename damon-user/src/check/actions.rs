//! Rows about DAMOS actions: which `--damos_action`s work here, each tried through a pidfd on a
//! page of our own (the call the schemes make), and what they need besides.

use damon_engine::schemes::Action;

use super::Row;
use crate::{
    sys::{anon::AnonMapping, pidfd::PidFd},
    vaddr::actions::{How, how},
};

pub fn rows() -> Vec<Row> {
    let mut rows: Vec<Row> = [Action::Cold, Action::Pageout, Action::Willneed, Action::Collapse]
        .into_iter()
        .map(probe)
        .collect();
    rows.push(anon_pageout());
    rows.push(migration());
    let unsupported = Action::ALL.into_iter().filter(|&a| how(a).is_err());
    let names: Vec<&str> = unsupported.map(Action::name).collect();
    rows.push(
        Row::new("DAMOS other actions", false, "nothing: refused when asked for").missing(format!(
            "{}: not possible from userspace here (see --help)",
            names.join(", ")
        )),
    );
    rows
}

/// The action's advice on a page of our own.
fn probe(action: Action) -> Row {
    let requirement = match action {
        Action::Cold => "DAMOS cold",
        Action::Pageout => "DAMOS pageout",
        Action::Willneed => "DAMOS willneed",
        _ => "DAMOS collapse",
    };
    let row = Row::new(requirement, false, "schemes with this action");
    let Ok(How::Advise(advice)) = how(action) else { return row.missing("no advice for it") };
    // 4 MiB hold an aligned 2 MiB, the least MADV_COLLAPSE takes (it refuses a smaller mapping).
    let tried = AnonMapping::new(1024).and_then(|mapping| {
        const HUGE: usize = 2 << 20;
        let start = mapping.addr().next_multiple_of(HUGE);
        mapping.touch((start - mapping.addr()) / 4096);
        let range = libc::iovec { iov_base: start as *mut libc::c_void, iov_len: HUGE };
        PidFd::open(std::process::id())?.madvise(&[range], advice)
    });
    match tried {
        Ok(_) => row.ok("process_madvise takes it"),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) && action == Action::Collapse => {
            row.missing("MADV_COLLAPSE needs Linux 6.1")
        }
        Err(err) => row.missing(err.to_string()),
    }
}

/// Pages move between NUMA nodes.
fn migration() -> Row {
    let row = Row::new("DAMOS migrate_hot, migrate_cold", false, "schemes that move pages");
    match crate::sys::memory::nodes_online() {
        nodes if nodes.len() >= 2 => row.ok(format!("NUMA nodes {nodes:?}")),
        nodes => row.missing(format!("{} NUMA node: nothing to move pages to", nodes.len())),
    }
}

/// Anonymous memory can only be paged out to swap.
fn anon_pageout() -> Row {
    let row = Row::new("swap", false, "pageout of anonymous memory (file pages still go)");
    let swaps = crate::sys::read_text("/proc/swaps").unwrap_or_default();
    match swaps.lines().skip(1).filter(|l| !l.trim().is_empty()).count() {
        0 => row.missing("no swap active: pageout reclaims file-backed memory only"),
        n => row.ok(format!("{n} swap device(s) active")),
    }
}
