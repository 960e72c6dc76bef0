//! Memory pressure (PSI) as a process feels it: its cgroup v2 group's `memory.pressure`, or the
//! system's `/proc/pressure/memory` where the group has none (cgroup v1, the root group).

use std::path::PathBuf;

/// Where the pressure of `pid`'s memory is read, or `None` without PSI.
pub fn source(pid: u32) -> Option<PathBuf> {
    let own = super::read_text(format!("/proc/{pid}/cgroup")).ok().and_then(|text| {
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/');
        let file = super::cgroup::root().ok()?.join(path).join("memory.pressure");
        (!path.is_empty() && file.exists()).then_some(file)
    });
    own.or_else(|| {
        let system = PathBuf::from("/proc/pressure/memory");
        system.exists().then_some(system)
    })
}

/// The share of the last 10 s in which some task stalled on memory, in percent.
pub fn some_avg10(source: &std::path::Path) -> Option<f64> {
    parse_some_avg10(&super::read_text(source).ok()?)
}

fn parse_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find_map(|l| l.strip_prefix("some "))?;
    line.split_whitespace().find_map(|f| f.strip_prefix("avg10="))?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_some_line_is_read() {
        let text = "some avg10=12.50 avg60=3.00 avg300=1.00 total=99\nfull avg10=1.00 avg60=0 avg300=0 total=1\n";
        assert_eq!(parse_some_avg10(text), Some(12.5));
        assert_eq!(parse_some_avg10("full avg10=1.00\n"), None);
        assert_eq!(parse_some_avg10(""), None);
    }

    #[test]
    fn this_process_has_a_source_where_psi_exists() {
        let own = source(std::process::id());
        if std::path::Path::new("/proc/pressure/memory").exists() {
            let own = own.expect("a pressure file");
            assert!(some_avg10(&own).is_some_and(|p| (0.0..=100.0).contains(&p)), "{own:?}");
        }
    }
}
