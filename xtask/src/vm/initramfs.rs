//! The guest's initramfs: a newc cpio archive of busybox, an init script, and the static test
//! binaries at the absolute paths they were built to find each other at.

use std::{io::Write as _, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, Result};

/// Marker lines on the guest console.
pub const STEP: &str = "UDAMON-VM-STEP:";
pub const FAILED: &str = "UDAMON-VM-FAILED:";
pub const RESULT_PASS: &str = "UDAMON-VM-RESULT: PASS";
pub const RESULT_FAIL: &str = "UDAMON-VM-RESULT: FAIL";

pub struct Archive {
    out: Vec<u8>,
    inode: u32,
    dirs: Vec<String>,
}

impl Archive {
    pub fn new() -> Self {
        Self { out: Vec::new(), inode: 1, dirs: Vec::new() }
    }

    /// A file at `path` (absolute), with its parent directories.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        self.parents(path);
        self.entry(path, 0o100000 | mode, data);
    }

    pub fn copy(&mut self, path: &str, from: &Path) -> Result<()> {
        let data =
            std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        let mode = std::fs::metadata(from)?.permissions().mode() & 0o777;
        self.file(path, &data, mode);
        Ok(())
    }

    pub fn dir(&mut self, path: &str) {
        self.parents(path);
        if !self.dirs.iter().any(|d| d == path) {
            self.dirs.push(path.to_owned());
            self.entry(path, 0o040755, &[]);
        }
    }

    fn parents(&mut self, path: &str) {
        let mut parent = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            parent.push('/');
            parent.push_str(part);
            if !self.dirs.contains(&parent) {
                self.dirs.push(parent.clone());
                self.entry(&parent, 0o040755, &[]);
            }
        }
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        let name = path.trim_start_matches('/');
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.inode += 1;
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// The guest's /init: mounts what udamon needs, runs every step, prints the verdict and powers
/// off. Each step's failure is printed and counted; the verdict line is the only thing the host
/// trusts (QEMU's exit code means nothing).
pub fn init_script(steps: &[String]) -> Vec<u8> {
    // Nothing is mounted over /tmp (the initramfs is writable as it is): the binaries sit at
    // their host build paths, which may lie under /tmp.
    let mut script = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/bin:/bin CI=true RUST_BACKTRACE=1 HOME=/tmp\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         ip link set lo up\n\
         echo '127.0.0.1 localhost' > /etc/hosts\n\
         echo \"UDAMON-VM: kernel $(uname -r)\"\n\
         for m in /modules/*.ko; do [ -e $m ] && { insmod $m || echo \"UDAMON-VM: cannot load $m\"; }; done\n\
         fail=0\n",
    );
    for step in steps {
        script.push_str(&format!(
            "echo '{STEP} {step}'\n{step} || {{ echo '{FAILED} {step}'; fail=1; }}\n"
        ));
    }
    script.push_str(&format!(
        "if [ $fail = 0 ]; then echo '{RESULT_PASS}'; else echo '{RESULT_FAIL}'; fi\npoweroff -f\n"
    ));
    script.into_bytes()
}

pub fn write(path: &Path, archive: Archive) -> Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&archive.finish())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_parents_come_first() {
        let mut a = Archive::new();
        a.file("/a/b/c", b"xyz", 0o755);
        let bytes = a.finish();
        assert!(bytes.len().is_multiple_of(4));
        let text = String::from_utf8_lossy(&bytes);
        let (a_at, b_at, c_at) =
            (text.find("a\0").unwrap(), text.find("a/b\0").unwrap(), text.find("a/b/c\0").unwrap());
        assert!(a_at < b_at && b_at < c_at);
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(text.matches("070701").count(), 4);
    }

    #[test]
    fn init_reports_each_failing_step() {
        let script =
            String::from_utf8(init_script(&["/bin/true".into(), "/bin/false".into()])).unwrap();
        assert!(script.contains("/bin/false || { echo 'UDAMON-VM-FAILED: /bin/false'; fail=1; }"));
        assert!(script.trim_end().ends_with("poweroff -f"));
    }
}
