//! vaddr's regions: the kernel's "three regions" around the two biggest unmapped gaps (between
//! heap and mmap area, and below the stack), at page granularity.

use damon_engine::set_regions;

/// The kernel's page-granular `DAMON_MIN_REGION_SZ`, which vaddr's region construction uses.
pub const PAGE_SIZE: u64 = 4096;

/// vaddr's initial ranges: from the first to the last mapping, minus the two biggest gaps.
/// `None` when there are fewer than two gaps (the target then gets no regions).
pub fn three_regions(mappings: &[(u64, u64)]) -> Option<[(u64, u64); 3]> {
    let (first, last) = (mappings.first()?, mappings.last()?);
    let (mut biggest, mut second) = ((0, 0), (0, 0));
    let size = |(s, e): (u64, u64)| e - s;
    for pair in mappings.windows(2) {
        let gap = (pair[0].1, pair[1].0);
        if gap.1 <= gap.0 {
            continue;
        }
        // Strict comparisons: on ties the earlier gap wins.
        if size(gap) > size(biggest) {
            second = biggest;
            biggest = gap;
        } else if size(gap) > size(second) {
            second = gap;
        }
    }
    if size(biggest) == 0 || size(second) == 0 {
        return None;
    }
    let (g1, g2) = if biggest.0 < second.0 { (biggest, second) } else { (second, biggest) };
    let up = |x: u64| x.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    Some([(up(first.0), up(g1.0)), (up(g1.1), up(g2.0)), (up(g2.1), up(last.1))])
}

/// The ranges a process with `mappings` is monitored over: the three regions, or, with fewer
/// than two gaps, one range from the first mapping to the last; cut at the edges of `apart`
/// (memory whose samples read differently, which must not share a region with the rest);
/// fitted to `regions`.
pub fn fit(
    regions: &mut Vec<damon_engine::Region>,
    mappings: &[(u64, u64)],
    apart: &[(u64, u64)],
) -> anyhow::Result<()> {
    let (Some(first), Some(last)) = (mappings.first(), mappings.last()) else {
        anyhow::bail!("no mappings");
    };
    let ranges = three_regions(mappings).map_or_else(|| vec![(first.0, last.1)], |r| r.to_vec());
    set_regions::set_regions(regions, &cut_at(&ranges, apart), PAGE_SIZE)
}

/// `ranges` cut wherever an edge of one of `apart` falls inside them.
fn cut_at(ranges: &[(u64, u64)], apart: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len() + 2 * apart.len());
    for &(start, end) in ranges {
        let mut edges: Vec<u64> = apart
            .iter()
            .flat_map(|&(s, e)| [s, e])
            .map(|x| x / PAGE_SIZE * PAGE_SIZE)
            .filter(|&x| x > start && x < end)
            .collect();
        edges.sort_unstable();
        edges.dedup();
        let mut at = start;
        for edge in edges.into_iter().chain([end]) {
            out.push((at, edge));
            at = edge;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn three_regions_cut_the_two_biggest_gaps() {
        // heap | big gap | libs | small gap | more | biggest gap | stack
        let maps = [(P, 3 * P), (100 * P, 110 * P), (112 * P, 120 * P), (1000 * P, 1002 * P)];
        assert_eq!(
            three_regions(&maps),
            Some([(P, 3 * P), (100 * P, 120 * P), (1000 * P, 1002 * P)])
        );
    }

    #[test]
    fn three_regions_ties_keep_the_earlier_gap_and_round_up() {
        // Three gaps of exactly 10 pages: the first two win; unaligned ends round up.
        let maps = [(0, P + 1), (11 * P + 1, 13 * P), (23 * P, 24 * P), (34 * P, 35 * P + 7)];
        assert_eq!(three_regions(&maps), Some([(0, 2 * P), (12 * P, 13 * P), (23 * P, 36 * P)]));
    }

    #[test]
    fn ranges_are_cut_at_the_edges_of_memory_kept_apart() {
        let ranges = [(0, 100 * P), (200 * P, 300 * P)];
        let apart = [(10 * P, 20 * P), (250 * P, 400 * P), (500 * P, 600 * P)];
        assert_eq!(
            cut_at(&ranges, &apart),
            [
                (0, 10 * P),
                (10 * P, 20 * P),
                (20 * P, 100 * P),
                (200 * P, 250 * P),
                (250 * P, 300 * P)
            ]
        );
        let mut regions = vec![damon_engine::Region::new(0, 100 * P)];
        fit(&mut regions, &[(0, P), (P, 2 * P), (99 * P, 100 * P)], &[(10 * P, 20 * P)]).unwrap();
        let bounds: Vec<(u64, u64)> = regions.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(bounds, [(0, 10 * P), (10 * P, 20 * P), (20 * P, 100 * P)]);
    }

    #[test]
    fn three_regions_need_two_gaps() {
        assert_eq!(three_regions(&[(0, P), (2 * P, 3 * P)]), None);
        assert_eq!(three_regions(&[(0, P), (P, 2 * P), (2 * P, 3 * P)]), None);
        assert_eq!(three_regions(&[]), None);
    }
}
