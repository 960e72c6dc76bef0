//! The eBPF page-table walker and the vaddr operations against a child with a known layout.

use std::time::{Duration, Instant};

use damon_engine::Attrs;
use damon_user::{
    dataplane::{AddressSpace, DataPlane, Walker, leaf::Leaf, walker::Request},
    monitor::{Event, Monitor, MonitorConfig},
    sys::{pagemap, pidfd::PidFd},
    vaddr::VaddrOps,
};
use tests::{Child, HUGE, PAGE};

fn walker() -> Walker {
    DataPlane::load().and_then(|plane| plane.start(false)).expect("the data plane").0
}

/// Walks `addrs` of `space` into `leaves`; the folios of those from `prepared_from` on (to be
/// cleared) are looked up.
fn walk(
    walker: &mut Walker,
    space: &AddressSpace,
    addrs: &[u64],
    prepared_from: usize,
    leaves: &mut Vec<Leaf>,
) {
    let mut request = Request::default();
    request.space(space);
    addrs.iter().enumerate().for_each(|(i, &a)| request.push(a, i >= prepared_from));
    walker.walk(&request, leaves).unwrap();
}

/// Clears what is marked accessed, the way the vaddr operations do: whole pages, by leaf size.
fn clear_accessed(
    walker: &mut Walker,
    (target, space): (&PidFd, &AddressSpace),
    addrs: &[u64],
    leaves: &mut Vec<Leaf>,
) {
    walk(walker, space, addrs, 0, leaves);
    let pages: Vec<(u64, u64)> = addrs
        .iter()
        .zip(leaves.iter())
        .filter(|(_, l)| l.accessed())
        .map(|(&a, l)| l.clear_range(a).expect("a range that splits nothing"))
        .collect();
    let mut refused = Vec::new();
    walker.clear(target, &pages, &mut refused).unwrap();
    assert!(refused.is_empty(), "the kernel refused to clear {refused:?}");
}

#[test]
fn accessed_bits_follow_the_child_over_a_thousand_rounds() {
    if !damon_user::test_support::privileged(
        "accessed_bits_follow_the_child_over_a_thousand_rounds",
    ) {
        return;
    }
    let child = Child::spawn(256);
    let mut walker = walker();
    let target = PidFd::open(child.pid).unwrap();
    let space = walker.address_space(child.pid).unwrap();
    let addrs: Vec<u64> = (0..child.pages).map(|i| child.page(i)).collect();
    let mut leaves = Vec::new();
    let (mut right, mut checks, mut hot_idle, mut huge) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..1000 {
        clear_accessed(&mut walker, (&target, &space), &addrs, &mut leaves);
        // Two sweeps: the one under way may have passed some pages before the clear.
        child.wait_sweeps(2);
        walk(&mut walker, &space, &addrs, addrs.len(), &mut leaves);
        for (i, leaf) in leaves.iter().enumerate() {
            checks += 1;
            right += (leaf.accessed() == Child::is_hot(i)) as u64;
            hot_idle += (Child::is_hot(i) && !leaf.accessed()) as u64;
            huge += (leaf.page_size() != Some(PAGE as u64)) as u64;
        }
    }
    child.stop();
    let share = right as f64 / checks as f64;
    eprintln!("{right} of {checks} checks right");
    assert!(
        share >= 0.99,
        "{right} of {checks} checks right ({:.2} %); {hot_idle} written pages read idle, \
         {huge} reads not of a 4 KiB page",
        share * 100.0
    );
}

#[test]
fn frames_agree_with_pagemap() {
    if !damon_user::test_support::privileged("frames_agree_with_pagemap") {
        return;
    }
    let child = Child::spawn(64);
    let mut walker = walker();
    let space = walker.address_space(child.pid).unwrap();
    let mut addrs: Vec<u64> = (0..child.pages).map(|i| child.page(i)).collect();
    addrs.extend([child.huge as u64 + 5 * PAGE as u64, (child.huge + HUGE) as u64]);
    let mut leaves = Vec::new();
    walk(&mut walker, &space, &addrs, addrs.len(), &mut leaves);
    let map = pagemap::Pagemap::open(child.pid).unwrap();
    for (&addr, leaf) in addrs.iter().zip(&leaves) {
        let walked = leaf.physical(addr).map(|p| p >> 12);
        let expected = map.frame(addr).unwrap();
        assert!(walked.is_some(), "{addr:#x} not mapped: {leaf:?}");
        assert_eq!(walked, expected, "frame of {addr:#x}");
    }
    child.stop();
}

#[test]
fn huge_pages_are_cleared_whole_and_never_split() {
    if !damon_user::test_support::privileged("huge_pages_are_cleared_whole_and_never_split") {
        return;
    }
    let child = Child::spawn(8);
    let before = child.anon_huge_kib();
    if before < 4096 {
        eprintln!("note: THP gave the child only {before} kB of huge pages; checking those");
    }
    let mut walker = walker();
    let target = PidFd::open(child.pid).unwrap();
    let space = walker.address_space(child.pid).unwrap();
    // Addresses inside the huge pages, not at their starts: the clear must widen them.
    let addrs: Vec<u64> = (0..64).map(|i| (child.huge + i * 16 * PAGE + 3 * PAGE) as u64).collect();
    let mut leaves = Vec::new();
    for _ in 0..200 {
        clear_accessed(&mut walker, (&target, &space), &addrs, &mut leaves);
        std::thread::sleep(Duration::from_millis(1));
    }
    walk(&mut walker, &space, &addrs, addrs.len(), &mut leaves);
    let after = child.anon_huge_kib();
    child.stop();
    // More is khugepaged collapsing the child's other memory; less would be our split.
    assert!(
        after >= before,
        "AnonHugePages fell from {before} to {after} kB: a huge page was split"
    );
    if before >= 4096 {
        assert!(leaves.iter().all(|l| matches!(l, Leaf::Pmd(_))), "{leaves:?}");
    }
}

#[test]
fn a_target_that_exits_is_dropped_and_reported() {
    if !damon_user::test_support::privileged("a_target_that_exits_is_dropped_and_reported") {
        return;
    }
    let child = Child::spawn(32);
    let config = MonitorConfig { attrs: Attrs::default(), seed: 1, ..Default::default() };
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let monitor =
        Monitor::start(config, VaddrOps::load().unwrap(), &[child.pid], tx, false).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    child.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut snapshots = 0;
    let mut gone = None;
    while gone.is_none() && Instant::now() < deadline {
        match events.try_recv() {
            Ok(Event::Snapshot(_)) => snapshots += 1,
            Ok(Event::TargetExited(pid)) => gone = Some(pid),
            Ok(
                Event::TargetAdded(_)
                | Event::TargetLeft(_)
                | Event::TargetRefused(..)
                | Event::Flush
                | Event::Paused,
            ) => {
                panic!("a target change no one asked for")
            }
            Ok(Event::Problem(problem)) => panic!("a problem with a plain child: {problem:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert_eq!(gone, Some(child.pid), "the exit was not reported");
    assert!(snapshots >= 3, "only {snapshots} snapshots before the exit");
    // With no target left the sampler ends by itself, cleanly.
    let summary = monitor.join().unwrap();
    assert!(summary.counters.aggregations >= 3);
}

/// A range the kernel refuses to clear (mlocked memory: EINVAL) is reported as such, not as an
/// exit, and does not stop the clears after it in the same call.
#[test]
fn a_refused_clear_is_reported_and_the_rest_still_cleared() {
    if !damon_user::test_support::privileged(
        "a_refused_clear_is_reported_and_the_rest_still_cleared",
    ) {
        return;
    }
    let child = Child::spawn(8);
    let mut walker = walker();
    let target = PidFd::open(child.pid).unwrap();
    let space = walker.address_space(child.pid).unwrap();
    let (locked, hot) = (child.locked as u64, child.page(0));
    child.wait_sweeps(2);
    let mut leaves = Vec::new();
    walk(&mut walker, &space, &[hot], 1, &mut leaves);
    assert!(leaves[0].accessed(), "the hot page was written: {:?}", leaves[0]);
    // Stop the child so nothing sets the hot page's bit again behind the clear.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.pid as i32, libc::SIGSTOP) };
    let mut refused = Vec::new();
    walker.clear(&target, &[(locked, PAGE as u64), (hot, PAGE as u64)], &mut refused).unwrap();
    walk(&mut walker, &space, &[hot], 1, &mut leaves);
    // SAFETY: as above.
    unsafe { libc::kill(child.pid as i32, libc::SIGCONT) };
    child.stop();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].addr, refused[0].errno), (locked, libc::EINVAL));
    assert!(!leaves[0].accessed(), "the page after the refused one was not cleared");
}

/// One walk covers several address spaces, in any order: each address is read in its own
/// process's page tables. Once a process has exited its space is gone, address by address.
#[test]
fn one_walk_reads_several_processes_and_knows_when_one_is_gone() {
    if !damon_user::test_support::privileged(
        "one_walk_reads_several_processes_and_knows_when_one_is_gone",
    ) {
        return;
    }
    let children = [Child::spawn(64), Child::spawn(64)];
    let mut walker = walker();
    let targets: Vec<_> = children.iter().map(|c| PidFd::open(c.pid).unwrap()).collect();
    let spaces: Vec<_> = children.iter().map(|c| walker.address_space(c.pid).unwrap()).collect();
    let mut leaves = Vec::new();
    for ((child, target), space) in children.iter().zip(&targets).zip(&spaces) {
        let addrs: Vec<u64> = (0..64).map(|i| child.page(i)).collect();
        clear_accessed(&mut walker, (target, space), &addrs, &mut leaves);
    }
    children.iter().for_each(|c| c.wait_sweeps(2));
    // Alternating between the two, page by page: every switch starts a walk from the root.
    let mut request = Request::default();
    for k in 0..128 {
        request.space(&spaces[k % 2]);
        request.push(children[k % 2].page(k / 2), false);
    }
    walker.walk(&request, &mut leaves).unwrap();
    for (k, leaf) in leaves.iter().enumerate() {
        assert_eq!(
            leaf.accessed(),
            Child::is_hot(k / 2),
            "page {} of child {}: {leaf:?}",
            k / 2,
            k % 2
        );
    }
    children[1].stop();
    walker.walk(&request, &mut leaves).unwrap();
    for (k, leaf) in leaves.iter().enumerate() {
        match k % 2 {
            0 => assert_eq!(leaf.accessed(), Child::is_hot(k / 2), "{leaf:?}"),
            _ => assert_eq!(*leaf, Leaf::Gone, "page {} of the child that exited", k / 2),
        }
    }
    children[0].stop();
}
