//! cgroup v2 targets: every process of a group, read from its `cgroup.procs` as they come and go.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context as _, Result, bail};

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid systems. Read once: the sampler asks for every target every update interval.
pub fn root() -> Result<PathBuf> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map_err(|err| format!("cannot read /proc/self/mounts: {err}"))?;
        mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
                (kind == "cgroup2").then(|| PathBuf::from(dir))
            })
            .min_by_key(|dir| dir.as_os_str().len())
            .ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_owned())
    });
    root.clone().map_err(anyhow::Error::msg)
}

/// Whether `dir` lies on a cgroup v2 filesystem.
fn cgroup2(dir: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data, filled by the kernel from a valid path string.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(path.as_ptr(), &mut fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC }
}

#[derive(Clone, Debug)]
pub struct Cgroup {
    dir: PathBuf,
    /// As shown in labels: the path below the cgroup root, e.g. `/system.slice/nginx.service`.
    name: String,
}

impl Cgroup {
    /// `path` is a directory of the cgroup v2 hierarchy, absolute or relative to its root.
    pub fn open(path: &str) -> Result<Self> {
        // Joined to the root, an empty path would name it: every process of the machine.
        if path.trim().is_empty() {
            bail!("--cgroup: an empty path (give the group's, e.g. system.slice/x.service)");
        }
        let root = root().with_context(|| format!("--cgroup {path}"))?;
        let dir = match Path::new(path) {
            p if p.is_absolute() => p.to_owned(),
            p => root.join(p),
        };
        if !dir.is_dir() {
            bail!("--cgroup {path}: no such cgroup directory ({})", dir.display());
        }
        // A v1 hierarchy has cgroup.procs too, but other files and semantics: only v2 is meant.
        if !cgroup2(&dir) || !dir.join("cgroup.procs").exists() {
            bail!(
                "--cgroup {path}: {} is not a cgroup v2 directory (cgroup v1 is not supported)",
                dir.display()
            );
        }
        let name = dir
            .strip_prefix(&root)
            .map_or_else(|_| dir.display().to_string(), |rest| format!("/{}", rest.display()));
        let cgroup = Self { dir, name };
        cgroup.procs().with_context(|| format!("--cgroup {path}"))?;
        Ok(cgroup)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The processes in the group now (not in its children), sorted.
    pub fn procs(&self) -> Result<Vec<u32>> {
        let path = self.dir.join("cgroup.procs");
        let text =
            super::read_text(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        pids.sort_unstable();
        Ok(pids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_path_is_not_the_root() {
        for path in ["", " "] {
            let Err(err) = Cgroup::open(path) else { panic!("{path:?} was taken") };
            let err = err.to_string();
            assert!(err.starts_with("--cgroup: an empty path"), "{err}");
        }
    }

    #[test]
    fn bad_paths_are_named() {
        let err = Cgroup::open("/nonexistent/cgroup").unwrap_err().to_string();
        assert!(err.contains("no such cgroup directory"), "{err}");
        let err = Cgroup::open("/tmp").unwrap_err().to_string();
        assert!(err.contains("not a cgroup v2 directory"), "{err}");
        // A directory that only looks like a group.
        let fake = std::env::temp_dir().join(format!("udamon-fake-cgroup-{}", std::process::id()));
        fs::create_dir_all(&fake).unwrap();
        fs::write(fake.join("cgroup.procs"), "1\n").unwrap();
        let err = Cgroup::open(fake.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            err.ends_with("is not a cgroup v2 directory (cgroup v1 is not supported)"),
            "{err}"
        );
        fs::remove_dir_all(&fake).unwrap();
    }

    #[test]
    fn the_root_group_reads_if_mounted() {
        if let Ok(dir) = root() {
            let root = Cgroup::open(dir.to_str().unwrap()).unwrap();
            assert_eq!(root.name(), "/");
            assert!(!root.procs().unwrap().is_empty());
        }
    }
}
