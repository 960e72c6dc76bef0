//! Small utilities: terminal tables, files written whole, text files read with a cap.

pub mod atomic_file;
pub mod table;

use std::{io::Read as _, path::Path};

use anyhow::{Context as _, Result, bail};

/// The text of the file at `path` (`what` names it in errors), refused beyond `max` bytes: an
/// input file is read whole, so a huge one must fail before it costs its size in memory.
pub fn read_text(path: &Path, max: u64, what: &str) -> Result<String> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{what} {} is larger than {max} bytes", path.display());
    }
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}
