//! DAMOS watermarks: a scheme acts only while a system metric sits between its low and high
//! marks, and, once inactive, starts again only below the middle one (`damos_wmark_wait_us`).

use serde::{Deserialize, Serialize};

/// The metric watermarks read: free memory, in permil of the total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WmarkMetric {
    FreeMemRate,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks {
    /// `None`: always active.
    pub metric: Option<WmarkMetric>,
    /// How often the metric is read, in µs.
    pub interval_us: u64,
    pub high: u64,
    pub mid: u64,
    pub low: u64,
}

impl Watermarks {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.metric.is_some() && !(self.low <= self.mid && self.mid <= self.high) {
            anyhow::bail!(
                "watermarks must be ordered high >= mid >= low (got {}, {}, {})",
                self.high,
                self.mid,
                self.low
            );
        }
        Ok(())
    }
}

/// Whether the scheme is active after the metric read `value`, given whether it was.
pub(crate) fn active_after(marks: &Watermarks, value: u64, was_active: bool) -> bool {
    if value > marks.high || value < marks.low {
        return false;
    }
    was_active || value < marks.mid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_between_the_marks_and_reactivated_below_the_middle() {
        let m = Watermarks {
            metric: Some(WmarkMetric::FreeMemRate),
            interval_us: 1,
            high: 500,
            mid: 400,
            low: 200,
        };
        assert!(!active_after(&m, 600, true), "plenty free: off");
        assert!(!active_after(&m, 450, false), "between mid and high: stays off");
        assert!(active_after(&m, 450, true), "...or on");
        assert!(active_after(&m, 350, false), "under mid: on");
        assert!(!active_after(&m, 100, true), "under low: off (other means must act)");
        assert!(Watermarks { mid: 600, ..m }.validate().is_err());
    }
}
