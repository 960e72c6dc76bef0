//! What the root benches share: C workloads compiled at run time, and their processes.
// Each bench is its own crate and uses a part of this.
#![allow(dead_code)]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

/// `source` compiled into `dir` as `name`.
pub fn build_c(dir: &Path, name: &str, source: &str) -> Result<PathBuf, String> {
    let (file, binary) = (dir.join(format!("{name}.c")), dir.join(name));
    std::fs::write(&file, source).map_err(|e| e.to_string())?;
    let built = Command::new("cc").arg("-O2").arg("-o").arg(&binary).arg(&file).status();
    built.is_ok_and(|s| s.success()).then_some(binary).ok_or_else(|| format!("cc {name}.c failed"))
}

/// A running workload that says `ready` once set up, then (optionally) a count per line; killed
/// on drop.
pub struct Load {
    child: Child,
    pub counts: mpsc::Receiver<u64>,
}

impl Load {
    pub fn start(binary: &Path, args: &[&str]) -> Self {
        let mut child =
            Command::new(binary).args(args).stdout(Stdio::piped()).spawn().expect("the load");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.next().is_some_and(|l| l.is_ok_and(|l| l == "ready")),
            "the load did not start"
        );
        let (tx, counts) = mpsc::channel();
        thread::spawn(move || {
            for n in lines.map_while(Result::ok).filter_map(|l| l.parse().ok()) {
                let _ = tx.send(n);
            }
        });
        Self { child, counts }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes a cgroup of ours whose processes were killed and reaped: it empties as their memory
/// is uncharged, which may take a moment.
pub fn remove_cgroup(dir: &Path) {
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("note: cannot remove {}", dir.display());
}

/// The sum of a metric's series (a counter, or a gauge over its labels) in the exposition udamon
/// serves on 127.0.0.1:`port`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let values = text.lines().filter(|l| {
        l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
    });
    Some(values.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
}
