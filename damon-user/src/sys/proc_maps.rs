//! `/proc/PID/maps` and `/proc/PID/smaps`: a process's mappings, for its regions, for telling
//! shared pages apart, and (smaps' `VmFlags`) for knowing which mappings `MADV_COLD` refuses.

use anyhow::{Context as _, Result};

/// Above this, addresses are the kernel's (`[vsyscall]` is listed but is not a mapping of the mm).
const USER_SPACE_END: u64 = 1 << 56;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `MAP_SHARED`: its pages may be mapped by other processes too.
    pub shared: bool,
    /// A mapping of a file (its pages, until written, are the page cache's).
    pub file: bool,
    /// What smaps' `VmFlags` say (all false when read from maps).
    pub flags: VmFlags,
    /// The kernel refused to clear here though the flags allow it (not read from a file: set by
    /// whoever saw the refusal, so the clear is not asked again).
    pub refused: bool,
}

/// The `VmFlags` that matter to monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmFlags {
    /// `lo`: mlocked (also `mlock2(MLOCK_ONFAULT)`, `mlockall(MCL_FUTURE)` mappings).
    pub locked: bool,
    /// `ht`: hugetlb.
    pub hugetlb: bool,
    /// `pf` or `io`: PFN-mapped or I/O memory, not ordinary pages.
    pub pfnmap: bool,
}

impl Mapping {
    /// Whether `MADV_COLD` clears this mapping's accessed bits (it refuses locked, hugetlb and
    /// PFN-mapped memory with EINVAL).
    pub fn clearable(&self) -> bool {
        !(self.flags.locked || self.flags.hugetlb || self.flags.pfnmap || self.refused)
    }

    /// The start, end and sharing: what `/proc/PID/maps` shows too.
    fn layout(&self) -> (u64, u64, bool, bool) {
        (self.start, self.end, self.shared, self.file)
    }
}

/// The mappings, cheaply (no flags).
pub fn read(pid: u32) -> Result<Vec<Mapping>> {
    read_file(pid, "maps")
}

/// The mappings with their flags. Dearer than `read` (the kernel counts each mapping's pages):
/// for when the layout changed or a clear was refused.
pub fn read_with_flags(pid: u32) -> Result<Vec<Mapping>> {
    read_file(pid, "smaps")
}

fn read_file(pid: u32, name: &str) -> Result<Vec<Mapping>> {
    let path = format!("/proc/{pid}/{name}");
    let text = super::read_text(&path).with_context(|| format!("cannot read {path}"))?;
    Ok(parse(&text))
}

/// Whether two readings have the same mappings, flags aside.
pub fn same_layout(a: &[Mapping], b: &[Mapping]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.layout() == b.layout())
}

/// maps or smaps text: a header line per mapping, and in smaps, a `VmFlags:` line among the
/// mapping's lines.
pub(crate) fn parse(text: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    // Whether the last header was kept (a mapping beyond user space is skipped with its lines).
    let mut kept = false;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let (true, Some(last)) = (kept, mappings.last_mut()) {
                last.flags = vm_flags(flags);
            }
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some((start, end)) = fields.next().and_then(|f| f.split_once('-')) else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let Some(perms) = fields.next() else { continue };
        // offset, device, inode: an inode names a file.
        let file = fields.nth(2).is_some_and(|inode| inode != "0");
        kept = end <= USER_SPACE_END && start < end;
        if kept {
            let shared = perms.ends_with('s');
            mappings.push(Mapping { start, end, shared, file, ..Mapping::default() });
        }
    }
    mappings
}

fn vm_flags(text: &str) -> VmFlags {
    let mut flags = VmFlags::default();
    for code in text.split_whitespace() {
        match code {
            "lo" => flags.locked = true,
            "ht" => flags.hugetlb = true,
            "pf" | "io" => flags.pfnmap = true,
            _ => {}
        }
    }
    flags
}

/// The mapping containing `addr`, if any (`mappings` sorted, as the kernel lists them).
pub fn find(mappings: &[Mapping], addr: u64) -> Option<&Mapping> {
    let i = mappings.partition_point(|m| m.end <= addr);
    mappings.get(i).filter(|m| m.start <= addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d4c0a00000-55d4c0a02000 r--p 00000000 fe:01 1234 /usr/bin/cat
55d4c2a1b000-55d4c2a3c000 rw-p 00000000 00:00 0 [heap]
7f1e4c000000-7f1e4c021000 rw-s 00000000 00:01 99 /dev/shm/x
7ffc1b8f0000-7ffc1b911000 rw-p 00000000 00:00 0 [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
";

    #[test]
    fn parses_ranges_and_sharing_and_drops_vsyscall() {
        let maps = parse(MAPS);
        assert_eq!(maps.len(), 4);
        let first = Mapping {
            start: 0x55d4c0a00000,
            end: 0x55d4c0a02000,
            file: true,
            ..Mapping::default()
        };
        assert_eq!(maps[0], first);
        assert!(maps[2].shared && !maps[1].shared);
        assert_eq!(find(&maps, 0x55d4c2a1b123).map(|m| m.start), Some(0x55d4c2a1b000));
        assert_eq!(find(&maps, 0x55d4c2a3c000), None, "end is exclusive");
        assert_eq!(find(&maps, 0x1000), None);
    }

    #[test]
    fn reads_our_own() {
        let maps = read(std::process::id()).unwrap();
        let here = &maps as *const _ as u64;
        assert!(find(&maps, here).is_some(), "our stack is mapped");
        assert!(maps.windows(2).all(|w| w[0].end <= w[1].start));
    }

    const SMAPS: &str = "\
55d4c2a1b000-55d4c2a3c000 rw-p 00000000 00:00 0 [heap]
Size:                132 kB
Rss:                   4 kB
VmFlags: rd wr mr mw me ac sd
7f1e40000000-7f1e40200000 rw-p 00000000 00:0f 1000 /anon_hugepage (deleted)
Size:               2048 kB
VmFlags: rd wr mr mw me de ht sd
7f1e4c000000-7f1e4c021000 rw-p 00000000 00:00 0
Locked:              132 kB
VmFlags: rd wr mr mw me lo ac sd
7f1e4d000000-7f1e4d001000 rw-s 00000000 00:05 7 /dev/mem
VmFlags: rd wr sh mr mw me ms io pf dd sd
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
VmFlags: rd ex lo
";

    #[test]
    fn smaps_flags_tell_what_the_clear_refuses() {
        let maps = parse(SMAPS);
        let clearable: Vec<bool> = maps.iter().map(Mapping::clearable).collect();
        assert_eq!(clearable, [true, false, false, false], "vsyscall's flags are dropped with it");
        assert!(maps[1].flags.hugetlb && maps[2].flags.locked && maps[3].flags.pfnmap);
        assert!(maps[3].shared);
        // maps and smaps agree on the layout.
        let plain: String = SMAPS
            .lines()
            .filter(|l| !l.contains(':') || l.contains(" 00:"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(same_layout(&parse(&plain), &maps));
        assert!(!same_layout(&maps[1..], &maps));
    }
}
