//! Facts about the running kernel: its version and the interfaces udamon reads.

use std::{fmt, fs};

/// `bpf_loop` (5.17) is the newest feature the data plane cannot do without; ring buffers (5.8),
/// tp_btf (5.5) and the mmap-lock tracepoints (5.10) are older.
pub const MIN_KERNEL: KernelVersion = KernelVersion { major: 5, minor: 17, patch: 0 };

/// Since 5.11 BPF memory is charged to the memory cgroup instead of RLIMIT_MEMLOCK.
pub const MEMCG_BPF_ACCOUNTING: KernelVersion = KernelVersion { major: 5, minor: 11, patch: 0 };

pub const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub fn current() -> Option<Self> {
        Self::parse(&release()?)
    }

    /// Parses the numeric head of a release string such as `6.18.44-fc-v857`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut numbers =
            release.split(|c: char| !c.is_ascii_digit()).take(3).map(|n| n.parse::<u32>().ok());
        let major = numbers.next()??;
        let minor = numbers.next()??;
        let patch = numbers.next().flatten().unwrap_or(0);
        Some(Self { major, minor, patch })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The full release string (`uname -r`).
pub fn release() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned())
}

/// The bracketed choice of a sysfs multiple-choice file such as `always [madvise] never`.
pub fn bracketed_choice(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let len = text[start..].find(']')?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_strings() {
        let v = |major, minor, patch| KernelVersion { major, minor, patch };
        assert_eq!(KernelVersion::parse("6.18.44-fc-v857"), Some(v(6, 18, 44)));
        assert_eq!(KernelVersion::parse("6.1.0-28-amd64"), Some(v(6, 1, 0)));
        assert_eq!(KernelVersion::parse("7.2-rc1"), Some(v(7, 2, 0)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(v(5, 16, 99) < MIN_KERNEL && v(5, 17, 0) >= MIN_KERNEL);
    }

    #[test]
    fn reads_bracketed_choice() {
        assert_eq!(bracketed_choice("always [madvise] never\n"), Some("madvise"));
        assert_eq!(bracketed_choice("none [integrity] confidentiality"), Some("integrity"));
        assert_eq!(bracketed_choice("no choice"), None);
    }
}
