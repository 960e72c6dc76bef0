//! The embedded eBPF object and the kernel type information it is loaded with. Both are read
//! once per process: every part of the data plane comes from one loaded object.

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader, Endianness, maps::Map};
use damon_common::names;

use crate::sys::{
    btf::Btf,
    kernel::{self, KernelVersion, MEMCG_BPF_ACCOUNTING},
};

/// damon-ebpf, built by `build.rs` for the BPF target.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/damon-ebpf"));

/// Kernel struct member offsets the walker needs; aya has no CO-RE for Rust programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub mm_pgd: u64,
    pub mm_users: u64,
    pub task_mm: u64,
    /// From our own task to the `mm` a pagemap file of ours holds.
    pub files: FileOffsets,
    /// `struct page` and `struct folio`, to find a page's folio; `Err`: why not.
    pub folio: Result<FolioOffsets, &'static str>,
    /// `task_struct.worker_private`, `kthread.data` and `damon_ctx.kdamond`: from a kdamond's
    /// task to its DAMON context; `None` where the kernel's BTF lacks one.
    pub kdamond_ctx: Option<[u64; 3]>,
}

/// `task_struct.files`, `files_struct.fdt`, `fdtable.fd`, `file.private_data` (a pagemap
/// file's `mm`), `file.f_inode` and `inode.i_ino` (to check the file is the one we mean).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOffsets {
    pub task_files: u64,
    pub files_fdt: u64,
    pub fdtable_fd: u64,
    pub private_data: u64,
    pub inode: u64,
    pub ino: u64,
}

impl FileOffsets {
    fn read(btf: &Btf) -> Result<Self> {
        let member = |s: &str, m: &str| btf.member_offset(s, m).map(|o| o as u64);
        Ok(Self {
            task_files: member("task_struct", "files")?,
            files_fdt: member("files_struct", "fdt")?,
            fdtable_fd: member("fdtable", "fd")?,
            private_data: member("file", "private_data")?,
            inode: member("file", "f_inode")?,
            ino: member("inode", "i_ino")?,
        })
    }
}

/// Where a page's folio is told, from BTF (member names changed over the versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FolioOffsets {
    pub page_size: u64,
    /// `compound_head` (`compound_info` on 7.2+).
    pub compound: u64,
    pub head_bit: u64,
    /// `_folio_order` (before 6.6), or the low byte of `_flags_1`.
    pub order: u64,
    /// `_large_mapcount`; `None` where whole-folio clears would still split (before 6.10, when
    /// the kernel split any PTE-mapped large folio it was asked to cool).
    pub large_mapcount: Option<u64>,
    /// For checking a calibration on a page of our own.
    pub mapping: u64,
    pub index: u64,
    pub mapcount: u64,
}

impl FolioOffsets {
    fn read(btf: &Btf) -> Result<Self, &'static str> {
        let member = |s: &str, names: &[&str]| {
            names.iter().find_map(|m| btf.member_offset(s, m).ok()).map(|o| o as u64)
        };
        let whole_folio_clears = KernelVersion::current()
            .is_some_and(|v| v >= KernelVersion { major: 6, minor: 10, patch: 0 });
        Ok(Self {
            page_size: btf.struct_size("page").map_err(|_| "no struct page")?,
            compound: member("page", &["compound_head", "compound_info"])
                .ok_or("no compound_head")?,
            head_bit: btf.enum_value("PG_head").ok_or("no PG_head")?,
            order: member("folio", &["_folio_order", "_flags_1"]).ok_or("no folio order")?,
            large_mapcount: member("folio", &["_large_mapcount"]).filter(|_| whole_folio_clears),
            mapping: member("page", &["mapping"]).ok_or("no page.mapping")?,
            index: member("page", &["index", "__folio_index"]).ok_or("no page.index")?,
            mapcount: member("page", &["_mapcount"]).ok_or("no page._mapcount")?,
        })
    }
}

/// The kernel's BTF, read once: aya's parse loads `udamon check`'s fentry probe, ours finds the
/// offsets.
pub struct KernelTypes {
    pub btf: aya::Btf,
    pub offsets: Offsets,
    /// Size of `/sys/kernel/btf/vmlinux`.
    pub bytes: usize,
}

impl KernelTypes {
    pub fn read() -> Result<Self> {
        let path = kernel::BTF_VMLINUX;
        let data =
            std::fs::read(path).with_context(|| format!("cannot read kernel BTF at {path}"))?;
        let ours = Btf::parse(&data).with_context(|| format!("cannot parse {path}"))?;
        let offsets = Offsets {
            mm_pgd: ours.member_offset("mm_struct", "pgd")? as u64,
            mm_users: ours.member_offset("mm_struct", "mm_users")? as u64,
            task_mm: ours.member_offset("task_struct", "mm")? as u64,
            files: FileOffsets::read(&ours)?,
            folio: FolioOffsets::read(&ours),
            kdamond_ctx: [
                ("task_struct", "worker_private"),
                ("kthread", "data"),
                ("damon_ctx", "kdamond"),
            ]
            .map(|(s, m)| ours.member_offset(s, m).ok().map(|o| o as u64))
            .into_iter()
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.try_into().ok()),
        };
        let btf = aya::Btf::parse(&data, Endianness::default())
            .with_context(|| format!("cannot parse {path}"))?;
        Ok(Self { btf, offsets, bytes: data.len() })
    }
}

/// The object loaded into the kernel: its maps created, its programs not yet loaded (each is
/// loaded by its user).
pub struct Object {
    pub(crate) bpf: Ebpf,
    pub(crate) types: KernelTypes,
}

impl Object {
    pub fn load(types: KernelTypes) -> Result<Self> {
        Self::load_sized(types, &[])
    }

    /// Loads with some maps resized (`max_entries`; bytes for a ring buffer): the object's own
    /// sizes suit monitoring, whose maps other uses enlarge.
    pub fn load_sized(types: KernelTypes, sizes: &[(&str, u32)]) -> Result<Self> {
        ensure_memlock()?;
        let tgid = std::process::id();
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&types.btf)).override_global(names::PROBE_TGID, &tgid, true);
        for &(map, size) in sizes {
            loader.map_max_entries(map, size);
        }
        let bpf = loader.load(OBJECT).context("cannot load udamon's eBPF object")?;
        Ok(Self { bpf, types })
    }

    pub fn types(&self) -> &KernelTypes {
        &self.types
    }

    /// The loaded object, for `udamon check`'s probes.
    pub fn bpf_mut(&mut self) -> &mut Ebpf {
        &mut self.bpf
    }
}

/// Takes ownership of one of the object's maps, for a typed handle.
pub(crate) fn take_map(bpf: &mut Ebpf, name: &str) -> Result<Map> {
    bpf.take_map(name).with_context(|| format!("eBPF object has no {name} map"))
}

/// Before 5.11 BPF maps are charged to RLIMIT_MEMLOCK, whose default (8 MiB or less) is too small.
pub(crate) fn ensure_memlock() -> Result<()> {
    if KernelVersion::current().is_none_or(|v| v >= MEMCG_BPF_ACCOUNTING) {
        return Ok(());
    }
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid rlimit structure.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "cannot raise RLIMIT_MEMLOCK for BPF maps on this pre-5.11 kernel ({err}); run `ulimit -l unlimited` or grant CAP_SYS_RESOURCE"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Both sides spell every map and program the same: the built object has exactly the
    /// names `damon_common::names` lists.
    #[test]
    fn the_object_has_the_shared_names() {
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        // Data sections (`.rodata` holds PROBE_TGID) are maps too, named by the linker.
        let maps: BTreeSet<&str> =
            object.maps.keys().map(String::as_str).filter(|m| !m.starts_with('.')).collect();
        let programs: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
        assert_eq!(maps, names::MAPS.into_iter().collect());
        assert_eq!(programs, names::PROGRAMS.into_iter().collect());
    }

    #[test]
    fn this_kernels_offsets_are_found() {
        if !std::path::Path::new(kernel::BTF_VMLINUX).exists() {
            assert!(!crate::test_support::in_ci(), "no kernel BTF under CI=true");
            eprintln!("skipping: no kernel BTF");
            return;
        }
        let Offsets { mm_pgd, task_mm, folio, .. } = KernelTypes::read().unwrap().offsets;
        assert!(mm_pgd > 0 && mm_pgd % 8 == 0 && task_mm > 0 && task_mm % 8 == 0);
        let folio = folio.unwrap();
        assert_eq!((folio.page_size, folio.compound), (64, 8), "{folio:?}");
        assert!(folio.head_bit < 64 && folio.order >= folio.page_size, "{folio:?}");
    }
}
