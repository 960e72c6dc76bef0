//! The built-in scenarios (see `../shared/spec/simulator.md`). `udamon sim --print-scenario NAME`
//! prints any of them as TOML, a starting point for your own.

use super::scenario::{EventKind, EventSpec, InitialRegions, RangeSpec, Scenario};
use crate::{
    Attrs,
    rng::{RandVersion, Rng},
    units::{Micros, Size},
};

pub const NAMES: [&str; 9] = [
    "seed-corner",
    "seed-reproducer",
    "stairs",
    "flat",
    "sparse-spots",
    "needle",
    "gradient",
    "phases",
    "mixed-spots",
];

pub fn get(name: &str) -> Option<Scenario> {
    match name {
        "seed-corner" => Some(seed_corner()),
        "seed-reproducer" => Some(seed_reproducer()),
        "stairs" => Some(stairs()),
        "flat" => Some(flat()),
        "sparse-spots" => Some(sparse_spots()),
        "needle" => Some(needle()),
        "gradient" => Some(gradient()),
        "phases" => Some(phases()),
        "mixed-spots" => Some(mixed_spots()),
        _ => None,
    }
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const SECOND: u64 = 1_000_000;

fn range(start: u64, end: u64, probability: f64) -> RangeSpec {
    RangeSpec { start: Size(start), end: Size(end), probability, repeat: 1, stride: None }
}

/// The report's picture: 799 small regions alternating hot and cold, which can never merge, and
/// one large uniformly accessed region. With max 1500 that is over max/2, so kernels up to 7.2
/// never split again, and a cold sub-area that later appears inside the large region stays unseen.
fn seed_corner() -> Scenario {
    const SMALL: u64 = 4 * MIB;
    const NR_SMALL: u64 = 799;
    let large_start = NR_SMALL * SMALL;
    let large_end = large_start + 4 * GIB;
    let cold_start = large_start + 1536 * MIB;
    Scenario {
        name: "seed-corner".into(),
        description:
            "799 alternating hot/cold 4 MiB regions and a 4 GiB region at 50 %; at 30 s a \
                      512 MiB sub-area of the large region goes cold (max 1500)"
                .into(),
        size: Size(large_end),
        duration: Micros(120 * SECOND),
        seed: 1,
        initial_regions: InitialRegions::Truth,
        attrs: Attrs { max_nr_regions: 1500, ..Attrs::default() },
        ranges: vec![
            RangeSpec {
                start: Size(0),
                end: Size(SMALL),
                probability: 0.8,
                repeat: NR_SMALL.div_ceil(2),
                stride: Some(Size(2 * SMALL)),
            },
            range(large_start, large_end, 0.5),
        ],
        events: vec![EventSpec {
            at: Micros(30 * SECOND),
            kind: EventKind::Change,
            start: Size(cold_start),
            end: Size(cold_start + 512 * MIB),
            probability: Some(0.0),
            to: None,
        }],
    }
}

/// Access probabilities per 50 ms sample of the seven stress-ng `--vm-method`s' pages, from the
/// fastest sweep to the slowest: distinct enough not to merge with each other.
const HOT_GROUPS: [f64; 7] = [0.95, 0.8, 0.65, 0.5, 0.35, 0.22, 0.1];

/// The production reproducer as a model: 16 GiB of physical memory where a 4 GiB area touched
/// once (cold), 5 GiB of free memory and seven 1 GiB groups of hot producer pages interleave in
/// chunks, as the page allocator handed them out. Sampling 50 ms, aggregation 1 s, max 200.
fn seed_reproducer() -> Scenario {
    // The layout is fixed (its own seed), so runs with different seeds monitor the same machine.
    let mut layout = Rng::new(0x5eed);
    let size = 16 * GIB;
    // Chunk sizes uniform in 8..56 MiB: about 500 chunks, which with same-kind neighbours and
    // the two unaccessed kinds joining leaves 300-400 distinguishable runs.
    let (min_chunk, max_chunk) = (13 * MIB, 76 * MIB);
    // Weights in GiB: cold 4, free 5, each hot group 1.
    let weights: Vec<(f64, u64)> =
        [(0.0, 4), (0.0, 5)].into_iter().chain(HOT_GROUPS.iter().map(|&p| (p, 1))).collect();
    let total_weight: u64 = weights.iter().map(|w| w.1).sum();
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < size {
        let chunk = (min_chunk + layout.range(0, max_chunk - min_chunk + 1, RandVersion::Newest))
            / (2 * MIB)
            * (2 * MIB);
        let end = (at + chunk).min(size);
        let mut pick = layout.range(0, total_weight, RandVersion::Newest);
        let probability = weights
            .iter()
            .find(|w| {
                let hit = pick < w.1;
                pick = pick.saturating_sub(w.1);
                hit
            })
            .map_or(0.0, |w| w.0);
        if probability > 0.0 {
            ranges.push(range(at, end, probability));
        }
        at = end;
    }
    Scenario {
        name: "seed-reproducer".into(),
        description: "16 GiB physical memory: cold, free and seven hot stress-ng groups \
                      interleaved in 8-56 MiB chunks; sample 50 ms, aggr 1 s, update 1 s, \
                      min 10, max 200, one hour"
            .into(),
        size: Size(size),
        duration: Micros(3600 * SECOND),
        seed: 1,
        initial_regions: InitialRegions::Whole,
        attrs: Attrs {
            sample_us: 50_000,
            aggr_us: SECOND,
            ops_update_us: SECOND,
            min_nr_regions: 10,
            max_nr_regions: 200,
            ..Attrs::default()
        },
        ranges,
        events: Vec::new(),
    }
}

/// masim's "stairs": a hot band walks across the space one band-width every 5 s. Regions are
/// scarce (max 24, over the 10 the size limit forces), so following it is the policy's job.
fn stairs() -> Scenario {
    const BAND: u64 = 64 * MIB;
    const STEPS: u64 = 15;
    let events = (1..=STEPS)
        .map(|step| EventSpec {
            at: Micros(step * 5 * SECOND),
            kind: EventKind::Move,
            start: Size((step - 1) * BAND),
            end: Size(step * BAND),
            probability: None,
            to: Some(Size(step * BAND)),
        })
        .collect();
    Scenario {
        name: "stairs".into(),
        description: "a 64 MiB band at 90 % steps across 1 GiB every 5 s (max 24)".into(),
        size: Size(GIB),
        duration: Micros((STEPS + 1) * 5 * SECOND),
        seed: 1,
        initial_regions: InitialRegions::Whole,
        attrs: Attrs { max_nr_regions: 24, ..Attrs::default() },
        ranges: vec![range(0, BAND, 0.9)],
        events,
    }
}

/// A scenario over `[0, size)` with default attributes but `max_nr_regions`, from the whole
/// space as one region.
fn plain(name: &str, description: &str, size: u64, seconds: u64, max: u32) -> Scenario {
    Scenario {
        name: name.into(),
        description: description.into(),
        size: Size(size),
        duration: Micros(seconds * SECOND),
        seed: 1,
        initial_regions: InitialRegions::Whole,
        attrs: Attrs { max_nr_regions: max, ..Attrs::default() },
        ranges: Vec::new(),
        events: Vec::new(),
    }
}

/// Flat memory: any region describes it as well as any other; what a policy spends on it is
/// waste.
fn flat() -> Scenario {
    Scenario {
        ranges: vec![range(0, 8 * GIB, 0.5)],
        ..plain("flat", "8 GiB accessed uniformly at 50 % (max 1000)", 8 * GIB, 60, 1000)
    }
}

/// The "small hot set in a huge space": 300 hot 2 MiB spots at random places in 30 GiB.
fn sparse_spots() -> Scenario {
    const SLOT: u64 = 100 * MIB;
    let mut layout = Rng::new(0x5907);
    let ranges = (0..300)
        .map(|i| {
            let at = i * SLOT + layout.range(0, (SLOT - 2 * MIB) / MIB, RandVersion::Newest) * MIB;
            range(at, at + 2 * MIB, 0.9)
        })
        .collect();
    Scenario {
        ranges,
        ..plain(
            "sparse-spots",
            "300 spots of 2 MiB at 90 %, one at a random place in every 100 MiB of 30 GiB, the \
             rest idle (max 1000)",
            300 * SLOT,
            180,
            1000,
        )
    }
}

/// A needle: one 2 MiB spot appears in 64 GiB of idle memory.
fn needle() -> Scenario {
    let at = 40 * GIB + 6 * MIB;
    Scenario {
        events: vec![EventSpec {
            at: Micros(20 * SECOND),
            kind: EventKind::Change,
            start: Size(at),
            end: Size(at + 2 * MIB),
            probability: Some(0.9),
            to: None,
        }],
        ..plain(
            "needle",
            "64 GiB idle; at 20 s a 2 MiB spot at 90 % appears (max 1000)",
            64 * GIB,
            180,
            1000,
        )
    }
}

/// A gradient: the rate rises in 256 small steps from idle to 95 % across 4 GiB, with too few
/// regions (max 64) for a step each, so where the boundaries go decides the error.
fn gradient() -> Scenario {
    const STEPS: u64 = 256;
    const STEP: u64 = 16 * MIB;
    let ranges = (1..STEPS)
        .map(|k| range(k * STEP, (k + 1) * STEP, 0.95 * k as f64 / (STEPS - 1) as f64))
        .collect();
    Scenario {
        ranges,
        ..plain(
            "gradient",
            "4 GiB whose rate rises from 0 to 95 % in 256 steps of 16 MiB (max 64)",
            STEPS * STEP,
            120,
            64,
        )
    }
}

/// Periodic phases: two 1 GiB working sets in 4 GiB take turns, hot (80 %) and nearly idle
/// (2 %), every 10 s, as a batch job alternating between two stages.
fn phases() -> Scenario {
    const PERIOD: u64 = 10;
    let (a, b) = ((512 * MIB, 1536 * MIB), (2560 * MIB, 3584 * MIB));
    let change = |at: u64, (start, end): (u64, u64), probability: f64| EventSpec {
        at: Micros(at * SECOND),
        kind: EventKind::Change,
        start: Size(start),
        end: Size(end),
        probability: Some(probability),
        to: None,
    };
    let events = (1..12)
        .flat_map(|k| {
            let (hot, cold) = if k % 2 == 0 { (a, b) } else { (b, a) };
            [change(k * PERIOD, hot, 0.8), change(k * PERIOD, cold, 0.02)]
        })
        .collect();
    Scenario {
        ranges: vec![range(a.0, a.1, 0.8), range(b.0, b.1, 0.02)],
        events,
        ..plain(
            "phases",
            "two 1 GiB areas in 4 GiB swap between 80 % and 2 % every 10 s (max 200)",
            4 * GIB,
            120,
            200,
        )
    }
}

/// Spots of mixed sizes (1 to 64 MiB) and densities (10 to 90 %), every combination, at random
/// places in 16 GiB of idle memory: no one size or rate to tune for.
fn mixed_spots() -> Scenario {
    const SLOT: u64 = 160 * MIB;
    const SIZES: [u64; 4] = [MIB, 4 * MIB, 16 * MIB, 64 * MIB];
    const RATES: [f64; 4] = [0.9, 0.6, 0.3, 0.1];
    let mut layout = Rng::new(0x3d5);
    let ranges = (0..100u64)
        .map(|i| {
            let size = SIZES[i as usize % 4];
            let at = i * SLOT + layout.range(0, (SLOT - size) / MIB, RandVersion::Newest) * MIB;
            range(at, at + size, RATES[i as usize / 4 % 4])
        })
        .collect();
    Scenario {
        ranges,
        ..plain(
            "mixed-spots",
            "100 spots of 1, 4, 16 and 64 MiB at 90, 60, 30 and 10 %, one at a random place in \
             every 160 MiB of 16 GiB, the rest idle (max 1000)",
            100 * SLOT,
            180,
            1000,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_survive_toml() {
        for name in NAMES {
            let scenario = get(name).unwrap();
            let warnings = scenario.validate().unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(warnings.is_empty(), "{name}: {warnings:?}");
            let again = Scenario::from_toml(&scenario.to_toml()).unwrap();
            assert_eq!(again.to_toml(), scenario.to_toml(), "{name}");
        }
        assert!(get("nope").is_none());
    }

    #[test]
    fn seed_corner_starts_above_half_of_max() {
        let s = get("seed-corner").unwrap();
        let truth = s.initial_truth();
        // 799 small pieces plus the large one.
        assert_eq!(truth.pieces().count(), 800);
        assert!(800 > s.attrs.max_nr_regions / 2);
    }
}
