//! `/proc/PID/pagemap`: the kernel's own answer to "which frame backs this page".

use std::{fs::File, io, os::unix::fs::FileExt as _};

use anyhow::{Context as _, Result};

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
/// A page of a file, or shared anonymous memory (shmem): not private anonymous memory.
const FILE_OR_SHARED: u64 = 1 << 61;
const EXCLUSIVE: u64 = 1 << 56;
const FRAME: u64 = (1 << 55) - 1;

/// A process's pagemap, open for repeated lookups.
pub struct Pagemap(File);

impl Pagemap {
    pub fn open(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/pagemap");
        File::open(&path).map(Self).with_context(|| format!("cannot open {path}"))
    }

    pub fn file(&self) -> &File {
        &self.0
    }

    fn entry(&self, addr: u64) -> io::Result<u64> {
        let mut entry = [0u8; 8];
        match self.0.read_exact_at(&mut entry, addr / 4096 * 8) {
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            other => other.map(|()| u64::from_le_bytes(entry)),
        }
    }

    /// Whether the page at `addr` is mapped by this process alone: a page the kernel's clear can
    /// reset. The shared zero page and pages of other processes are not.
    pub fn exclusive(&self, addr: u64) -> io::Result<bool> {
        Ok(self.entry(addr)? & EXCLUSIVE != 0)
    }

    /// The frame backing `addr`; `None` when not present, or hidden (frames read as 0 without
    /// CAP_SYS_ADMIN).
    pub fn frame(&self, addr: u64) -> io::Result<Option<u64>> {
        let entry = self.entry(addr)?;
        Ok((entry & PRESENT != 0 && entry & FRAME != 0).then_some(entry & FRAME))
    }
}

impl Pagemap {
    /// The entries of the `pages` pages from `addr` into `out` (replacing its contents).
    pub fn entries(&self, addr: u64, pages: usize, out: &mut Vec<Entry>) -> io::Result<()> {
        let mut bytes = vec![0u8; pages * 8];
        let mut read = 0;
        while read < bytes.len() {
            match self.0.read_at(&mut bytes[read..], addr / 4096 * 8 + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        // Short: the range ends past the address space (an exec replaced it, say); zeros would
        // read as pages of no kind, which filters would let through.
        if read < bytes.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        out.clear();
        out.extend(bytes.chunks_exact(8).map(|b| Entry(u64::from_le_bytes(b.try_into().unwrap()))));
        Ok(())
    }
}

/// One page's pagemap entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry(pub u64);

impl Entry {
    /// Mapped, or swapped out: the page has contents.
    pub fn populated(self) -> bool {
        self.0 & (PRESENT | SWAPPED) != 0
    }

    /// Mapped now (not swapped out).
    pub fn present(self) -> bool {
        self.0 & PRESENT != 0
    }

    /// Private anonymous memory (present or swapped out), as the kernel's `anon` filter sees it.
    pub fn anon(self) -> bool {
        self.populated() && self.0 & FILE_OR_SHARED == 0
    }

    /// The frame, when present (and readable: with CAP_SYS_ADMIN).
    pub fn frame(self) -> Option<u64> {
        (self.0 & PRESENT != 0 && self.0 & FRAME != 0).then_some(self.0 & FRAME)
    }
}

/// The frame backing `addr` in process `pid` (see `Pagemap::frame`).
pub fn frame(pid: u32, addr: u64) -> Result<Option<u64>> {
    Pagemap::open(pid)?.frame(addr).with_context(|| format!("cannot read /proc/{pid}/pagemap"))
}
