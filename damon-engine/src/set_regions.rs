//! Fitting a target's regions to address ranges: the kernel's `damon_set_regions`.

use anyhow::{Result, bail};

use crate::region::{Region, align_down, align_up};

/// Makes `regions` cover exactly `ranges` (sorted, non-overlapping after alignment to `min_sz`):
/// regions outside every range go, regions inside keep their counts while their boundaries move,
/// and holes are filled with fresh regions.
pub fn set_regions(regions: &mut Vec<Region>, ranges: &[(u64, u64)], min_sz: u64) -> Result<()> {
    let mut last_end = 0;
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let (start, end) = (align_down(start, min_sz), align_up(end, min_sz));
        if start >= end {
            bail!("empty range {start:#x}..{end:#x} after alignment to {min_sz}");
        }
        if i > 0 && last_end > start {
            bail!("range {start:#x}..{end:#x} overlaps the previous one");
        }
        last_end = end;
    }
    let intersects = |r: &Region, &(s, e): &(u64, u64)| !(r.end <= s || e <= r.start);
    regions.retain(|r| ranges.iter().any(|range| intersects(r, range)));
    let fresh = |&(s, e): &(u64, u64)| Region::new(align_down(s, min_sz), align_up(e, min_sz));
    if regions.is_empty() {
        regions.extend(ranges.iter().map(fresh));
        return Ok(());
    }
    let mut cursor = 0;
    // The last region cut short at the end of a range, as it was: a range after it that it
    // reached into gets a region that inherits how it was sampled.
    let mut clipped: Option<Region> = None;
    for range in ranges {
        let mut first_last = None;
        let mut stopped_early = false;
        while cursor < regions.len() {
            let r = &regions[cursor];
            if intersects(r, range) {
                first_last = Some((first_last.map_or(cursor, |(f, _)| f), cursor));
            }
            if r.start >= range.1 {
                stopped_early = true;
                break;
            }
            cursor += 1;
        }
        match first_last {
            None => {
                // Before the region where the scan stopped, or at the tail.
                let at = if stopped_early { cursor } else { regions.len() };
                let region = fresh(range);
                let region = match clipped.filter(|c| intersects(c, &(region.start, region.end))) {
                    Some(template) => region.sampled_like(&template),
                    None => region,
                };
                regions.insert(at, region);
                cursor = at + 1;
            }
            Some((first, last)) => {
                regions[first].start = align_down(range.0, min_sz);
                let end = align_up(range.1, min_sz);
                clipped = (regions[last].end > end).then_some(regions[last]);
                regions[last].end = end;
                let filled = fill_holes(regions, first, last);
                cursor += filled;
            }
        }
    }
    Ok(())
}

/// Inserts fresh regions into the gaps between `first..=last`; returns how many.
fn fill_holes(regions: &mut Vec<Region>, first: usize, mut last: usize) -> usize {
    let mut inserted = 0;
    let mut i = first;
    while i < last {
        let (end, next_start) = (regions[i].end, regions[i + 1].start);
        if end != next_start {
            regions.insert(i + 1, Region::new(end, next_start));
            inserted += 1;
            last += 1;
            i += 1;
        }
        i += 1;
    }
    inserted
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn bounds(regions: &[Region]) -> Vec<(u64, u64)> {
        regions.iter().map(|r| (r.start, r.end)).collect()
    }

    fn counted(start: u64, end: u64, nr: u32) -> Region {
        Region { nr_accesses: nr, age: 5, ..Region::new(start, end) }
    }

    #[test]
    fn empty_target_gets_one_aligned_region_per_range() {
        let mut regions = Vec::new();
        set_regions(&mut regions, &[(100, 5000), (3 * P, 4 * P + 1)], P).unwrap();
        assert_eq!(bounds(&regions), vec![(0, 2 * P), (3 * P, 5 * P)]);
    }

    #[test]
    fn rejects_empty_and_overlapping_ranges() {
        let mut regions = Vec::new();
        assert!(set_regions(&mut regions, &[(P, P)], P).is_err());
        assert!(set_regions(&mut regions, &[(0, 2 * P), (P + 1, 3 * P)], P).is_err());
        assert!(regions.is_empty());
    }

    #[test]
    fn keeps_counts_moves_boundaries_fills_holes_and_drops_outsiders() {
        let mut regions = vec![
            counted(0, 2 * P, 1),       // outside every range: dropped
            counted(10 * P, 12 * P, 2), // first of range 1
            counted(14 * P, 16 * P, 3), // last of range 1; hole before it
            counted(30 * P, 32 * P, 4), // inside range 2
        ];
        set_regions(&mut regions, &[(9 * P + 5, 18 * P), (29 * P, 33 * P)], P).unwrap();
        assert_eq!(
            bounds(&regions),
            vec![(9 * P, 12 * P), (12 * P, 14 * P), (14 * P, 18 * P), (29 * P, 33 * P)]
        );
        let counts: Vec<(u32, u32)> = regions.iter().map(|r| (r.nr_accesses, r.age)).collect();
        assert_eq!(counts, vec![(2, 5), (0, 0), (3, 5), (4, 5)]);
    }

    /// A region cut at a range's end (memory set apart inside what it covered) leaves the
    /// ranges it reached into regions sampled as it was: no window of full sampling after
    /// every update for memory whose rate is known.
    #[test]
    fn a_range_cut_from_a_region_is_sampled_as_it_was() {
        let quiet = Region { plan: 4 | crate::region::QUIET, ..counted(0, 8 * P, 0) };
        let mut regions = vec![quiet];
        set_regions(&mut regions, &[(0, 4 * P), (4 * P, 6 * P), (6 * P, 8 * P)], P).unwrap();
        assert_eq!(bounds(&regions), vec![(0, 4 * P), (4 * P, 6 * P), (6 * P, 8 * P)]);
        assert_eq!(regions[1].plan, quiet.plan);
        // Counts are the kernel's: a region new to the range starts afresh.
        assert_eq!((regions[1].nr_accesses, regions[1].age), (0, 0));
        // Memory no region covered is sampled fully, as any new memory.
        let mut regions = vec![quiet];
        set_regions(&mut regions, &[(0, 8 * P), (20 * P, 21 * P)], P).unwrap();
        assert_eq!(regions[1].plan, 0);
    }

    #[test]
    fn a_range_with_no_region_gets_a_fresh_one_in_address_order() {
        let mut regions = vec![counted(0, P, 1), counted(20 * P, 21 * P, 2)];
        set_regions(&mut regions, &[(0, P), (5 * P, 6 * P), (20 * P, 21 * P), (40 * P, 41 * P)], P)
            .unwrap();
        assert_eq!(
            bounds(&regions),
            vec![(0, P), (5 * P, 6 * P), (20 * P, 21 * P), (40 * P, 41 * P)]
        );
        assert_eq!(regions[1].nr_accesses, 0);
        assert_eq!(regions[2].nr_accesses, 2);
    }
}
