//! Anonymous private mappings: fresh pages whose first touch is certain to fault.

use std::{io, ptr::NonNull};

pub const PAGE_SIZE: usize = 4096;

pub struct AnonMapping {
    addr: NonNull<u8>,
    len: usize,
}

impl AnonMapping {
    pub fn new(pages: usize) -> io::Result<Self> {
        let len = pages * PAGE_SIZE;
        // SAFETY: a new anonymous mapping; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { addr: NonNull::new(addr.cast()).expect("mmap never returns NULL"), len })
    }

    pub fn addr(&self) -> usize {
        self.addr.as_ptr() as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes one byte to page `index`, faulting it in on first touch.
    pub fn touch(&self, index: usize) {
        assert!(index * PAGE_SIZE < self.len, "page {index} is outside the mapping");
        // SAFETY: in bounds (checked above) of a writable mapping we own.
        unsafe { self.addr.as_ptr().add(index * PAGE_SIZE).write_volatile(1) };
    }

    /// Writes `value` at byte `offset`, which must lie inside the mapping and be 8-byte aligned.
    pub fn write_u64(&self, offset: usize, value: u64) {
        assert!(offset + 8 <= self.len && offset.is_multiple_of(8), "offset {offset} is unusable");
        // SAFETY: in bounds and aligned (checked above) in a writable mapping we own.
        unsafe { self.addr.as_ptr().add(offset).cast::<u64>().write_volatile(value) };
    }

    pub fn iovec(&self) -> libc::iovec {
        libc::iovec { iov_base: self.addr.as_ptr().cast(), iov_len: self.len }
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}
