//! The Linux capabilities udamon relies on, read from `/proc/self/status`.

use std::fs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    DacReadSearch = 2,
    SysPtrace = 19,
    SysAdmin = 21,
    SysNice = 23,
    Perfmon = 38,
    Bpf = 39,
}

impl Capability {
    pub const fn name(self) -> &'static str {
        match self {
            Self::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Self::SysPtrace => "CAP_SYS_PTRACE",
            Self::SysAdmin => "CAP_SYS_ADMIN",
            Self::SysNice => "CAP_SYS_NICE",
            Self::Perfmon => "CAP_PERFMON",
            Self::Bpf => "CAP_BPF",
        }
    }
}

/// What a service needs to monitor any process: the required ones plus reading other users'
/// processes. Not CAP_SYS_ADMIN: page faults then come from perf events instead of tracefs.
/// The systemd unit grants exactly these.
pub const SERVICE: [Capability; 5] = [
    Capability::Bpf,
    Capability::Perfmon,
    Capability::SysNice,
    Capability::SysPtrace,
    Capability::DacReadSearch,
];

/// The effective capability set of this process, as a bit mask.
#[derive(Clone, Copy, Debug)]
pub struct CapSet(u64);

impl CapSet {
    pub fn current() -> Self {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self::parse(&status)
    }

    fn parse(status: &str) -> Self {
        let mask = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        Self(mask)
    }

    pub fn has(self, cap: Capability) -> bool {
        self.0 & (1 << cap as u32) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_effective_set() {
        // This machine's root: everything but CAP_SYS_RESOURCE (24).
        let caps = CapSet::parse("Name:\tx\nCapPrm:\t0\nCapEff:\t000001fffeffffff\n");
        assert!(caps.has(Capability::Bpf));
        assert!(caps.has(Capability::SysNice));
        let none = CapSet::parse("CapEff:\t0000000000000000\n");
        assert!(!none.has(Capability::Perfmon));
        let bpf_only = CapSet::parse("CapEff:\t0000008000000000\n");
        assert!(bpf_only.has(Capability::Bpf) && !bpf_only.has(Capability::Perfmon));
    }

    #[test]
    fn missing_status_means_no_capabilities() {
        assert!(!CapSet::parse("").has(Capability::Bpf));
    }
}
