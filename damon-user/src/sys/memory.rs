//! System memory figures that DAMOS watermarks and quota goals read: free memory, NUMA nodes'
//! use, a cgroup's share of a node, and the total time stalled on memory (PSI).

use std::path::Path;

use damon_engine::schemes::Metric;

/// Free memory in permil of the total (`MemFree` / `MemTotal`, as the kernel's
/// `free_mem_rate`).
pub fn free_permil() -> Option<u64> {
    let (total, free) = total_and_free(&super::read_text("/proc/meminfo").ok()?, "")?;
    Some(free * 1000 / total.max(1))
}

/// The value of a quota goal's metric now (PSI: the running total, in µs).
pub fn metric(metric: &Metric) -> Option<u64> {
    match metric {
        Metric::UserInput => None,
        Metric::SomeMemPsiUs => some_total_us(Path::new("/proc/pressure/memory")),
        Metric::NodeMemUsedBp(node) => {
            let (total, free) = node_total_and_free(*node)?;
            Some((total - free.min(total)) * 10_000 / total.max(1))
        }
        Metric::NodeMemFreeBp(node) => {
            let (total, free) = node_total_and_free(*node)?;
            Some(free.min(total) * 10_000 / total.max(1))
        }
        Metric::NodeMemcgUsedBp(node, path) | Metric::NodeMemcgFreeBp(node, path) => {
            let (total, _) = node_total_and_free(*node)?;
            let dir = super::cgroup::root().ok()?.join(path.trim_start_matches('/'));
            let text = super::read_text(dir.join("memory.numa_stat")).ok()?;
            let used = memcg_node_bytes(&text, *node)?.min(total);
            let bp = |bytes: u64| bytes * 10_000 / total.max(1);
            Some(if matches!(metric, Metric::NodeMemcgUsedBp(..)) {
                bp(used)
            } else {
                bp(total - used)
            })
        }
    }
}

/// Whether the metric can be read on this system (the goal is refused up front otherwise).
pub fn readable(metric: &Metric) -> Result<(), String> {
    if *metric == Metric::UserInput || self::metric(metric).is_some() {
        return Ok(());
    }
    Err(match metric {
        Metric::SomeMemPsiUs => "no /proc/pressure/memory (a kernel without PSI)".into(),
        Metric::NodeMemUsedBp(n) | Metric::NodeMemFreeBp(n) => format!("no NUMA node {n}"),
        Metric::NodeMemcgUsedBp(n, path) | Metric::NodeMemcgFreeBp(n, path) => {
            format!("no NUMA node {n}, or no cgroup `{path}` with memory.numa_stat")
        }
        Metric::UserInput => unreachable!("checked above"),
    })
}

/// The NUMA nodes online (`/sys/devices/system/node/online`: `0-1,3`); node 0 alone where the
/// kernel has no NUMA.
pub fn nodes_online() -> Vec<u32> {
    let Ok(text) = super::read_text("/sys/devices/system/node/online") else { return vec![0] };
    parse_node_list(&text)
}

fn parse_node_list(text: &str) -> Vec<u32> {
    let mut nodes = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(from), Ok(to)) = (from.parse::<u32>(), to.parse::<u32>()) {
            nodes.extend(from..=to);
        }
    }
    nodes
}

/// The running total of time some task stalled on memory, in µs.
fn some_total_us(path: &Path) -> Option<u64> {
    let text = super::read_text(path).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("some "))?;
    line.split_whitespace().find_map(|f| f.strip_prefix("total="))?.parse().ok()
}

fn node_total_and_free(node: u32) -> Option<(u64, u64)> {
    let path = format!("/sys/devices/system/node/node{node}/meminfo");
    total_and_free(&super::read_text(path).ok()?, &format!("Node {node} "))
}

/// `MemTotal` and `MemFree` in bytes, from /proc/meminfo (or a node's, whose lines start with
/// `prefix`).
fn total_and_free(text: &str, prefix: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(prefix)?.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok().map(|kib| kib * 1024)
        })
    };
    Some((field("MemTotal")?, field("MemFree")?))
}

/// A cgroup's anon and file bytes on `node`, from its `memory.numa_stat`.
fn memcg_node_bytes(text: &str, node: u32) -> Option<u64> {
    let key = format!("N{node}=");
    let bytes = |name: &str| {
        let line = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?;
        line.split_whitespace().find_map(|f| f.strip_prefix(key.as_str()))?.parse::<u64>().ok()
    };
    Some(bytes("anon")? + bytes("file")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_psi_and_numa_stat_are_read() {
        let meminfo = "MemTotal:        1000 kB\nMemFree:          250 kB\nMemAvailable: 600 kB\n";
        assert_eq!(total_and_free(meminfo, ""), Some((1_024_000, 256_000)));
        let node = "Node 1 MemTotal:  2000 kB\nNode 1 MemFree:  500 kB\n";
        assert_eq!(total_and_free(node, "Node 1 "), Some((2_048_000, 512_000)));
        assert_eq!(total_and_free(node, "Node 0 "), None);
        let stat = "anon N0=4096 N1=8192\nfile N0=100 N1=0\nkernel_stack N0=1\n";
        assert_eq!(memcg_node_bytes(stat, 0), Some(4196));
        assert_eq!(memcg_node_bytes(stat, 1), Some(8192));
        assert_eq!(memcg_node_bytes(stat, 2), None);
        assert_eq!(parse_node_list("0-2,4\n"), [0, 1, 2, 4]);
        assert_eq!(parse_node_list("0"), [0]);
    }

    #[test]
    fn this_system_reports_free_memory_and_node_0() {
        let free = free_permil().expect("/proc/meminfo");
        assert!((1..1000).contains(&free), "{free}");
        assert!(readable(&Metric::NodeMemFreeBp(0)).is_ok());
        assert_eq!(readable(&Metric::NodeMemFreeBp(999)).unwrap_err(), "no NUMA node 999");
        if Path::new("/proc/pressure/memory").exists() {
            assert!(metric(&Metric::SomeMemPsiUs).is_some());
        }
    }
}
