//! Regions and targets: what the engine monitors.

use crate::context::MIN_REGION_SZ;

/// `[start, end)` in address units, with the access counts of the current and last aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// Where the current sample looks; chosen by the engine before every sample.
    pub sampling_addr: u64,
    /// Samples of the current aggregation that found an access.
    pub nr_accesses: u32,
    /// `nr_accesses` of the last complete aggregation.
    pub last_nr_accesses: u32,
    /// Aggregations for which the access pattern has stayed the same.
    pub age: u32,
    /// Page faults seen in this region during the current aggregation (a certain access each,
    /// reported by operations that can see faults), saturating.
    pub faults: u16,
    /// How the region is sampled in this aggregation (see `sampling`): every `1 << (plan &
    /// STRIDE)` intervals (0: every interval, as the kernel), in long samples if `QUIET`; and
    /// in `HOLD`, aggregations a split policy keeps the region apart from its neighbours (in
    /// spare bits: memory per region is a budget).
    pub(crate) plan: u8,
    /// Samples of the current aggregation that could not tell accessed from idle
    /// (`Access::Unknown`), saturating at 255.
    pub unknown: u8,
    /// Samples and hits per quarter of the region, for the adaptive policy.
    pub(crate) quarters: Quarters,
}

/// Hits and samples of each quarter of a region, decayed by halving: enough to tell whether the
/// parts of a region differ before splitting it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Quarters {
    pub hits: [u8; 4],
    pub samples: [u8; 4],
}

impl Quarters {
    /// Counts saturate here; then all are halved, so old samples fade.
    const CAP: u8 = 64;

    pub(crate) fn quarter_of(offset: u64, size: u64) -> usize {
        (offset >= size / 4) as usize
            + (offset >= size / 2) as usize
            + (offset >= size / 4 * 3) as usize
    }

    /// Records a sample at `offset` bytes into a region of `size` bytes.
    pub fn record(&mut self, offset: u64, size: u64, accessed: bool) {
        let quarter = Self::quarter_of(offset, size);
        if self.samples[quarter] >= Self::CAP {
            self.halve();
        }
        self.samples[quarter] += 1;
        self.hits[quarter] += accessed as u8;
    }

    pub fn halve(&mut self) {
        for count in self.hits.iter_mut().chain(&mut self.samples) {
            *count /= 2;
        }
    }

    /// Evidence of `from`, which described `from_range`, moved by position into `self`, which
    /// describes `range`: each quarter lands where its middle falls, or nowhere.
    pub fn absorb(&mut self, from: &Quarters, from_range: (u64, u64), range: (u64, u64)) {
        let (from_size, size) = (from_range.1 - from_range.0, range.1 - range.0);
        for k in 0..4 {
            if from.samples[k] == 0 {
                continue;
            }
            let middle = from_range.0 + from_size / 8 * (2 * k as u64 + 1);
            if !(range.0..range.1).contains(&middle) {
                continue;
            }
            let quarter = Self::quarter_of(middle - range.0, size);
            while self.samples[quarter] as u16 + from.samples[k] as u16 > Self::CAP as u16 {
                self.halve();
            }
            self.samples[quarter] += from.samples[k];
            self.hits[quarter] += from.hits[k];
        }
    }
}

impl Region {
    pub fn new(start: u64, end: u64) -> Self {
        debug_assert!(start < end, "empty region {start:#x}..{end:#x}");
        Self {
            start,
            end,
            sampling_addr: start,
            nr_accesses: 0,
            last_nr_accesses: 0,
            age: 0,
            faults: 0,
            plan: 0,
            unknown: 0,
            quarters: Quarters::default(),
        }
    }

    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// The part `[start, end)` of this region, with its counts and the evidence of its quarters
    /// that falls inside.
    pub(crate) fn piece(&self, start: u64, end: u64) -> Self {
        let mut quarters = Quarters::default();
        quarters.absorb(&self.quarters, (self.start, self.end), (start, end));
        Self { start, end, quarters, ..*self }
    }

    /// This new region, sampled as `template` was over the same memory: its plan, its
    /// evidence where the quarters overlap, and its sample (the engine prepares a new one if
    /// that lies outside).
    pub(crate) fn sampled_like(self, template: &Region) -> Self {
        let mut quarters = Quarters::default();
        quarters.absorb(&template.quarters, (template.start, template.end), (self.start, self.end));
        Self {
            plan: template.plan & !HOLD,
            quarters,
            sampling_addr: template.sampling_addr,
            ..self
        }
    }

    /// Whether none of the window's samples could tell accessed from idle: the region's memory
    /// cannot be monitored now. `window` is the sample intervals per aggregation. Past 255
    /// unknown samples (windows that long), a region with no access reads as unknown.
    pub fn all_unknown(&self, window: u32) -> bool {
        // Strides never exceed the window: without unknown samples some were read.
        window > 0
            && self.unknown > 0
            && (self.known(window) == 0 || (self.unknown == u8::MAX && self.nr_accesses == 0))
    }

    /// The window's count scale: intervals of a window of `window` that samples read, one per
    /// sample or a quiet sample's whole span; a pair's pages share the window between them, so
    /// that its count is its hits.
    pub fn known(&self, window: u32) -> u32 {
        if self.paired() {
            return window / self.pages() * self.samples_read(window);
        }
        self.span(window) * self.samples_read(window)
    }

    /// Samples of a window of `window` intervals that could tell accessed from idle.
    pub(crate) fn samples_read(&self, window: u32) -> u32 {
        let stride = 1u32 << (self.plan & STRIDE);
        let samples = if self.plan & QUIET == 0 {
            window / stride
        } else if self.paired() {
            self.pages()
        } else {
            window.div_ceil(stride)
        };
        samples.saturating_sub(self.unknown.into())
    }

    /// Intervals one sample of a window of `window` stands for: one, or a quiet sample's span.
    pub(crate) fn span(&self, window: u32) -> u32 {
        if self.plan & QUIET == 0 {
            return 1;
        }
        if self.paired() {
            return window;
        }
        window / window.div_ceil(1 << (self.plan & STRIDE)).max(1)
    }

    /// Whether the region is sampled in pairs (see `PAIRED`).
    fn paired(&self) -> bool {
        self.plan & (QUIET | STRIDE) == QUIET | PAIRED
    }

    /// Pages one visit samples: two for a pair, unless the region is too small for two apart.
    fn pages(&self) -> u32 {
        1 + (self.paired() && self.size() >= 4 * MIN_REGION_SZ) as u32
    }

    /// The second page sampled with `addr` (a sampling address inside the region): a quarter to
    /// three quarters of the region further on, wrapping, by a hash of `addr` (uniform as
    /// `addr` is, never its page); `None` unless the region is sampled in pairs.
    pub fn partner_of(&self, addr: u64) -> Option<u64> {
        if self.pages() < 2 || !(self.start..self.end).contains(&addr) {
            return None;
        }
        let size = self.size();
        let offset = size / 4 + (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % (size / 2);
        Some(self.start + (addr - self.start + offset) % size)
    }

    /// Whether tick `tick` of a window of `window` intervals (1 = the first) checks this region.
    /// Samples of one interval are counted back from the window's end, so that the last falls
    /// on the aggregation's tick, which wakes the sampler anyway.
    pub(crate) fn checked_at(&self, tick: u64, window: u64) -> bool {
        if self.paired() {
            return tick == window;
        }
        let stride = 1 << (self.plan & STRIDE);
        if self.plan & QUIET != 0 {
            return tick.is_multiple_of(stride) || tick == window;
        }
        ends_a_stride(tick, window, stride)
    }

    /// Whether the step at tick `tick` (0: right after an aggregation) prepares this region: the
    /// tick before its check, or, quiet, at its check (a sample spans until the next).
    pub(crate) fn prepared_at(&self, tick: u64, window: u64) -> bool {
        let stride = 1 << (self.plan & STRIDE);
        if self.paired() {
            tick == 0
        } else if self.plan & QUIET != 0 {
            tick.is_multiple_of(stride) && tick < window
        } else {
            ends_a_stride(tick + 1, window, stride)
        }
    }

    /// Aggregations the split policy still keeps this region apart.
    pub(crate) fn hold(&self) -> u8 {
        (self.plan & HOLD) >> HOLD.trailing_zeros()
    }

    /// Sets `hold`, saturating at what its bits can count.
    pub(crate) fn set_hold(&mut self, aggregations: u8) {
        let max = HOLD >> HOLD.trailing_zeros();
        self.plan = self.plan & !HOLD | aggregations.min(max) << HOLD.trailing_zeros();
    }

    /// Closes an aggregation window: its count becomes the last one and the counters restart.
    pub(crate) fn reset_window(&mut self) {
        self.last_nr_accesses = self.nr_accesses;
        self.nr_accesses = 0;
        self.faults = 0;
        self.unknown = 0;
    }
}

/// What one sample found at a region's sampling address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Accessed,
    Idle,
    /// The check cannot tell (a page the clear cannot reset, such as one shared with another
    /// process): not counted as an access, nor as evidence.
    Unknown,
    /// Not checked this tick (adaptive sampling): set by the engine, left by the operations.
    NotChecked,
}

/// One monitored address space. `id` is the operations' handle for it (a pid, for vaddr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub id: u64,
    pub regions: Vec<Region>,
}

impl Target {
    pub fn new(id: u64) -> Self {
        Self { id, regions: Vec::new() }
    }

    /// A target monitoring the given ranges, one region each.
    pub fn with_ranges(id: u64, ranges: &[(u64, u64)]) -> Self {
        Self { id, regions: ranges.iter().map(|&(s, e)| Region::new(s, e)).collect() }
    }

    pub fn total_bytes(&self) -> u64 {
        self.regions.iter().map(Region::size).sum()
    }
}

/// `Region::plan`: the stride's log, and whether samples are quiet (long, for memory expected
/// idle: a clear accessed bit after many intervals proves them all idle).
pub(crate) const STRIDE: u8 = 0x0f;
pub(crate) const QUIET: u8 = 0x80;
/// The stride log of quiet memory sampled in pairs: two pages (see `Region::partner_of`),
/// prepared right after an aggregation and both checked at the next, so that a window costs one
/// visit and still looks at two pages (where an arriving access lands).
pub(crate) const PAIRED: u8 = STRIDE;
/// `Region::plan`'s bits that are not the sampling plan but `Region::hold`.
pub(crate) const HOLD: u8 = 0x70;

/// Whether tick `tick` (1..=`window`) ends one of the window's `window / stride` strides, counted
/// back from its end.
pub(crate) fn ends_a_stride(tick: u64, window: u64, stride: u64) -> bool {
    let back = window.wrapping_sub(tick);
    tick <= window && back.is_multiple_of(stride) && back / stride < window / stride
}

pub(crate) const fn align_down(x: u64, align: u64) -> u64 {
    x / align * align
}

pub(crate) const fn align_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}
