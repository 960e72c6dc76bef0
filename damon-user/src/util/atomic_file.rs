//! Output files (`-o`), never destroying what is at the path. A regular file appears whole or not
//! at all: written to a temporary file beside it, synced, then renamed over it, so a crash leaves
//! the previous version (or nothing), never half a file. A symlink is followed, dangling or not:
//! the rename happens at its target and the link stays a link. A device or FIFO cannot be
//! replaced without destroying it, so it is written through (opened for writing, never created,
//! truncated or renamed over), as is a descriptor named through /proc (`/dev/stdout`,
//! `/dev/fd/3`): the kernel reopens what it refers to. A directory, a socket, or a file of a
//! kernel interface (/proc, /sys) is refused.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Where an output goes, checked when it is named.
#[derive(Debug)]
pub struct Output {
    /// As the user gave it, for messages.
    given: PathBuf,
    how: How,
}

#[derive(Debug)]
enum How {
    /// A regular file (or none yet) at this path, symlinks resolved: replaced atomically.
    Replace(PathBuf),
    /// A device, a FIFO or a descriptor's /proc link to one: written through.
    WriteThrough,
    /// A descriptor's /proc link to a regular file: added to.
    Append,
}

impl Output {
    /// Fails now, with one line saying why, if `path` could not be written later. `-` is
    /// standard output.
    pub fn new(path: &Path) -> Result<Self> {
        // Through /proc, which every system has (a minimal one may lack /dev/stdout).
        let named = if path == Path::new("-") { Path::new("/proc/self/fd/1") } else { path };
        let cannot = || format!("cannot write {}", named.display());
        let real = follow_links(named).with_context(cannot)?;
        // A descriptor's link opens what the descriptor is, if it is open.
        let descriptor = is_descriptor(&real);
        if descriptor && fs::metadata(&real).is_err() {
            let n = real.file_name().unwrap_or_default().display();
            bail!("{}: descriptor {n} is not open", cannot());
        }
        // A kernel interface's files are the kernel's, never a file for udamon's output.
        if let Some(fs) = kernel_fs(&real) {
            bail!("{}: it is in {fs}, a kernel interface, not a file", cannot());
        }
        let how = match fs::metadata(&real) {
            Err(err) if err.kind() == io::ErrorKind::NotFound && !descriptor => How::Replace(real),
            Err(err) => return Err(err).with_context(cannot),
            Ok(meta) => {
                let kind = meta.file_type();
                if kind.is_dir() {
                    bail!("{}: it is a directory", cannot());
                }
                if kind.is_socket() {
                    bail!("{}: it is a socket", cannot());
                }
                match (kind.is_file(), descriptor) {
                    (true, false) => How::Replace(real),
                    // Where the shell's `>` or `>>` left it.
                    (true, true) => How::Append,
                    (false, _) => How::WriteThrough,
                }
            }
        };
        let output = Self { given: named.to_owned(), how };
        output.probe().with_context(cannot)?;
        Ok(output)
    }

    /// Whether a write replaces the whole file (else it adds to a stream: write once).
    pub fn replaceable(&self) -> bool {
        matches!(self.how, How::Replace(_))
    }

    pub fn path(&self) -> &Path {
        &self.given
    }

    /// Writes `bytes` as the whole output; a full device (ENOSPC) or any other failure is an
    /// error, and a replaced file keeps its previous version.
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        let written = match &self.how {
            How::Replace(real) => replace(real, bytes),
            How::WriteThrough => {
                open_write_through(&self.given).and_then(|mut stream| stream.write_all(bytes))
            }
            How::Append => open_append(&self.given).and_then(|mut file| file.write_all(bytes)),
        };
        written.with_context(|| format!("cannot write {}", self.given.display()))
    }

    /// What writing will need, tried now: creating a file beside the target, or write access
    /// to a FIFO (opening one would hand its reader an end of file), or opening the device.
    fn probe(&self) -> io::Result<()> {
        match &self.how {
            How::Replace(real) => {
                let temp = temp_path(real);
                fs::File::create(&temp)?;
                fs::remove_file(&temp)
            }
            How::WriteThrough if fs::metadata(&self.given)?.file_type().is_fifo() => {
                let path = std::ffi::CString::new(self.given.as_os_str().as_encoded_bytes())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                // SAFETY: a NUL-terminated path.
                if unsafe { libc::access(path.as_ptr(), libc::W_OK) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            How::WriteThrough => open_write_through(&self.given).map(drop),
            How::Append => open_append(&self.given).map(drop),
        }
    }
}

/// A device or FIFO opened for writing without waiting: a FIFO nobody reads fails (ENXIO, said
/// as such) instead of blocking udamon's exit for good. Once open it blocks again, so a slow
/// reader is waited for, as by any writer.
fn open_write_through(path: &Path) -> io::Result<fs::File> {
    let stream =
        fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(
            |err| {
                let fifo = || fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
                match err.raw_os_error() {
                    Some(libc::ENXIO) if fifo() => {
                        io::Error::other("a FIFO with no reader (start the reader first)")
                    }
                    // A device with nothing behind it (e.g. /dev/tty without a terminal).
                    Some(libc::ENXIO) => io::Error::other("no device behind it"),
                    _ => err,
                }
            },
        )?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    // SAFETY: fcntl on the descriptor just opened, owned by `stream`.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

fn open_append(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().append(true).open(path)
}

fn replace(real: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = temp_path(real);
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, real)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// `path` with every symlink of its last component followed, even to a target that does not
/// exist yet (the directories above are the kernel's to resolve), up to a descriptor's link,
/// whose target (`pipe:[123]`, a deleted file) may be no path at all.
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_owned();
    // As the kernel's limit on nested links (ELOOP).
    for _ in 0..40 {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() && !is_descriptor(&path) => {
                let target = fs::read_link(&path)?;
                path = path.parent().map_or_else(|| target.clone(), |dir| dir.join(&target));
            }
            _ => return Ok(path),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

/// Whether `path` names a descriptor of a process: `/proc/PID/fd/N` (so `/dev/stdout`,
/// `/dev/fd/N` once followed).
fn is_descriptor(path: &Path) -> bool {
    path.parent().is_some_and(|dir| {
        dir.file_name().is_some_and(|name| name == "fd") && fs_type(dir) == Some(PROC_MAGIC)
    })
}

const PROC_MAGIC: i64 = 0x9fa0;

/// The kernel interface `path` lies in, if it does: by the file system of what it names (a
/// descriptor's link followed), or of its directory while it does not exist yet.
fn kernel_fs(path: &Path) -> Option<&'static str> {
    let kind = fs_type(path).or_else(|| fs_type(path.parent()?))?;
    Some(match kind {
        PROC_MAGIC => "/proc",
        0x6265_6572 => "/sys",
        0x6367_7270 | 0x0027_e0eb => "a cgroup file system",
        0x7472_6163 => "tracefs",
        0x6462_6720 => "debugfs",
        0xcafe_4a11 => "the BPF file system",
        0x7363_6673 => "securityfs",
        0xde5e_81e4 => "efivarfs",
        0x6265_6570 => "configfs",
        0x6165_676c => "pstore",
        _ => return None,
    })
}

/// `statfs`'s file system type of `path` (links followed); None if it cannot be read.
fn fs_type(path: &Path) -> Option<i64> {
    let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a NUL-terminated path and a zeroed buffer statfs fills.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_type as i64)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.udamon-{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn write(path: &Path, bytes: &[u8]) -> Result<()> {
        Output::new(path)?.write(bytes)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("udamon-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary_behind() {
        let dir = scratch("replace");
        let path = dir.join("out.data");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let missing = dir.join("no/such/dir/out");
        assert!(Output::new(&missing).is_err());
        let err = format!("{:#}", Output::new(&dir).unwrap_err());
        assert_eq!(err, format!("cannot write {}: it is a directory", dir.display()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_are_followed_and_stay_links() {
        let dir = scratch("links");
        let (link, target) = (dir.join("link"), dir.join("target"));
        // Dangling first: the target is created where the link points (a relative link).
        symlink("target", &link).unwrap();
        write(&link, b"one").unwrap();
        write(&link, b"two").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&target).unwrap(), b"two");
        // A chain of links, and a loop.
        let chain = dir.join("chain");
        symlink(&link, &chain).unwrap();
        write(&chain, b"three").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"three");
        symlink("loop", dir.join("loop")).unwrap();
        assert!(Output::new(&dir.join("loop")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn devices_and_fifos_are_written_through_sockets_refused() {
        let null = Output::new(Path::new("/dev/null")).unwrap();
        assert!(!null.replaceable());
        null.write(b"nothing").unwrap();
        assert!(fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        let full = Output::new(Path::new("/dev/full")).unwrap();
        let err = format!("{:#}", full.write(b"x").unwrap_err());
        assert!(err.starts_with("cannot write /dev/full: No space left on device"), "{err}");

        let dir = scratch("fifo");
        let fifo = dir.join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let output = Output::new(&fifo).expect("no reader yet is fine");
        // Writing with no reader fails at once instead of blocking the exit.
        let err = format!("{:#}", output.write(b"x").unwrap_err());
        assert!(err.ends_with("a FIFO with no reader (start the reader first)"), "{err}");
        // A reader already waiting gets the whole record, not an end of file from the check.
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || fs::read(fifo).unwrap()
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        let output = Output::new(&fifo).unwrap();
        output.write(b"through").unwrap();
        assert_eq!(reader.join().unwrap(), b"through");
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());

        let socket = dir.join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = format!("{:#}", Output::new(&socket).unwrap_err());
        assert!(err.ends_with("it is a socket"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn descriptors_are_written_through_and_kernel_files_refused() {
        // `/dev/stdout` through a pipe, as `udamon … -o /dev/stdout | reader` opens it.
        let mut fds = [0; 2];
        // SAFETY: a two-int buffer.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the descriptors just made, owned from here on.
        let (read_end, write_end): (fs::File, fs::File) = unsafe {
            (
                std::os::fd::FromRawFd::from_raw_fd(fds[0]),
                std::os::fd::FromRawFd::from_raw_fd(fds[1]),
            )
        };
        let through = format!("/proc/self/fd/{}", fds[1]);
        let output = Output::new(Path::new(&through)).unwrap();
        assert!(!output.replaceable());
        output.write(b"piped").unwrap();
        drop(write_end);
        assert_eq!(io::read_to_string(read_end).unwrap(), "piped");
        // A regular file behind a descriptor is added to, as the shell's `>>` asks.
        let dir = scratch("descriptor");
        let path = dir.join("out");
        fs::write(&path, "kept ").unwrap();
        let file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
        Output::new(Path::new(&through)).unwrap().write(b"added").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "kept added");
        fs::remove_dir_all(&dir).unwrap();
        for (kernel, fs) in [("/proc/self/mem", "/proc"), ("/sys/kernel/notes", "/sys")] {
            let err = format!("{:#}", Output::new(Path::new(kernel)).unwrap_err());
            assert_eq!(
                err,
                format!("cannot write {kernel}: it is in {fs}, a kernel interface, not a file")
            );
        }
        // Links in /proc that are not descriptors are followed to what they name, and a
        // descriptor to a kernel file is refused as the file is.
        let err = format!("{:#}", Output::new(Path::new("/proc/mounts")).unwrap_err());
        assert_eq!(
            err,
            "cannot write /proc/mounts: it is in /proc, a kernel interface, not a file"
        );
        let kernel = fs::File::open("/proc/self/status").unwrap();
        let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&kernel));
        assert!(
            format!("{:#}", Output::new(Path::new(&through)).unwrap_err())
                .ends_with("it is in /proc, a kernel interface, not a file")
        );
        let err = format!("{:#}", Output::new(Path::new("/dev/fd/999999")).unwrap_err());
        assert_eq!(err, "cannot write /dev/fd/999999: descriptor 999999 is not open");
        if let Some(cgroup) =
            ["/sys/fs/cgroup/cgroup.procs"].into_iter().find(|p| Path::new(p).exists())
        {
            assert!(Output::new(Path::new(cgroup)).is_err());
        }
    }
}
