//! Recording while monitoring: snapshots accumulate in memory and the file is rewritten
//! atomically every `flush_every` and at the end, so a crash loses at most the last interval.
//! A device or FIFO cannot be rewritten (a reader would get the record many times over): it
//! gets the record once, at the end.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Format, Intervals, RecordedSnapshot, TargetRecord, save};
use crate::{snapshot::Snapshot, util::atomic_file::Output};

pub struct RecordWriter {
    output: Output,
    format: Format,
    intervals: Intervals,
    /// In the order targets first appeared (they may come and go).
    targets: Vec<TargetRecord>,
    flush_every: Duration,
    flushed: Instant,
    /// Snapshots taken, and how many of them the file holds.
    taken: usize,
    saved: usize,
}

impl RecordWriter {
    pub fn new(
        output: Output,
        format: Format,
        intervals: Intervals,
        flush_every: Duration,
    ) -> Self {
        Self {
            output,
            format,
            intervals,
            targets: Vec::new(),
            flush_every,
            flushed: Instant::now(),
            taken: 0,
            saved: 0,
        }
    }

    /// Adds a snapshot; rewrites the file when the last write is `flush_every` old.
    pub fn push(&mut self, snapshot: &Snapshot) -> Result<()> {
        for t in &snapshot.targets {
            self.target(t.pid as u64);
        }
        self.targets.iter_mut().for_each(|t| t.push(snapshot));
        self.taken += 1;
        self.flush_if_due()
    }

    /// Adds one target's snapshot (the kernel's DAMON: targets aggregate apart).
    pub fn push_target(&mut self, target_id: u64, snapshot: RecordedSnapshot) -> Result<()> {
        self.target(target_id).snapshots.push(snapshot);
        self.taken += 1;
        self.flush_if_due()
    }

    fn target(&mut self, target_id: u64) -> &mut TargetRecord {
        let index = match self.targets.iter().position(|r| r.target_id == target_id) {
            Some(index) => index,
            None => {
                self.targets.push(TargetRecord {
                    target_id,
                    intervals: Some(self.intervals),
                    snapshots: Vec::new(),
                });
                self.targets.len() - 1
            }
        };
        &mut self.targets[index]
    }

    fn flush_if_due(&mut self) -> Result<()> {
        if self.flushed.elapsed() >= self.flush_every { self.checkpoint() } else { Ok(()) }
    }

    /// Writes what is new to a file; a device or FIFO waits for `finish`.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.flushed = Instant::now();
        if self.output.replaceable() { self.finish() } else { Ok(()) }
    }

    /// Writes what is new, if anything. Targets without snapshots are left out.
    pub fn finish(&mut self) -> Result<()> {
        if self.saved == self.taken {
            return Ok(());
        }
        save(&self.output, &self.targets, self.format)?;
        self.saved = self.taken;
        Ok(())
    }

    pub fn snapshots(&self) -> usize {
        self.taken
    }
}
