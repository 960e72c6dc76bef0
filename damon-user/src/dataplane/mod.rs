//! The eBPF data plane: the object (loaded once per process), the page-table layout it is
//! calibrated with, the walker that reads accessed bits, and the page-fault stream.

pub mod address_space;
mod error;
pub mod faults;
pub mod kdamond;
pub mod layout;
pub mod leaf;
pub mod object;
pub mod refused;
mod shared;
pub mod walker;

use std::sync::Arc;

use anyhow::Result;

pub use self::{
    address_space::AddressSpace,
    error::DataPlaneError,
    faults::FaultStream,
    layout::{Layout, Verified},
    object::{KernelTypes, Object},
    walker::Walker,
};

/// The object loaded and its layout calibrated; `start` attaches the programs and hands out
/// the walker and the fault stream, which share the object and keep it loaded.
pub struct DataPlane {
    object: Object,
    layout: Layout,
}

impl Object {
    /// Calibrates the page-table layout with this object's `peek` program.
    pub fn calibrate(mut self) -> Result<DataPlane> {
        let layout = layout::discover(&mut self.bpf, self.types.offsets)?;
        Ok(DataPlane { object: self, layout })
    }
}

impl DataPlane {
    /// Reads the kernel's BTF, loads the object and calibrates the layout: once per process.
    pub fn load() -> Result<Self> {
        Object::load(KernelTypes::read()?)?.calibrate()
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Loads the walker and, with `faults`, attaches the page-fault program. Faults are hints:
    /// their failure comes back beside the walker for the caller to report.
    pub fn start(self, faults: bool) -> Result<(Walker, Option<Result<FaultStream>>)> {
        let Object { mut bpf, types } = self.object;
        walker::load(&mut bpf, &types, &self.layout)?;
        let walk_maps = walker::WalkMaps::take(&mut bpf)?;
        let fault_maps = faults.then(|| faults::attach(&mut bpf));
        let object = Arc::new(bpf);
        let walker = walk_maps.into_walker(self.layout, object.clone());
        let faults = fault_maps.map(|maps| maps.map(|m| m.into_stream(object)));
        drop(types);
        // The kernel's BTF, parsed twice, was most of start-up's peak (~40 MB): give the freed
        // heap back, or glibc keeps it as the monitor's resident size for good.
        #[cfg(target_env = "gnu")]
        // SAFETY: no arguments to check; glibc only returns free memory.
        unsafe {
            libc::malloc_trim(0)
        };
        Ok((walker, faults))
    }
}
