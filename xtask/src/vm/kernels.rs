//! Debian kernels for the guests: found with apt, fetched with `apt-get download` (never
//! installed on the host), their vmlinuz unpacked and cached under target/vm/kernels/.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// A kernel of the matrix: its name on the command line, the package that holds its vmlinuz,
/// and whether it comes from Debian's newer suites rather than the host's own.
pub struct Kernel {
    pub name: &'static str,
    pattern: &'static str,
    newer: bool,
}

/// Where 7.2 lives: sid today; testing and trixie-backports keep it after sid moves on.
const NEWER_SUITES: &str = "deb http://deb.debian.org/debian sid main
deb http://deb.debian.org/debian forky main
deb http://deb.debian.org/debian trixie-backports main
";

pub const ALL: [Kernel; 3] = [
    Kernel { name: "6.1", pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64$", newer: false },
    Kernel { name: "6.12", pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$", newer: false },
    // The newer suites split the image: the kernel itself is in linux-binary-*.
    Kernel { name: "7.2", pattern: r"^linux-binary-7\.2\.[0-9]+\+deb[0-9]+-amd64$", newer: true },
];

pub fn by_name(name: &str) -> Result<&'static Kernel> {
    ALL.iter().find(|k| k.name == name).with_context(|| {
        let names: Vec<_> = ALL.iter().map(|k| k.name).collect();
        format!("unknown kernel `{name}`: choose from {}", names.join(", "))
    })
}

impl Kernel {
    /// The cached vmlinuz, fetched first if missing.
    pub fn vmlinuz(&self, cache: &Path) -> Result<PathBuf> {
        let dir = cache.join(self.name);
        let vmlinuz = dir.join("vmlinuz");
        if vmlinuz.exists() {
            return Ok(vmlinuz);
        }
        std::fs::create_dir_all(&dir)?;
        let apt = self.apt_options(cache)?;
        let package = self.newest_package(&apt)?;
        eprintln!("vm-test: kernel {}: downloading {package}", self.name);
        let download = Command::new("apt-get")
            .args(&apt)
            .args([crate::apt::RETRIES, "download", &package])
            .current_dir(&dir)
            .status()
            .context("cannot run apt-get")?;
        if !download.success() {
            bail!("kernel {}: `apt-get download {package}` failed", self.name);
        }
        let deb = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        let unpacked = dir.join("unpacked");
        std::fs::create_dir_all(&unpacked)?;
        let status = Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\"")
            .args(["sh", deb.to_str().unwrap(), unpacked.to_str().unwrap()])
            .status()?;
        if !status.success() {
            bail!("kernel {}: cannot unpack {}", self.name, deb.display());
        }
        let found = find_vmlinuz(&unpacked).context("no vmlinuz in the package")?;
        std::fs::rename(found, &vmlinuz)?;
        std::fs::remove_dir_all(&unpacked)?;
        std::fs::remove_file(&deb)?;
        Ok(vmlinuz)
    }

    fn newest_package(&self, apt: &[String]) -> Result<String> {
        let out = Command::new("apt-cache")
            .args(apt)
            .args(["search", "--names-only", self.pattern])
            .output()
            .context("cannot run apt-cache")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut names: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
        names.sort_by_key(|n| version_key(n));
        names.last().map(|n| n.to_string()).with_context(|| {
            format!(
                "kernel {}: no package matches {} (try `apt-get update`)",
                self.name, self.pattern
            )
        })
    }

    /// apt options for the package's suites: the host's own, or the newer suites' lists kept
    /// under `cache`.
    fn apt_options(&self, cache: &Path) -> Result<Vec<String>> {
        if !self.newer {
            return Ok(Vec::new());
        }
        crate::apt::private_sources(&cache.join("apt-newer"), NEWER_SUITES)
    }
}

/// Orders package names by the numbers in them (6.1.0-9 before 6.1.0-10).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_vmlinuz(&path) {
                return Some(found);
            }
        } else if path.file_name()?.to_str()?.starts_with("vmlinuz") {
            return Some(path);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_kernel_packages_sort_last() {
        let mut names = vec!["linux-image-6.1.0-10-amd64", "linux-image-6.1.0-9-amd64"];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names, ["linux-image-6.1.0-9-amd64", "linux-image-6.1.0-10-amd64"]);
        assert!(by_name("5.10").is_err());
    }
}
