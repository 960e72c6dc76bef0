//! `/proc/PID/maps`: a process's mappings, for its regions and for telling shared pages apart.

use std::fs;

use anyhow::{Context as _, Result};

/// Above this, addresses are the kernel's (`[vsyscall]` is listed but is not a mapping of the mm).
const USER_SPACE_END: u64 = 1 << 56;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `MAP_SHARED`: its pages may be mapped by other processes too.
    pub shared: bool,
}

pub fn read(pid: u32) -> Result<Vec<Mapping>> {
    let path = format!("/proc/{pid}/maps");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let (start, end) =
                (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
            let shared = fields.next()?.ends_with('s');
            (end <= USER_SPACE_END && start < end).then_some(Mapping { start, end, shared })
        })
        .collect()
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
        assert_eq!(maps[0], Mapping { start: 0x55d4c0a00000, end: 0x55d4c0a02000, shared: false });
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
}
