//! The per-context PRNG and `damon_rand`'s ranges. Seedable, so a run can be repeated exactly;
//! bit-equality with the kernel is impossible anyway (its seed is random).

/// xoshiro256++ (Blackman & Vigna), seeded through splitmix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

/// How a random address in `[l, r)` is drawn; the kernels disagree for spans of 4 GiB or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandVersion {
    /// 7.3: multiply-shift over the full span.
    Newest,
    /// Before 7.3: `l + get_random_u32_below(r - l)` with the span truncated to 32 bits, so
    /// regions of 4 GiB or more sample only their first `span mod 2^32` bytes.
    Legacy,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// `damon_rand(l, r)`: uniform in `[l, r)`; `l` when the range is empty.
    pub fn range(&mut self, l: u64, r: u64, version: RandVersion) -> u64 {
        let span = r.saturating_sub(l);
        match version {
            RandVersion::Newest if span <= u32::MAX as u64 => {
                l + ((self.next_u32() as u64 * span) >> 32)
            }
            RandVersion::Newest => l + ((self.next_u64() as u128 * span as u128) >> 64) as u64,
            RandVersion::Legacy => l + ((self.next_u32() as u64 * (span as u32) as u64) >> 32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let (mut a, mut b, mut c) = (Rng::new(7), Rng::new(7), Rng::new(8));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn split_factor_range_is_one_to_nine_roughly_uniform() {
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 10];
        for _ in 0..90_000 {
            counts[rng.range(1, 10, RandVersion::Newest) as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        for count in &counts[1..] {
            assert!((9_000..11_000).contains(count), "{counts:?}");
        }
    }

    #[test]
    fn addresses_stay_in_range_and_cover_spans_over_4gib() {
        let mut rng = Rng::new(2);
        let (l, r) = (1 << 40, (1 << 40) + (16 << 30));
        let draws: Vec<u64> = (0..10_000).map(|_| rng.range(l, r, RandVersion::Newest)).collect();
        assert!(draws.iter().all(|&x| (l..r).contains(&x)));
        assert!(draws.iter().any(|&x| x - l > 8 << 30), "upper half never drawn");
        assert_eq!(rng.range(5, 5, RandVersion::Newest), 5);
    }

    #[test]
    fn legacy_truncates_spans_of_4gib_and_more() {
        let mut rng = Rng::new(3);
        let span = (4u64 << 30) + 4096; // truncates to 4096
        for _ in 0..1_000 {
            assert!(rng.range(0, span, RandVersion::Legacy) < 4096);
        }
        // An exact multiple of 2^32 truncates to 0: always the start.
        assert_eq!(rng.range(100, 100 + (8u64 << 30), RandVersion::Legacy), 100);
    }
}
