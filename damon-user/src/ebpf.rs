//! The embedded eBPF object and how to load it.

use anyhow::{Context as _, Result, bail};
use aya::{Btf, Ebpf, EbpfLoader, maps::Map};

use crate::kernel::{KernelVersion, MEMCG_BPF_ACCOUNTING};

/// damon-ebpf, built by `build.rs` for the BPF target.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/damon-ebpf"));

/// Reads the kernel's BTF, which tp_btf/fentry programs and struct offsets need.
pub fn kernel_btf() -> Result<Btf> {
    Btf::from_sys_fs()
        .with_context(|| format!("cannot read kernel BTF at {}", crate::kernel::BTF_VMLINUX))
}

/// Creates the object's maps in the kernel; programs are loaded one by one by their users.
/// Without `btf`, programs that need kernel BTF (tp_btf, fentry) cannot load.
pub fn load(btf: Option<&Btf>) -> Result<Ebpf> {
    ensure_memlock()?;
    let tgid = std::process::id();
    EbpfLoader::new()
        .btf(btf)
        .override_global("PROBE_TGID", &tgid, true)
        .load(OBJECT)
        .context("cannot load udamon's eBPF object")
}

/// Takes ownership of one of the object's maps, for a typed handle.
pub fn take_map(bpf: &mut Ebpf, name: &str) -> Result<Map> {
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
