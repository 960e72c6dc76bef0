//! Output files appear whole or not at all: written to a temporary file beside the target, synced,
//! then renamed over it. A crash leaves the previous version (or nothing), never half a file.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&temp);
        return Err(err).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Fails now, with the reason, if `path` could not be written later.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        anyhow::bail!("cannot write {}: it is a directory", path.display());
    }
    let temp = temp_path(path);
    fs::File::create(&temp).with_context(|| format!("cannot write {}", path.display()))?;
    let _ = fs::remove_file(&temp);
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.udamon-{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("udamon-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.data");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let missing = dir.join("no/such/dir/out");
        assert!(check_writable(&missing).is_err());
        assert!(format!("{:#}", check_writable(&dir).unwrap_err()).contains("directory"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
