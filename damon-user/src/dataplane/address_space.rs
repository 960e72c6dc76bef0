//! A target's address space as the walker knows it: the kernel's `mm_struct`, found through a
//! pagemap file we hold open on the process. Opening pagemap takes a reference on the `mm`
//! (the kernel's `proc_mem_open`), which keeps the structure and its root table allocated for as
//! long as the file is open, so the walker never reads a freed `mm`; the file's
//! `private_data` is that `mm`.

use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result, bail};

use super::{layout::Peek, object::Offsets};
use crate::sys::pagemap::Pagemap;

pub struct AddressSpace {
    pagemap: Pagemap,
    mm: u64,
}

impl AddressSpace {
    /// Opens process `pid`'s pagemap and finds the `mm` it holds, by reading our own file table
    /// through `peek`: our task, its files, the descriptor's file, whose inode must be the one
    /// we opened.
    pub(crate) fn open(pid: u32, peek: &Peek, offsets: &Offsets) -> Result<Self> {
        let pagemap = Pagemap::open(pid)?;
        let file = pagemap.file();
        let ino =
            file.metadata().with_context(|| format!("cannot stat pid {pid}'s pagemap"))?.ino();
        let fd = file.as_raw_fd() as u64;
        let f = &offsets.files;
        let read = |what: &str, addr: u64| {
            peek.read(addr).filter(|&v| v != 0).with_context(|| {
                format!("cannot find pid {pid}'s address space in the kernel ({what} at {addr:#x})")
            })
        };
        let task = peek.current_task().context("the peek program does not run here")?;
        let files = read("task files", task + f.task_files)?;
        let table = read("file table", files + f.files_fdt)?;
        let fds = read("descriptors", table + f.fdtable_fd)?;
        let entry = read("file", fds + 8 * fd)?;
        let inode = read("inode", entry + f.inode)?;
        if read("inode number", inode + f.ino)? != ino {
            bail!(
                "cannot find pid {pid}'s address space in the kernel: descriptor {fd} is another file"
            );
        }
        // A process past its exit's release of the address space opens a pagemap without one.
        let mm = peek.read(entry + f.private_data).filter(|&mm| mm != 0).ok_or_else(|| {
            anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ESRCH))
                .context(format!("pid {pid} has no address space: it is exiting"))
        })?;
        read("page tables", mm + offsets.mm_pgd)?;
        Ok(Self { pagemap, mm })
    }

    pub fn pagemap(&self) -> &Pagemap {
        &self.pagemap
    }

    /// The kernel's `mm_struct` of this space, for the walker.
    pub(crate) fn mm(&self) -> u64 {
        self.mm
    }
}
