//! Drift-free ticks: absolute deadlines on CLOCK_MONOTONIC, each one sample interval after the
//! last deadline (not after the last wake-up), so lateness never accumulates into drift.

use std::time::Duration;

fn now() -> libc::timespec {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts
}

fn nanos(ts: libc::timespec) -> i128 {
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

pub struct Ticker {
    deadline: i128,
    /// A tick starting this much after its deadline counts as late.
    tolerance: i128,
    pub ticks: u64,
    pub late: u64,
}

impl Ticker {
    pub fn new() -> Self {
        Self { deadline: nanos(now()), tolerance: 0, ticks: 0, late: 0 }
    }

    /// The next tick counts from now (after a pause, which is not lateness).
    pub fn restart(&mut self) {
        self.deadline = nanos(now());
    }

    /// Sleeps until one `interval` after the previous deadline; counts the tick late when it
    /// starts more than a tenth of the interval (at least 200 µs) after that. When far behind
    /// (a stalled machine), the schedule restarts from now instead of bursting to catch up.
    pub fn wait(&mut self, interval: Duration) {
        let interval = interval.as_nanos() as i128;
        self.deadline += interval;
        self.tolerance = (interval / 10).max(200_000);
        let target = libc::timespec {
            tv_sec: (self.deadline / 1_000_000_000) as libc::time_t,
            tv_nsec: (self.deadline % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: a valid absolute deadline; EINTR just ends the sleep early, checked below.
        while unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &target,
                std::ptr::null_mut(),
            )
        } == libc::EINTR
        {}
        let woke = nanos(now());
        self.ticks += 1;
        if woke - self.deadline > self.tolerance {
            self.late += 1;
        }
        if woke - self.deadline > 10 * interval {
            self.deadline = woke;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_on_schedule_without_drift() {
        let mut ticker = Ticker::new();
        let started = std::time::Instant::now();
        for _ in 0..20 {
            ticker.wait(Duration::from_millis(5));
            std::thread::sleep(Duration::from_micros(500)); // work within the interval
        }
        let took = started.elapsed();
        // 20 ticks of 5 ms: 100 ms, work included, never 20 x (5 + 0.5) = 110 ms.
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(106),
            "{took:?}"
        );
        assert_eq!(ticker.ticks, 20);
    }

    #[test]
    fn overruns_count_as_late() {
        let mut ticker = Ticker::new();
        ticker.wait(Duration::from_millis(2));
        // The first tick may be late too on a loaded machine: count from after it.
        let before = ticker.late;
        std::thread::sleep(Duration::from_millis(5));
        ticker.wait(Duration::from_millis(2));
        assert_eq!(ticker.late, before + 1);
    }
}
