//! The kdamond observer's side of the object: attaches the `damon:damon_aggregated` program and
//! reads what it summed per target, and the region stream when recording.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use damon_common::{
    kdamond::{
        KDAMOND_RING_BYTES, KdamondConfig, KdamondKey, KdamondRegion, KdamondTarget,
        MAX_KDAMOND_TARGETS, SchemeKey, SchemeSums, damon_aggregated, damos_before_apply,
        damos_esz,
    },
    names,
};

use super::object::{KernelTypes, Object, take_map};
use crate::sys::tracefs;

pub struct KdamondProbe {
    targets: HashMap<MapData, KdamondKey, KdamondTarget>,
    schemes: HashMap<MapData, SchemeKey, SchemeSums>,
    regions: Option<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    /// Whether the live intervals are read from each kdamond's context.
    pub live_intervals: bool,
    /// The DAMOS tracepoints this kernel has, followed.
    pub scheme_events: Vec<&'static str>,
    /// Keeps the program attached.
    _bpf: Ebpf,
}

impl KdamondProbe {
    /// Attaches to `damon:damon_aggregated`: for kdamond thread `pid` only (0: every one), and
    /// with every region streamed when `record`.
    pub fn attach(pid: u32, record: bool) -> Result<Self> {
        let tracefs = tracefs::ensure_mounted()?.path();
        check_layout(tracefs, damon_aggregated::NAME, &damon_aggregated::FIELDS)?;
        let types = KernelTypes::read()?;
        let ctx = types.offsets.kdamond_ctx;
        let ring = if record { KDAMOND_RING_BYTES } else { 4096 };
        let object = Object::load_sized(
            types,
            &[
                (names::KDAMOND_TARGETS, MAX_KDAMOND_TARGETS),
                (names::KDAMOND_SCHEMES, MAX_KDAMOND_TARGETS),
                (names::KDAMOND_REGIONS, ring),
            ],
        )?;
        let mut bpf = object.bpf;
        let [task_worker_private, kthread_data, ctx_kdamond] = ctx.unwrap_or([0; 3]);
        let config = KdamondConfig {
            pid,
            record: record.into(),
            task_worker_private,
            kthread_data,
            ctx_kdamond,
        };
        let mut config_map: Array<_, KdamondConfig> =
            Array::try_from(take_map(&mut bpf, names::KDAMOND_CONFIG)?)?;
        config_map.set(0, config, 0).context("cannot configure the kdamond observer")?;
        attach_one(&mut bpf, names::DAMON_AGGREGATED, damon_aggregated::NAME)?;
        // DAMOS events where the kernel has them (6.7+, 6.17+) and their records are as expected.
        let mut scheme_events = Vec::new();
        for (program, event, fields) in [
            (names::DAMOS_BEFORE_APPLY, damos_before_apply::NAME, &damos_before_apply::FIELDS[..]),
            (names::DAMOS_ESZ, damos_esz::NAME, &damos_esz::FIELDS[..]),
        ] {
            if check_layout(tracefs, event, fields).is_ok() {
                attach_one(&mut bpf, program, event)?;
                scheme_events.push(event);
            }
        }
        Ok(Self {
            targets: HashMap::try_from(take_map(&mut bpf, names::KDAMOND_TARGETS)?)?,
            schemes: HashMap::try_from(take_map(&mut bpf, names::KDAMOND_SCHEMES)?)?,
            regions: if record {
                Some(RingBuf::try_from(take_map(&mut bpf, names::KDAMOND_REGIONS)?)?)
            } else {
                None
            },
            lost: PerCpuArray::try_from(take_map(&mut bpf, names::KDAMOND_LOST)?)?,
            live_intervals: ctx.is_some(),
            scheme_events,
            _bpf: bpf,
        })
    }

    /// Every target seen so far, with what the program summed.
    pub fn targets(&self) -> Vec<(KdamondKey, KdamondTarget)> {
        self.targets.iter().filter_map(Result::ok).collect()
    }

    /// Every scheme seen so far, with what it was tried on.
    pub fn schemes(&self) -> Vec<(SchemeKey, SchemeSums)> {
        self.schemes.iter().filter_map(Result::ok).collect()
    }

    /// Forgets a kdamond's targets and schemes (it is gone).
    pub fn forget(&mut self, pid: u32) {
        for (key, _) in self.targets().into_iter().filter(|(k, _)| k.pid == pid) {
            let _ = self.targets.remove(&key);
        }
        for (key, _) in self.schemes().into_iter().filter(|(k, _)| k.pid == pid) {
            let _ = self.schemes.remove(&key);
        }
    }

    /// Hands every streamed region waiting to `each`.
    pub fn drain(&mut self, mut each: impl FnMut(KdamondRegion)) {
        let Some(ring) = self.regions.as_mut() else { return };
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<KdamondRegion>() {
                // SAFETY: the item holds a whole `KdamondRegion`, written by the program;
                // read unaligned, as ring items are only 8-byte aligned by convention.
                each(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
    }

    /// Regions the stream dropped so far (ring buffer full).
    pub fn lost(&self) -> u64 {
        self.lost.get(&0, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
    }
}

fn attach_one(bpf: &mut Ebpf, program: &str, event: &str) -> Result<()> {
    let category = damon_aggregated::CATEGORY;
    let tp: &mut TracePoint = bpf
        .program_mut(program)
        .with_context(|| format!("eBPF object has no {program} program"))?
        .try_into()?;
    super::refused::load(tp.load(), program, &format!("the {program} program"))?;
    tp.attach(category, event).with_context(|| format!("cannot attach to {category}:{event}"))?;
    Ok(())
}

/// The programs read records' fields at fixed offsets; refuse a kernel that moved them.
fn check_layout(tracefs: &str, name: &str, fields: &[(&str, usize)]) -> Result<()> {
    let category = damon_aggregated::CATEGORY;
    if !std::path::Path::new(&format!("{tracefs}/events/{category}/{name}")).is_dir() {
        bail!("this kernel has no {category}:{name} tracepoint (no CONFIG_DAMON)");
    }
    for &(field, expected) in fields {
        let found = tracefs::field_offset(tracefs, category, name, field)?;
        if found != expected {
            bail!("{category}:{name} has `{field}` at offset {found}, udamon expects {expected}");
        }
    }
    Ok(())
}
