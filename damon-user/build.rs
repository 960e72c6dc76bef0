//! Builds damon-ebpf for the BPF target (nightly, build-std, bpf-linker) and leaves the object in
//! OUT_DIR, where `ebpf.rs` embeds it.

fn main() -> anyhow::Result<()> {
    // aya-build watches the eBPF crate's own directory; the shared types live elsewhere.
    println!("cargo:rerun-if-changed=../damon-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "damon-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../damon-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
