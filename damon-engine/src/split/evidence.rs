//! Statistics over a region's quarter evidence (`Quarters`): hit rates, and two-proportion
//! z-tests of whether two sets of samples come from different rates.

use crate::region::Quarters;

/// Fewer samples on a side than this is not evidence.
pub(crate) const MIN_SIDE_SAMPLES: u32 = 8;

/// (hits, samples) of `quarters`.
pub(crate) fn tally(q: &Quarters, quarters: std::ops::Range<usize>) -> (u32, u32) {
    quarters.fold((0, 0), |(h, n), i| (h + q.hits[i] as u32, n + q.samples[i] as u32))
}

/// The squared two-proportion z statistic of `hits / samples` on two sides, computed without
/// divisions: z² = (hl·nr − hr·nl)² · N / (nl · nr · H · (N − H)), H = hl + hr, N = nl + nr.
/// Returns it as (numerator, denominator); `None` without enough samples or without variance.
pub(crate) fn z_squared((hl, nl): (u32, u32), (hr, nr): (u32, u32)) -> Option<(f64, f64)> {
    if nl < MIN_SIDE_SAMPLES || nr < MIN_SIDE_SAMPLES {
        return None;
    }
    let (hl, nl, hr, nr) = (hl as f64, nl as f64, hr as f64, nr as f64);
    let (h, n) = (hl + hr, nl + nr);
    let d = hl * nr - hr * nl;
    (h > 0.0 && h < n).then_some((d * d * n, nl * nr * h * (n - h)))
}

/// Whether two sides' rates differ at least by `z` standard errors.
pub(crate) fn differ(left: (u32, u32), right: (u32, u32), z: f64) -> bool {
    z_squared(left, right).is_some_and(|(num, den)| num >= z * z * den)
}

/// `differ` for quarter counts, which are small enough (at most 4 × `Quarters::CAP` samples) for
/// exact integer arithmetic, with z² given as the fraction `num / den`: the test runs for every
/// region every aggregation.
pub(crate) fn counts_differ(
    (hl, nl): (u32, u32),
    (hr, nr): (u32, u32),
    (num, den): (u64, u64),
) -> bool {
    if nl < MIN_SIDE_SAMPLES || nr < MIN_SIDE_SAMPLES {
        return false;
    }
    let (hl, nl, hr, nr) = (hl as u64, nl as u64, hr as u64, nr as u64);
    let (h, n) = (hl + hr, nl + nr);
    if h == 0 || h == n {
        return false;
    }
    let d = (hl * nr).abs_diff(hr * nl);
    den * d * d * n >= num * nl * nr * h * (n - h)
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

    /// The integer test agrees with the floating-point one on every count pair it can see.
    #[test]
    fn integer_and_float_tests_agree() {
        let z_squared = (81, 16);
        let z = (81.0f64 / 16.0).sqrt();
        for nl in [8u32, 9, 20, 64, 128, 192] {
            for nr in [8u32, 13, 64, 192] {
                for hl in (0..=nl).step_by(3) {
                    for hr in (0..=nr).step_by(5) {
                        let (l, r) = ((hl, nl), (hr, nr));
                        assert_eq!(counts_differ(l, r, z_squared), differ(l, r, z), "{l:?} {r:?}");
                    }
                }
            }
        }
    }
}
