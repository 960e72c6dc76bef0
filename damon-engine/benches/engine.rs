//! `cargo xtask bench` (engine part): the region engine's speed and memory. Prints one line per
//! figure; docs/benchmarks.md quotes them next to this command.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use damon_engine::{
    Access, Attrs, Config, Context, CoreVersion, Operations, Region, SplitPolicy, Target,
    rng::Rng,
    sim::{self, builtin, truth::Truth},
};

/// Counts live heap bytes, to measure what the engine keeps per region.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const REGIONS: usize = 20_000;
const CHUNK: u64 = 64 << 10;

/// Accesses drawn from a truth of `REGIONS` alternating hot and cold chunks, which never merge.
struct Bench {
    truth: Truth,
    rng: Rng,
}

impl Operations for Bench {
    fn init(&mut self, _: &mut [Target]) -> anyhow::Result<()> {
        Ok(())
    }
    fn update(&mut self, _: &mut [Target]) -> anyhow::Result<()> {
        Ok(())
    }
    fn prepare_access_checks(&mut self, _: &[Target], _: &[u64]) {}
    fn check_accesses(&mut self, targets: &[Target], results: &mut [Access]) {
        for (r, out) in targets.iter().flat_map(|t| &t.regions).zip(results) {
            let hit = self.truth.accessed(r.sampling_addr, self.rng.next_u64());
            *out = if hit { Access::Accessed } else { Access::Idle };
        }
    }
    fn target_valid(&mut self, _: &Target) -> bool {
        true
    }
}

fn setup(policy: SplitPolicy, max_nr_regions: u32) -> (Context, Bench) {
    let size = REGIONS as u64 * CHUNK;
    let mut truth = Truth::new(size);
    for i in (0..REGIONS as u64).step_by(2) {
        truth.set(i * CHUNK, (i + 1) * CHUNK, 0.8);
    }
    let regions = (0..REGIONS as u64).map(|i| Region::new(i * CHUNK, (i + 1) * CHUNK)).collect();
    let attrs = Attrs { max_nr_regions, ..Attrs::default() };
    let config =
        Config { attrs, policy, version: CoreVersion::Newest, seed: 1, ..Config::default() };
    let ctx = Context::new(config, vec![Target { id: 0, regions }]).unwrap();
    (ctx, Bench { truth, rng: Rng::new(2) })
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Median and least aggregation time (merge + reset + split, as the engine times it) after the
/// regions settled, and the median sample tick (check and prepare of every region).
fn aggregation_step(
    policy: SplitPolicy,
    max_nr_regions: u32,
) -> (Duration, Duration, Duration, usize) {
    let (mut ctx, mut ops) = setup(policy, max_nr_regions);
    ctx.start(&mut ops).unwrap();
    let (mut aggregations, mut ticks) = (Vec::new(), Vec::new());
    for _ in 0..20 * 40 {
        let t = Instant::now();
        let step = ctx.step(&mut ops, |_, _| {}).unwrap();
        let took = t.elapsed();
        if ctx.counters().aggregations > 10 {
            match step.aggregation {
                Some(aggregation) => aggregations.push(aggregation),
                None => ticks.push(took),
            }
        }
    }
    let least = *aggregations.iter().min().unwrap();
    (median(aggregations), least, median(ticks), ctx.nr_regions())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter.
    println!("engine bench (this machine is shared: compare figures measured in one run)");
    // Max 30000: over max/2, so every policy's own split path runs. Max 20000: full, as in the
    // production report; only merges (and adaptive's evidence upkeep) remain.
    for max in [30_000, 20_000] {
        for policy in SplitPolicy::ALL {
            let (median_aggregation, least, tick, nr) = aggregation_step(policy, max);
            println!(
                "aggregation (merge + reset + split), {REGIONS} regions, max {max}, {:<8} {:>5} us   (median of 30, least {} us; sample tick {} us; {nr} regions after)",
                policy.name(),
                median_aggregation.as_micros(),
                least.as_micros(),
                tick.as_micros(),
            );
        }
    }
    let reproducer = builtin::get("seed-reproducer").unwrap();
    for policy in [SplitPolicy::Adaptive, SplitPolicy::Fraction] {
        let runs: Vec<Duration> = (0..3)
            .map(|_| {
                let t = Instant::now();
                sim::run(&reproducer, sim::Choices { policy, ..Default::default() }, 1).unwrap();
                t.elapsed()
            })
            .collect();
        println!(
            "one simulated hour of seed-reproducer, {:<8}            {:>5} ms   (median of 3)",
            policy.name(),
            median(runs).as_millis()
        );
    }
    let before = LIVE.load(Ordering::Relaxed);
    let (mut ctx, mut ops) = setup(SplitPolicy::Adaptive, 30_000);
    let truth_bytes = LIVE.load(Ordering::Relaxed) - before;
    ctx.start(&mut ops).unwrap();
    for _ in 0..20 * 20 {
        ctx.step(&mut ops, |_, _| {}).unwrap();
    }
    let context_bytes = LIVE.load(Ordering::Relaxed) - before - ops_bytes(&ops, truth_bytes);
    println!(
        "engine state per region (regions, scratch, capacity slack)       {:>5} B    ({} regions; Region itself {} B)",
        context_bytes / ctx.nr_regions(),
        ctx.nr_regions(),
        size_of::<Region>()
    );
}

/// The simulated truth is the operations' memory, not the engine's.
fn ops_bytes(_ops: &Bench, truth_bytes_at_setup: usize) -> usize {
    // Setup allocated the truth and the initial regions; the regions are the engine's.
    truth_bytes_at_setup - REGIONS * size_of::<Region>()
}
