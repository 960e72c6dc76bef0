//! Statistics over a region's quarter evidence (`Quarters`): hit rates, and two-proportion
//! z-tests of whether two sets of samples come from different rates.

use crate::region::Quarters;

/// Fewer samples on a side than this is not evidence.
pub(crate) const MIN_SIDE_SAMPLES: u32 = 8;

/// (hits, samples) of `quarters`.
pub(crate) fn tally(q: &Quarters, quarters: std::ops::Range<usize>) -> (u32, u32) {
    if quarters == (0..4) {
        // The whole region's, asked of every region several times an aggregation: the four
        // bytes summed in a word.
        let sum = |bytes: [u8; 4]| {
            let x = u32::from_le_bytes(bytes);
            let pairs = (x & 0x00ff_00ff) + ((x >> 8) & 0x00ff_00ff);
            (pairs & 0xffff) + (pairs >> 16)
        };
        return (sum(q.hits), sum(q.samples));
    }
    quarters.fold((0, 0), |(h, n), i| (h + q.hits[i] as u32, n + q.samples[i] as u32))
}

/// The squared two-proportion z statistic of `hits / samples` on two sides, computed without
/// divisions: z² = (hl·nr − hr·nl)² · N / (nl · nr · H · (N − H)), H = hl + hr, N = nl + nr.
/// Returns it as (numerator, denominator); `None` without enough samples or without variance.
pub(crate) fn z_squared((hl, nl): (u32, u32), (hr, nr): (u32, u32)) -> Option<(f64, f64)> {
    if nl < MIN_SIDE_SAMPLES || nr < MIN_SIDE_SAMPLES {
        return None;
    }
    // No variance: all hits or none (decided on the integers, the usual case for idle memory).
    let (h, n) = (u64::from(hl) + u64::from(hr), u64::from(nl) + u64::from(nr));
    if h == 0 || h >= n {
        return None;
    }
    let (hl, nl, hr, nr, h, n) = (hl as f64, nl as f64, hr as f64, nr as f64, h as f64, n as f64);
    let d = hl * nr - hr * nl;
    Some((d * d * n, nl * nr * h * (n - h)))
}

/// Whether two windows of the same `samples` (at most 2^27, as the attributes allow) differ by
/// at least z standard errors, exact in integers, z² given as the fraction `num / den`: asked of
/// most neighbour pairs every aggregation. With equal sides z² = 2n·(hl − hr)² / (H·(2n − H)).
pub(crate) fn windows_differ(hl: u32, hr: u32, samples: u32, (num, den): (u64, u64)) -> bool {
    let (hl, hr, n) = (u64::from(hl), u64::from(hr), u64::from(samples));
    let h = hl + hr;
    if n < MIN_SIDE_SAMPLES as u64 || h == 0 || h >= 2 * n {
        return false;
    }
    let d = hl.abs_diff(hr);
    // H·(2n − H) ≤ n², so z² ≥ 2d²/n: enough, without the rest, for windows far apart (most
    // neighbours whose counts already differ).
    if 2 * den * d * d >= num * n {
        return true;
    }
    u128::from(2 * den * n * d) * u128::from(d) >= u128::from(num * h * (2 * n - h))
}

/// `z_squared` for small counts, exact in 64-bit arithmetic: quarter counts (at most 4 ×
/// `Quarters::CAP` samples) on both sides, or on one side and at most 4096 on the other, for
/// thresholds up to z² = 81/16. Runs for every region several times an aggregation.
pub(crate) fn counts_z_squared((hl, nl): (u32, u32), (hr, nr): (u32, u32)) -> Option<(u64, u64)> {
    if nl < MIN_SIDE_SAMPLES || nr < MIN_SIDE_SAMPLES {
        return None;
    }
    let (hl, nl, hr, nr) = (hl as u64, nl as u64, hr as u64, nr as u64);
    let (h, n) = (hl + hr, nl + nr);
    if h == 0 || h == n {
        return None;
    }
    let d = (hl * nr).abs_diff(hr * nl);
    Some((d * d * n, nl * nr * h * (n - h)))
}

/// Whether `counts_z_squared` reaches z² given as the fraction `num / den`.
pub(crate) fn counts_differ(left: (u32, u32), right: (u32, u32), (num, den): (u64, u64)) -> bool {
    counts_z_squared(left, right).is_some_and(|(z_num, z_den)| den * z_num >= num * z_den)
}

/// The absolute difference between two rates.
pub(crate) fn gap((hl, nl): (u32, u32), (hr, nr): (u32, u32)) -> f64 {
    (hl as f64 / nl.max(1) as f64 - hr as f64 / nr.max(1) as f64).abs()
}

/// The long-term access rate of a region, if there is evidence enough.
pub(crate) fn rate(q: &Quarters) -> Option<f64> {
    let (hits, samples) = tally(q, 0..4);
    (samples >= MIN_SIDE_SAMPLES).then(|| hits as f64 / samples as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_tally_sums_every_quarter() {
        let q = Quarters { hits: [64, 64, 64, 64], samples: [64, 0, 255, 1] };
        assert_eq!(tally(&q, 0..4), (256, 320));
        assert_eq!(tally(&q, 1..4), (192, 256));
    }

    /// The floating-point z-test the integer forms must agree with.
    fn differ(left: (u32, u32), right: (u32, u32), z: f64) -> bool {
        z_squared(left, right).is_some_and(|(num, den)| num >= z * z * den)
    }

    /// The integer tests agree with the floating-point one on every count pair they can see.
    #[test]
    fn integer_and_float_tests_agree() {
        let z_squared = (81, 16);
        let z = (81.0f64 / 16.0).sqrt();
        for nl in [8u32, 9, 20, 64, 128, 192] {
            for nr in [8u32, 13, 20, 64, 192] {
                for hl in (0..=nl).step_by(3) {
                    for hr in (0..=nr).step_by(5) {
                        let (l, r) = ((hl, nl), (hr, nr));
                        assert_eq!(counts_differ(l, r, z_squared), differ(l, r, z), "{l:?} {r:?}");
                        if nl == nr {
                            let windows = windows_differ(hl, hr, nl, z_squared);
                            assert_eq!(windows, differ(l, r, z), "{l:?} {r:?}");
                        }
                    }
                }
            }
        }
        let big = 1 << 27;
        assert!(windows_differ(big, 0, big, (25, 4)));
        assert!(!windows_differ(big / 2, big / 2 + 10, big, (25, 4)));
        assert!(windows_differ(big / 2, big / 2 + 100_000, big, (25, 4)));
    }
}
