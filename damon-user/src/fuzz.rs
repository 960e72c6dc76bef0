//! Entry points for the fuzz targets (`fuzz/`, `cargo xtask fuzz`) and for the replay of their
//! corpus in the tests: each feeds arbitrary bytes to one reader of untrusted input, which must
//! answer with a value or an error: never a panic, a hang, or memory beyond its cap.

use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::AsyncWriteExt as _;

use crate::{output::metrics::server, output::record, sys};

/// Records of every format (sniffed as `report` does): damo's JSON, plain or compressed, and
/// perf script text. The cap is the readers' own, smaller than the default to keep runs fast.
pub fn record(data: &[u8]) {
    let _ = record::decode(data, 1 << 24);
}

/// `/proc/PID/maps` and smaps text, and a lookup in what it gave.
pub fn proc_maps(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mappings = sys::proc_maps::parse(&text);
    if let Some(m) = mappings.first() {
        let _ = sys::proc_maps::find(&mappings, m.start);
        let _ = m.clearable();
    }
}

/// BTF from a file, and the lookups the data plane makes in it.
pub fn btf(data: &[u8]) {
    if let Ok(btf) = sys::btf::Btf::parse(data) {
        let _ = btf.struct_size("page");
        let _ = btf.enum_value("PG_head");
        let _ = btf.member_offset("mm_struct", "pgd");
        let _ = btf.member_offset("task_struct", "mm");
    }
}

/// A simulator scenario file.
pub fn scenario(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = damon_engine::sim::scenario::Scenario::from_toml(text);
    }
}

/// A `--config` file, laid under an empty command line.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::cli::options::settings_of_config(text);
    }
}

/// What serves the metrics endpoint, given `data` as all a client sends before it closes.
pub fn metrics_request(data: &[u8]) {
    struct Fixed;
    impl server::Exposition for Fixed {
        fn encode(&self) -> String {
            "udamon_up 1\n".into()
        }
    }
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
    });
    runtime.block_on(async {
        let (client, ours) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(server::serve_connection(ours, Arc::new(Mutex::new(Fixed))));
        let (mut answers, mut requests) = tokio::io::split(client);
        let request = data.to_vec();
        let sending = tokio::spawn(async move {
            let _ = requests.write_all(&request).await;
            let _ = requests.shutdown().await;
        });
        // The answers are read as they come, so a pipelined flood cannot fill the pipe.
        let _ = tokio::io::copy(&mut answers, &mut tokio::io::sink()).await;
        let _ = sending.await;
        let _ = serving.await;
    });
}
