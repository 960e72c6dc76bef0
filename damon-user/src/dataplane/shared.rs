//! A BPF array map created mmap-able (`BPF_F_MMAPABLE`), mapped into our memory: the sampler
//! writes requests and reads results with plain loads and stores, no system call per access.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::{Result, bail};
use aya::{
    Pod,
    maps::{Map, MapData},
};

pub(crate) struct SharedArray<T> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
    /// Keeps the map alive as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value alone and holds plain data.
unsafe impl<T: Send> Send for SharedArray<T> {}

impl<T: Pod> SharedArray<T> {
    /// Maps array map `map` named `name`; its values must be exactly `T`s.
    pub fn map(name: &str, map: Map) -> Result<Self> {
        let Map::Array(map) = map else { bail!("BPF map {name} is not an array") };
        let info = map.info()?;
        if info.value_size() as usize != size_of::<T>() || !size_of::<T>().is_multiple_of(8) {
            bail!(
                "BPF map {name} holds values of {} bytes, not {}",
                info.value_size(),
                size_of::<T>()
            );
        }
        let len = info.max_entries() as usize;
        let bytes = (len * size_of::<T>()).next_multiple_of(page_size());
        // SAFETY: a shared mapping of the map's own memory, as long as the map lives (we hold it).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("cannot map BPF map {name}: {}", std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).expect("mmap does not return null on success");
        Ok(Self { ptr, len, bytes, _map: map })
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `len` values of plain data, mapped for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above; the kernel writes it only during our own calls.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for SharedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}
