//! The eBPF object in the running kernel: the page-fault tracepoint program pushes records
//! through the BPF ring buffer and userspace reads them back intact.

use damon_common::FaultRecord;
use damon_user::{
    dataplane::{DataPlane, FaultStream},
    sys::anon::{AnonMapping, PAGE_SIZE},
};

const WRITE_FAULT: u64 = 1 << 1;
const USER_MODE: u64 = 1 << 2;

fn attach() -> FaultStream {
    let (_, faults) =
        DataPlane::load().and_then(|plane| plane.start(true)).expect("the data plane");
    faults.expect("asked for").expect("load and attach the fault program")
}

fn drain(stream: &mut FaultStream) -> Vec<FaultRecord> {
    let mut records = Vec::new();
    stream.drain(|record| records.push(record));
    records
}

#[test]
fn own_page_faults_arrive_with_exact_addresses() {
    if !damon_user::test_support::privileged("own_page_faults_arrive_with_exact_addresses") {
        return;
    }
    let mut stream = attach();
    let me = std::process::id();
    stream.add_target(me).unwrap();

    let area = AnonMapping::new(64).unwrap();
    (0..64).for_each(|page| area.touch(page));
    let records = drain(&mut stream);

    assert!(records.iter().all(|r| r.tgid == me), "a record of another process leaked through");
    for page in 0..64 {
        let addr = (area.addr() + page * PAGE_SIZE) as u64;
        let fault = records.iter().find(|r| r.addr == addr);
        let fault = fault.unwrap_or_else(|| panic!("no fault record for page {page} at {addr:#x}"));
        assert_eq!(fault.error_code & (WRITE_FAULT | USER_MODE), WRITE_FAULT | USER_MODE);
    }
    assert_eq!(stream.lost().unwrap(), 0);

    // Once removed from the filter, our faults stop.
    stream.remove_target(me).unwrap();
    let later = AnonMapping::new(16).unwrap();
    (0..16).for_each(|page| later.touch(page));
    let range = later.addr() as u64..(later.addr() + later.len()) as u64;
    assert!(!drain(&mut stream).iter().any(|r| range.contains(&r.addr)));
}

#[test]
fn faults_of_another_process_are_streamed_and_others_filtered_out() {
    if !damon_user::test_support::privileged(
        "faults_of_another_process_are_streamed_and_others_filtered_out",
    ) {
        return;
    }
    let mut stream = attach();
    // The child waits for the go before it writes, so it is in the filter before it faults.
    let child = tests::OneShotWriter::spawn(1024);
    let (pid, area) = (child.pid, child.area as u64);
    stream.add_target(pid).unwrap();
    assert!(child.run(), "the writer child failed");
    // Our own faults are not wanted: make some.
    let ours = AnonMapping::new(8).unwrap();
    (0..8).for_each(|page| ours.touch(page));

    let records = drain(&mut stream);
    assert!(records.iter().all(|r| r.tgid == pid), "records of unmonitored processes");
    assert!(records.iter().all(|r| r.error_code & USER_MODE != 0));
    // Every page the child wrote faulted once, at its exact address (THP is off for the area
    // only under `never`/`madvise`; under `always` one fault may cover 512 pages).
    let written =
        records.iter().filter(|r| (area..area + 1024 * PAGE_SIZE as u64).contains(&r.addr));
    let pages: std::collections::BTreeSet<u64> =
        written.map(|r| (r.addr - area) / PAGE_SIZE as u64).collect();
    assert!(pages.len() >= 2, "only {} of the child's 1024 written pages faulted", pages.len());
    if !thp_always() {
        assert_eq!(pages.len(), 1024, "some of the child's page faults were not streamed");
    }
    assert_eq!(stream.lost().unwrap(), 0);
}

fn thp_always() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]"))
}
