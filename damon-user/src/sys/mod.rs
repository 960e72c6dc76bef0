//! System interfaces: procfs and sysfs files, syscalls, the kernel's BTF.

pub mod anon;
pub mod btf;
pub mod caps;
pub mod cgroup;
pub mod claim;
pub mod damon_sysfs;
pub mod kernel;
pub mod memory;
pub mod pagemap;
pub mod pidfd;
pub mod pressure;
pub mod proc_maps;
pub mod process;
pub mod signals;
pub mod tracefs;

/// A small procfs, sysfs or cgroup file as text, in as few reads as the kernel allows: these
/// report no size, and `fs::read_to_string` would stat the file and then probe it 32 bytes at a
/// time before growing its buffer (a target's maps, read every update, took ten reads).
pub fn read_text(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut text = vec![0; 16 << 10];
    let mut len = 0;
    loop {
        if len == text.len() {
            text.resize(2 * len, 0);
        }
        match file.read(&mut text[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    text.truncate(len);
    String::from_utf8(text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The errno of the system call behind `err`, if an I/O error is in its chain.
pub fn io_errno(err: &anyhow::Error) -> Option<i32> {
    err.chain().find_map(|e| e.downcast_ref::<std::io::Error>()?.raw_os_error())
}
