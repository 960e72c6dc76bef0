use which::which;

/// Rebuild when bpf-linker changes: cargo cannot see this dependency of the eBPF link step.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
