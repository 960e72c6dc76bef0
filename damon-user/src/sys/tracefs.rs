//! tracefs: where tracepoint ids and event layouts live. Minimal VMs often leave it unmounted;
//! udamon mounts it at the standard place when it needs it, as perf does.

use std::{ffi::CString, fs, io, path::Path};

use anyhow::{Context as _, Result, bail};

/// The places aya looks, in its order.
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mount {
    /// Already mounted at this path.
    Found(&'static str),
    /// Was not mounted; udamon mounted it at this path.
    MountedNow(&'static str),
}

impl Mount {
    pub fn path(self) -> &'static str {
        match self {
            Self::Found(path) | Self::MountedNow(path) => path,
        }
    }
}

/// Where tracefs is mounted, if it is.
pub fn find() -> Option<&'static str> {
    MOUNT_POINTS
        .into_iter()
        .find(|dir| fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()))
}

/// Finds tracefs, mounting it at `/sys/kernel/tracing` if it is nowhere (needs CAP_SYS_ADMIN).
pub fn ensure_mounted() -> Result<Mount> {
    if let Some(path) = find() {
        return Ok(Mount::Found(path));
    }
    let target = MOUNT_POINTS[0];
    if !Path::new(target).is_dir() {
        bail!("tracefs is not mounted and {target} does not exist");
    }
    let c = |s: &str| CString::new(s).expect("no NUL in constant");
    let (source, dir, fstype) = (c("tracefs"), c(target), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc =
        unsafe { libc::mount(source.as_ptr(), dir.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at {target} failed: {err}");
    }
    Ok(Mount::MountedNow(target))
}

/// The byte offset of `field` in an event's record, from `events/CATEGORY/NAME/format`.
pub fn field_offset(tracefs: &str, category: &str, name: &str, field: &str) -> Result<usize> {
    let path = format!("{tracefs}/events/{category}/{name}/format");
    let format = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_field_offset(&format, field)
        .with_context(|| format!("{path} has no field `{field}` with an offset"))
}

fn parse_field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        // "\tfield:unsigned long address;\toffset:8;\tsize:8;\tsigned:0;"
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.strip_prefix("field:")?;
        if declaration.rsplit(|c: char| c.is_whitespace() || c == '*').next()? != field {
            return None;
        }
        parts.find_map(|part| part.trim().strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_FAULT_USER: &str = "name: page_fault_user\nID: 190\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:unsigned long address;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:unsigned long ip;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:unsigned long error_code;\toffset:24;\tsize:8;\tsigned:0;\n";

    #[test]
    fn finds_field_offsets() {
        assert_eq!(parse_field_offset(PAGE_FAULT_USER, "address"), Some(8));
        assert_eq!(parse_field_offset(PAGE_FAULT_USER, "error_code"), Some(24));
        assert_eq!(parse_field_offset(PAGE_FAULT_USER, "common_pid"), Some(4));
        assert_eq!(parse_field_offset(PAGE_FAULT_USER, "code"), None);
        assert_eq!(parse_field_offset("field:char *comm;\toffset:12;", "comm"), Some(12));
    }
}
