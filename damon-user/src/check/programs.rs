//! Rows about BPF program types: each probe is loaded, attached, and made to fire by this process.

use std::{fs, time::Duration};

use aya::{
    Ebpf,
    maps::Array,
    programs::{
        KProbe, PerfEvent, Program, ProgramError, RawTracePoint, RawTracePointRunOptions, TestRun,
        TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use damon_common::{Probe, names, page_fault_user, raw_tp_probe_answer};

use super::{Row, system::Facts};
use crate::{
    dataplane::Object,
    dataplane::refused,
    sys::{anon::AnonMapping, caps::Capability},
};

struct Spec {
    probe: Probe,
    program: &'static str,
    requirement: &'static str,
    required: bool,
    if_missing: &'static str,
}

const SPECS: [Spec; 5] = [
    Spec {
        probe: Probe::RawTracePointTestRun,
        program: names::PROBE_RAW_TP,
        requirement: "raw_tp test run + bpf_loop",
        required: true,
        if_missing: "all monitoring: the page-table walk and its calibration",
    },
    Spec {
        probe: Probe::TracePoint,
        program: names::PROBE_TRACEPOINT,
        requirement: "tracepoint",
        required: false,
        if_missing: "page-fault hints",
    },
    Spec {
        probe: Probe::PerfEvent,
        program: names::PROBE_PERF_EVENT,
        requirement: "perf_event (software)",
        required: false,
        if_missing: "page-fault hints without tracefs",
    },
    Spec {
        probe: Probe::KProbe,
        program: names::PROBE_KPROBE,
        requirement: "kprobe attach",
        required: false,
        if_missing: "nothing (optional speed-ups on other kernels)",
    },
    Spec {
        probe: Probe::FEntry,
        program: names::PROBE_FENTRY,
        requirement: "fentry",
        required: false,
        if_missing: "nothing (optional speed-ups on other kernels)",
    },
];

/// Kernel function the kprobe and fentry probes attach to; `read(2)` reaches it.
const TRACED_FUNCTION: &str = "vfs_read";
const RAW_TP_ARGUMENT: u64 = 0x1234_5678;

/// Loads the object once, fires each probe from it, then calibrates the walker's layout with it.
pub fn rows(mut facts: Facts) -> Vec<Row> {
    let object = Row::new("eBPF object (maps, ring buffer)", true, "all monitoring");
    let spec_rows = || SPECS.iter().map(|s| Row::new(s.requirement, s.required, s.if_missing));
    let skip_all = |why: &str| -> Vec<Row> {
        std::iter::once(object.clone())
            .chain(spec_rows())
            .chain([walker_row(), layout_row(), folio_row(None)])
            .map(|row| row.skipped(why))
            .collect()
    };
    if !(facts.caps.has(Capability::Bpf) && facts.caps.has(Capability::Perfmon)) {
        return skip_all("needs CAP_BPF and CAP_PERFMON");
    }
    let Some(Ok(types)) = facts.types.take() else {
        return skip_all("needs kernel BTF");
    };
    let mut loaded = match Object::load(types) {
        Ok(loaded) => loaded,
        Err(err) => {
            let mut rows = vec![object.missing(format!("{err:#}"))];
            rows.extend(spec_rows().map(|row| row.skipped("the eBPF object did not load")));
            rows.push(walker_row().skipped("the eBPF object did not load"));
            rows.push(layout_row().skipped("the eBPF object did not load"));
            rows.push(folio_row(None));
            return rows;
        }
    };
    let attached: Vec<Result<(), String>> =
        SPECS.iter().map(|spec| attach(&mut loaded, spec, &facts)).collect();
    exercise();
    let fired = fired_values(loaded.bpf_mut());
    let mut rows = vec![object.ok("loaded")];
    rows.extend(SPECS.iter().zip(attached).map(|(spec, attached)| {
        let row = Row::new(spec.requirement, spec.required, spec.if_missing);
        let expected = match spec.probe {
            Probe::RawTracePointTestRun => raw_tp_probe_answer(RAW_TP_ARGUMENT),
            _ => 1,
        };
        match attached {
            Err(err) => row.missing(err),
            Ok(()) if fired.get(spec.probe as usize) == Some(&expected) => {
                row.ok("loads, attaches, fires")
            }
            Ok(()) => row.missing("attached, but never fired"),
        }
    }));
    rows.push(walker(&mut loaded));
    let layout = layout_row();
    let calibrated = loaded.calibrate().map(|plane| plane.layout());
    rows.push(match &calibrated {
        Ok(l) => layout.ok(format!(
            "{} levels, direct map at {:#x}, mm_struct.pgd +{:#x}, task_struct.mm +{:#x}; {}",
            l.levels,
            l.page_offset_base,
            l.offsets.mm_pgd,
            l.offsets.task_mm,
            l.verified.describe()
        )),
        Err(err) => layout.missing(format!("{err:#}")),
    });
    rows.push(folio_row(calibrated.ok().map(|l| l.folio)));
    rows
}

/// The kernel's verifier checks a program's every path up to this many instructions.
const VERIFIER_LIMIT: u32 = 1_000_000;

/// The walker itself, not only a probe of its program type: its verification depends on the
/// kernel's verifier, which a kernel update can make stricter.
fn walker_row() -> Row {
    Row::new("page-table walker", true, "all monitoring")
}

/// Loads (not attaches) the walker and says how much of the verifier's budget it took.
fn walker(object: &mut Object) -> Row {
    let row = walker_row();
    let Some(Program::RawTracePoint(program)) = object.bpf.program_mut(names::WALK) else {
        return row.missing("the eBPF object has no walker");
    };
    if let Err(err) = program.load() {
        return row.missing(format!("load: {}", refused::describe(&err, names::WALK)));
    }
    match program.info().ok().and_then(|info| info.verified_instruction_count()) {
        Some(n) => row.ok(format!(
            "verified in {n} instructions, {:.1} % of the verifier's limit",
            f64::from(n) * 100.0 / f64::from(VERIFIER_LIMIT)
        )),
        // Kernels before 5.16 do not count.
        None => row.ok("verified"),
    }
}

/// Whether the walker finds sampled pages' folios, which large folios need to be cleared at all
/// (part of one would split it).
fn folio_row(folio: Option<Result<damon_common::FolioLayout, &'static str>>) -> Row {
    let row = Row::new("large folios (mTHP, page cache)", false, "large folios read unknown");
    match folio {
        None => row.skipped("no page-table layout"),
        Some(Err(why)) => row.missing(format!("{why}: never cleared, so never split")),
        Some(Ok(f)) if f.mapcount_offset == u64::MAX => row.ok(format!(
            "struct page at {:#x}; never cleared before kernel 6.10 (whole clears split there)",
            f.vmemmap_base
        )),
        Some(Ok(f)) => row.ok(format!(
            "struct page at {:#x}, {} B each; cleared whole, never split",
            f.vmemmap_base, f.page_size
        )),
    }
}

/// The page-table walker's start-up: offsets from BTF, the calibrated direct map, the check
/// against pagemap.
fn layout_row() -> Row {
    Row::new("page-table layout", true, "all monitoring: the walker's start-up")
}

/// Loads and attaches (or, for raw_tp, test-runs) one probe.
fn attach(object: &mut Object, spec: &Spec, facts: &Facts) -> Result<(), String> {
    let (bpf, btf) = (&mut object.bpf, &object.types.btf);
    let program = bpf
        .program_mut(spec.program)
        .ok_or_else(|| format!("eBPF object has no {} program", spec.program))?;
    match (spec.probe, program) {
        (Probe::TracePoint, Program::TracePoint(p)) => {
            facts.tracefs.as_ref().map_err(|_| "needs tracefs".to_owned())?;
            load_then(spec.program, p, TracePoint::load, |p| {
                p.attach(page_fault_user::CATEGORY, page_fault_user::NAME).map(drop)
            })
        }
        (Probe::RawTracePointTestRun, Program::RawTracePoint(p)) => {
            load_then(spec.program, p, RawTracePoint::load, |p| {
                let mut options = RawTracePointRunOptions::new();
                options.args[0] = RAW_TP_ARGUMENT;
                p.test_run(options).map(drop)
            })
        }
        (Probe::PerfEvent, Program::PerfEvent(p)) => {
            load_then(spec.program, p, PerfEvent::load, |p| {
                let scope = PerfEventScope::OneProcess { pid: std::process::id(), cpu: None };
                let config = PerfEventConfig::Software(SoftwareEvent::PageFaults);
                p.attach(config, scope, SamplePolicy::Period(1), false).map(drop)
            })
        }
        (Probe::KProbe, Program::KProbe(p)) => {
            load_then(spec.program, p, KProbe::load, |p| p.attach(TRACED_FUNCTION, 0).map(drop))
        }
        (Probe::FEntry, Program::FEntry(p)) => {
            load_then(spec.program, p, |p| p.load(TRACED_FUNCTION, btf), |p| p.attach().map(drop))
        }
        _ => Err(format!("{} has an unexpected program type", spec.program)),
    }
}

fn load_then<P>(
    name: &str,
    program: &mut P,
    load: impl FnOnce(&mut P) -> Result<(), ProgramError>,
    then: impl FnOnce(&mut P) -> Result<(), ProgramError>,
) -> Result<(), String> {
    load(program).map_err(|err| format!("load: {}", refused::describe(&err, name)))?;
    then(program).map_err(|err| format!("attach: {}", refused::describe(&err, name)))
}

/// Does what every probe waits for: takes the mmap lock (mmap), faults pages in, calls read(2).
fn exercise() {
    if let Ok(area) = AnonMapping::new(4) {
        (0..4).for_each(|page| area.touch(page));
    }
    let _ = fs::read("/proc/self/stat");
    // perf_event overflow handling can run from irq_work just after the fault returns.
    std::thread::sleep(Duration::from_millis(10));
}

fn fired_values(bpf: &Ebpf) -> Vec<u64> {
    let Some(map) = bpf.map(names::PROBE_FIRED) else {
        return Vec::new();
    };
    let Ok(array) = Array::<_, u64>::try_from(map) else {
        return Vec::new();
    };
    (0..damon_common::NR_PROBES).map(|i| array.get(&i, 0).unwrap_or(0)).collect()
}
