//! Debian kernels for the guests: found with apt, fetched with `apt-get download` (never
//! installed on the host), their vmlinuz and the few modules the guests load unpacked and
//! cached under target/vm/kernels/.

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

/// Modules the guests load at boot (with what they depend on, first): zram, for the schemes'
/// swap (the guests have no disk). A module the package lacks is built in.
const GUEST_MODULES: [&str; 1] = ["zram"];

/// A kernel's cached files: its vmlinuz and its guest modules, in load order.
pub struct Files {
    pub vmlinuz: PathBuf,
    pub modules: Vec<PathBuf>,
}

pub fn by_name(name: &str) -> Result<&'static Kernel> {
    ALL.iter().find(|k| k.name == name).with_context(|| {
        let names: Vec<_> = ALL.iter().map(|k| k.name).collect();
        format!("unknown kernel `{name}`: choose from {}", names.join(", "))
    })
}

impl Kernel {
    /// The cached files, fetched first if any is missing (both from one version).
    pub fn files(&self, cache: &Path) -> Result<Files> {
        let dir = cache.join(self.name);
        let (vmlinuz, order) = (dir.join("vmlinuz"), dir.join("modules/order"));
        if !vmlinuz.exists() || !order.exists() {
            self.fetch(&dir, cache)?;
        }
        let modules = std::fs::read_to_string(&order)?
            .lines()
            .map(|name| dir.join("modules").join(name))
            .collect();
        Ok(Files { vmlinuz, modules })
    }

    fn fetch(&self, dir: &Path, cache: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let apt = self.apt_options(cache)?;
        let image = self.newest_package(&apt)?;
        // The newer suites keep the modules in a package of their own.
        let mut packages = vec![image.clone()];
        if self.newer {
            packages.push(image.replacen("linux-binary-", "linux-modules-", 1));
        }
        let unpacked = dir.join("unpacked");
        std::fs::create_dir_all(&unpacked)?;
        for package in &packages {
            eprintln!("vm-test: kernel {}: downloading {package}", self.name);
            let download = Command::new("apt-get")
                .args(&apt)
                .args([crate::apt::RETRIES, "download", package])
                .current_dir(dir)
                .status()
                .context("cannot run apt-get")?;
            if !download.success() {
                bail!("kernel {}: `apt-get download {package}` failed", self.name);
            }
        }
        let debs: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        for deb in &debs {
            let status = Command::new("sh")
                .arg("-c")
                .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\"")
                .args(["sh", deb.to_str().unwrap(), unpacked.to_str().unwrap()])
                .status()?;
            if !status.success() {
                bail!("kernel {}: cannot unpack {}", self.name, deb.display());
            }
        }
        let found = find_vmlinuz(&unpacked).context("no vmlinuz in the package")?;
        std::fs::rename(found, dir.join("vmlinuz"))?;
        collect_modules(&unpacked, &dir.join("modules"))?;
        std::fs::remove_dir_all(&unpacked)?;
        for deb in debs {
            std::fs::remove_file(deb)?;
        }
        Ok(())
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

/// Copies `GUEST_MODULES` and their dependencies (the `depends=` of each module's info) from an
/// unpacked package to `out`, uncompressed, and lists them in load order in `out/order`.
fn collect_modules(unpacked: &Path, out: &Path) -> Result<()> {
    let mut index = std::collections::HashMap::new();
    index_modules(unpacked, &mut index);
    std::fs::create_dir_all(out)?;
    let mut order = Vec::new();
    for module in GUEST_MODULES {
        add_module(module, &index, out, &mut order)?;
    }
    std::fs::write(out.join("order"), order.join("\n") + "\n")?;
    Ok(())
}

/// Module name (with `_`, as `depends=` spells it) → its file, for every module under `dir`.
fn index_modules(dir: &Path, index: &mut std::collections::HashMap<String, PathBuf>) {
    for path in std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()) {
        if path.is_dir() {
            index_modules(&path, index);
        } else if let Some((name, _)) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.split_once(".ko"))
        {
            index.insert(name.replace('-', "_"), path);
        }
    }
}

fn add_module(
    name: &str,
    index: &std::collections::HashMap<String, PathBuf>,
    out: &Path,
    order: &mut Vec<String>,
) -> Result<()> {
    let Some(path) = index.get(name) else { return Ok(()) };
    let file = format!("{name}.ko");
    if order.contains(&file) {
        return Ok(());
    }
    let bytes = match path.extension().and_then(|x| x.to_str()) {
        Some("ko") => std::fs::read(path)?,
        Some(tool @ ("xz" | "zst")) => {
            let tool = if tool == "xz" { "xz" } else { "zstd" };
            let out = Command::new(tool)
                .args(["-dc"])
                .arg(path)
                .output()
                .with_context(|| format!("cannot run {tool}"))?;
            if !out.status.success() {
                bail!("{tool} cannot unpack {}", path.display());
            }
            out.stdout
        }
        _ => bail!("{}: a module compressed in a way this does not know", path.display()),
    };
    for dependency in depends(&bytes) {
        add_module(&dependency, index, out, order)?;
    }
    std::fs::write(out.join(&file), &bytes)?;
    order.push(file);
    Ok(())
}

/// The modules a module's info says it needs.
fn depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = module.windows(key.len()).position(|w| w == key) else { return Vec::new() };
    let rest = &module[at + key.len()..];
    let value = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
    String::from_utf8_lossy(value).split(',').filter(|d| !d.is_empty()).map(str::to_owned).collect()
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

    #[test]
    fn a_modules_dependencies_come_from_its_info() {
        let info = b"\x7fELF...\0license=GPL\0depends=lz4hc_compress,lz4_compress\0vermagic=6.12\0";
        assert_eq!(depends(info), ["lz4hc_compress", "lz4_compress"]);
        assert!(depends(b"\0depends=\0name=zram\0").is_empty());
        assert!(depends(b"no info").is_empty());
    }
}
