//! apt over sources of our own: package lists kept under target/ for suites the host does not
//! list (sid's kernels, backports' QEMU). The host's sources and lists stay as they are.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// A mirror's hiccup should not fail a CI run.
pub const RETRIES: &str = "-oAcquire::Retries=3";

/// apt options that read `sources` (sources.list lines) through lists and a cache under `dir`,
/// after fetching those lists.
pub fn private_sources(dir: &Path, sources: &str) -> Result<Vec<String>> {
    let dir = std::path::absolute(dir)?;
    std::fs::create_dir_all(dir.join("lists/partial"))?;
    std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
    let list = dir.join("sources.list");
    std::fs::write(&list, sources)?;
    let options = vec![
        format!("-oDir::Etc::SourceList={}", list.display()),
        "-oDir::Etc::SourceParts=/dev/null".to_owned(),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        RETRIES.to_owned(),
    ];
    let status = Command::new("apt-get")
        .args(&options)
        .args(["-q", "update"])
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("cannot fetch package lists for {} (apt-get update)", list.display());
    }
    Ok(options)
}

/// The host's Debian release name (bookworm on the machines this project runs on).
pub fn codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME")
}
