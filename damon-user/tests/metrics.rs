//! `--metrics` and `--cgroup` against the real kernel (root; under CI=true they must run), a
//! real Prometheus (Debian's package, `UDAMON_PROMETHEUS`) scraping udamon, and promtool
//! (`UDAMON_PROMTOOL`) linting the exposition. `cargo xtask test` sets both.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

fn privileged(test: &str) -> bool {
    damon_user::test_support::privileged(test)
}

/// A tool `cargo xtask test` provides, or None (a printed skip) outside CI.
fn tool(var: &str, test: &str) -> Option<PathBuf> {
    match std::env::var_os(var).map(PathBuf::from).filter(|p| p.exists()) {
        Some(path) => Some(path),
        None if damon_user::test_support::in_ci() => {
            panic!("{test}: {var} is not set under CI=true")
        }
        None => {
            eprintln!("skipping {test}: {var} is not set (`cargo xtask test` sets it)");
            None
        }
    }
}

/// A child killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleeper() -> Killed {
    Killed(Command::new("sleep").arg("600").spawn().unwrap())
}

/// udamon monitoring with `args`: its metrics address (from its stderr) and its stdout lines as
/// they come.
struct Udamon {
    /// Held for its drop: udamon is killed with the test's end.
    _child: Killed,
    metrics: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Udamon {
    fn start(args: &[&str]) -> Self {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_udamon")).args(args))
    }

    fn spawn(command: &mut Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let metrics = loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "udamon ended before serving metrics"
            );
            if let Some(url) = line.trim().strip_prefix("udamon: metrics on http://") {
                break url.trim_end_matches("/metrics").to_owned();
            }
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        // The rest of stderr joins the lines (not JSON: only shown when a wait fails).
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { _child: Killed(child), metrics, lines }
    }

    fn pid(&self) -> u32 {
        self._child.0.id()
    }

    /// Its exit code, once it ends by itself (within 15 s).
    fn exit_code(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self._child.0.try_wait().unwrap() {
                // Let the readers catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "udamon did not end: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn has_line(&self, line: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l == line)
    }

    fn json_lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits up to 15 s for a JSON line that satisfies `found`.
    fn wait_for(&self, what: &str, found: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.json_lines().iter().any(&found) {
            assert!(
                Instant::now() < deadline,
                "no {what} within 15 s: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A plain HTTP/1.0 GET: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Metric names in an exposition (a sample's name, before its labels).
fn served_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

fn dashboard_names() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("udamon_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn prometheus_scrapes_what_udamon_reports() {
    let test = "prometheus_scrapes_what_udamon_reports";
    if !privileged(test) {
        return;
    }
    let (Some(prometheus), Some(promtool)) =
        (tool("UDAMON_PROMETHEUS", test), tool("UDAMON_PROMTOOL", test))
    else {
        return;
    };
    let target = sleeper();
    let pid = target.0.id();
    let udamon = Udamon::start(&["monitor", "--json", "--metrics", "0", &pid.to_string()]);
    udamon.wait_for("snapshot", |l| l["target_id"] == pid);

    // The exposition itself: served, linted by promtool, and enough for the dashboard.
    let (status, exposition) = get(&udamon.metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(
        exposition.contains(&format!("udamon_regions{{cgroup=\"\",pid=\"{pid}\"}}")),
        "{exposition}"
    );
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let served = served_names(&exposition);
    let missing: Vec<_> = dashboard_names().difference(&served).cloned().collect();
    assert!(missing.is_empty(), "the dashboard queries metrics udamon does not serve: {missing:?}");
    assert_eq!(get(&udamon.metrics, "/nothing").0, 404);

    // A real Prometheus scrapes it.
    let dir = std::env::temp_dir().join(format!("udamon-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: udamon\n    static_configs:\n      - targets: ['{}']\n",
            udamon.metrics
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (labels, value) = loop {
        assert!(Instant::now() < deadline, "Prometheus never had udamon_regions");
        std::thread::sleep(Duration::from_millis(500));
        let Ok(_) = TcpStream::connect(&web) else { continue };
        let (status, body) = get(&web, "/api/v1/query?query=udamon_regions");
        let Ok(answer) = serde_json::from_str::<Value>(&body) else { continue };
        if status == 200
            && let Some(sample) = answer["data"]["result"].as_array().and_then(|r| r.first())
        {
            let value: u64 = sample["value"][1].as_str().unwrap().parse().unwrap();
            break (sample["metric"].clone(), value);
        }
    };
    assert_eq!(labels["pid"], pid.to_string());
    assert_eq!(labels["job"], "udamon");
    // The value is one udamon reported for that pid.
    let reported: BTreeSet<u64> = udamon
        .json_lines()
        .iter()
        .filter(|l| l["target_id"] == pid)
        .filter_map(|l| l["nr_regions"].as_u64())
        .collect();
    assert!(reported.contains(&value), "Prometheus has {value}, udamon reported {reported:?}");
    drop(udamon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh cgroup v2 group, removed (after its processes are moved out) when dropped.
struct Group {
    dir: PathBuf,
    root: PathBuf,
}

impl Group {
    /// One per test (tests run in parallel): `name` tells them apart.
    fn new(name: &str) -> Self {
        let root = damon_user::sys::cgroup::root().expect("a cgroup v2 hierarchy");
        let dir = root.join(format!("udamon-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, root }
    }

    fn join(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    fn leave(&self, pid: u32) {
        std::fs::write(self.root.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        procs.lines().filter_map(|l| l.parse().ok()).for_each(|pid| self.leave(pid));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn cgroup_members_are_followed_as_they_come_and_go() {
    if !privileged("cgroup_members_are_followed_as_they_come_and_go") {
        return;
    }
    let group = Group::new("follow");
    let (a, b) = (sleeper(), sleeper());
    let (a_pid, b_pid) = (a.0.id(), b.0.id());
    group.join(a_pid);
    let path = group.dir.to_str().unwrap();
    let udamon = Udamon::start(&[
        "monitor",
        "--json",
        "--updr",
        "200ms",
        "--cgroup",
        path,
        "--metrics",
        "0",
    ]);
    udamon.wait_for("a snapshot of the first member", |l| l["target_id"] == a_pid);
    let name = format!("/udamon-test-follow-{}", std::process::id());
    let (_, exposition) = get(&udamon.metrics, "/metrics");
    assert!(
        exposition.contains(&format!("udamon_regions{{cgroup=\"{name}\",pid=\"{a_pid}\"}}")),
        "{exposition}"
    );

    group.join(b_pid);
    udamon.wait_for("the second member added", |l| l["added"] == b_pid);
    udamon.wait_for("a snapshot of the second member", |l| l["target_id"] == b_pid);
    group.leave(a_pid);
    udamon.wait_for("the first member gone", |l| l["gone"] == a_pid);
    // After it left: no more snapshots of it, and no more series.
    let seen = udamon.json_lines().len();
    udamon.wait_for("more snapshots of the second member", |l| {
        l["target_id"] == b_pid && l["snapshot"].as_u64() > Some(30)
    });
    assert!(
        !udamon.json_lines()[seen..].iter().any(|l| l["target_id"] == a_pid),
        "a left but is still monitored"
    );
    let (_, exposition) = get(&udamon.metrics, "/metrics");
    assert!(!exposition.contains(&format!("pid=\"{a_pid}\"")), "{exposition}");
}

#[test]
fn metrics_and_cgroup_bad_input_is_one_line_and_exit_2() {
    if !privileged("metrics_and_cgroup_bad_input_is_one_line_and_exit_2") {
        return;
    }
    let target = sleeper();
    let pid = target.0.id().to_string();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases: [(&[&str], &str); 5] = [
        (&["monitor", "--metrics", &taken, &pid], "Address already in use"),
        (&["monitor", "--metrics", "localhost:99999", &pid], "expected [HOST:]PORT"),
        (&["record", "--metrics", "nonsense", &pid], "expected [HOST:]PORT"),
        (&["monitor", "--cgroup", "/nonexistent/group"], "no such cgroup directory"),
        (&["monitor", "--cgroup", "/tmp", "--metrics", "0"], "not a cgroup v2 directory"),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_udamon")).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

/// udamon's CPU time so far (user and system), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // After the name: state is field 3, utime and stime fields 14 and 15.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Idle connections beyond the descriptors udamon has (300 at a limit of 256) neither end the
/// monitoring of a live process nor spin the accept loop; afterwards scrapes work again.
#[test]
fn idle_connections_do_not_end_monitoring_or_spin() {
    if !privileged("idle_connections_do_not_end_monitoring_or_spin") {
        return;
    }
    let target = sleeper();
    let pid = target.0.id();
    let mut command = Command::new(env!("CARGO_BIN_EXE_udamon"));
    command.args(["monitor", "--json", "--metrics", "0", &pid.to_string()]);
    // As `prlimit --nofile=256:256 udamon ...`.
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let limit = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    };
    let udamon = Udamon::spawn(&mut command);
    udamon.wait_for("a snapshot", |l| l["target_id"] == pid);
    let cpu = cpu_time(udamon.pid());
    let started = Instant::now();
    let idle: Vec<TcpStream> =
        (0..300).filter_map(|_| TcpStream::connect(&udamon.metrics).ok()).collect();
    assert!(idle.len() >= 256, "only {} connections", idle.len());
    std::thread::sleep(Duration::from_secs(3));
    let share = (cpu_time(udamon.pid()) - cpu).as_secs_f64() / started.elapsed().as_secs_f64();
    drop(idle);
    assert!(share < 0.5, "udamon used {:.0} % of a core meanwhile", 100.0 * share);
    let seen = udamon.json_lines().iter().filter(|l| l["target_id"] == pid).count();
    udamon.wait_for("snapshots afterwards", |_| {
        udamon.json_lines().iter().filter(|l| l["target_id"] == pid).count() >= seen + 5
    });
    assert!(!udamon.json_lines().iter().any(|l| l["gone"] == pid), "{:?}", udamon.lines);
    let (status, exposition) = get(&udamon.metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(exposition.contains(&format!("pid=\"{pid}\"")), "{exposition}");
}

/// What the endpoint answers a raw `request` with: the status line, or "closed" when it closes
/// the connection without one (a write it cut short counts as sent).
fn answer(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.lines().next().map_or_else(|| "closed".to_owned(), str::to_owned)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Malformed requests get 400, a head too large 431 (or, while it is still sent, a reset), a
/// client dribbling its request a byte at a time is cut off after the head's timeout;
/// meanwhile memory stays bounded (twenty 1 MiB heads at once) and sampling keeps its pace;
/// afterwards scrapes work.
#[test]
fn abusive_requests_cost_bounded_memory_and_leave_sampling_alone() {
    if !privileged("abusive_requests_cost_bounded_memory_and_leave_sampling_alone") {
        return;
    }
    let target = sleeper();
    let pid = target.0.id();
    let udamon = Udamon::start(&["monitor", "--json", "--metrics", "0", &pid.to_string()]);
    udamon.wait_for("a snapshot", |l| l["target_id"] == pid);
    let (rss, seen, started) = (rss_kib(udamon.pid()), udamon.json_lines().len(), Instant::now());
    let garbage = answer(&udamon.metrics, b"\x16\x03\x01\x00\xa5\x01 not http\r\n\r\n");
    assert!(garbage.contains(" 400 "), "{garbage}");
    let bad_line = answer(&udamon.metrics, b"GET\r\n\r\n");
    assert!(bad_line.contains(" 400 "), "{bad_line}");
    let huge: Vec<u8> =
        [&b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: "[..], &vec![b'a'; 1 << 20]].concat();
    let heads: Vec<_> = (0..20)
        .map(|_| {
            let (addr, huge) = (udamon.metrics.clone(), huge.clone());
            std::thread::spawn(move || answer(&addr, &huge))
        })
        .collect();
    for head in heads {
        let said = head.join().unwrap();
        assert!(said.contains(" 431 ") || said == "closed", "{said}");
    }
    let dribble = std::thread::spawn({
        let addr = udamon.metrics.clone();
        move || {
            let mut stream = TcpStream::connect(&addr).unwrap();
            let opened = Instant::now();
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
                if stream.write_all(&[*byte]).is_err() || opened.elapsed() > Duration::from_secs(20)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            opened.elapsed()
        }
    });
    let cut_off = dribble.join().unwrap();
    assert!(cut_off < Duration::from_secs(12), "a dribbling client kept for {cut_off:?}");
    let grown = rss_kib(udamon.pid()).saturating_sub(rss);
    assert!(grown < 32 << 10, "udamon grew by {grown} KiB");
    // One snapshot per 100 ms window went on meanwhile (half of them at least, on any machine).
    let windows = started.elapsed().as_millis() as usize / 100;
    let snapshots = udamon.json_lines().len() - seen;
    assert!(snapshots * 2 >= windows, "{snapshots} snapshots in {windows} windows");
    let (status, exposition) = get(&udamon.metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(exposition.contains(&format!("pid=\"{pid}\"")), "{exposition}");
}

/// `HEAD /metrics` gets GET's status and headers, and no body.
#[test]
fn head_gets_the_headers_without_the_body() {
    if !privileged("head_gets_the_headers_without_the_body") {
        return;
    }
    let target = sleeper();
    let udamon =
        Udamon::start(&["monitor", "--quiet", "--metrics", "0", &target.0.id().to_string()]);
    let mut stream = TcpStream::connect(&udamon.metrics).unwrap();
    write!(stream, "HEAD /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(body.is_empty(), "{body}");
}

/// In text mode a member leaving the group and the group's removal are said; the removal ends
/// the run with exit code 1 (an end nobody planned).
#[test]
fn a_removed_cgroup_ends_the_run_and_says_so() {
    if !privileged("a_removed_cgroup_ends_the_run_and_says_so") {
        return;
    }
    let group = Group::new("removed");
    let member = sleeper();
    let pid = member.0.id();
    group.join(pid);
    let path = group.dir.to_str().unwrap();
    let udamon = Udamon::start(&[
        "monitor",
        "--every",
        "1000",
        "--updr",
        "200ms",
        "--cgroup",
        path,
        "--metrics",
        "0",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !udamon.has_line(&format!("pid {pid} added")) {
        assert!(Instant::now() < deadline, "{:?}", udamon.lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    group.leave(pid);
    while !udamon.has_line(&format!("pid {pid} left the cgroup")) {
        assert!(Instant::now() < deadline, "{:?}", udamon.lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_dir(&group.dir).unwrap();
    let lines = udamon.lines.clone();
    assert_eq!(udamon.exit_code(), Some(1));
    let lines = lines.lock().unwrap();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("stderr: ")).collect::<Vec<_>>(),
        [&format!("stderr: udamon: cgroup {path} was removed")]
    );
}

/// Descriptors running out while following a cgroup: the failed membership read is said once
/// and monitoring goes on, members joining later included.
#[test]
fn a_cgroup_read_that_fails_for_want_of_descriptors_is_said_once() {
    if !privileged("a_cgroup_read_that_fails_for_want_of_descriptors_is_said_once") {
        return;
    }
    let group = Group::new("emfile");
    let (member, later) = (sleeper(), sleeper());
    group.join(member.0.id());
    let path = group.dir.to_str().unwrap();
    let udamon = Udamon::start(&[
        "monitor",
        "--json",
        "--updr",
        "100ms",
        "--cgroup",
        path,
        "--metrics",
        "0",
    ]);
    udamon.wait_for("a snapshot", |l| l["target_id"] == member.0.id());
    // Leave it a few descriptors, which the idle connections take.
    let open = std::fs::read_dir(format!("/proc/{}/fd", udamon.pid())).unwrap().count() as u64;
    let limit = libc::rlimit { rlim_cur: open + 8, rlim_max: open + 8 };
    // SAFETY: prlimit on our own child, with a valid limit and no old value asked for.
    let set = unsafe {
        libc::prlimit(udamon.pid() as i32, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut())
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    let idle: Vec<TcpStream> =
        (0..30).filter_map(|_| TcpStream::connect(&udamon.metrics).ok()).collect();
    let unreadable = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.starts_with("stderr: udamon: cannot read") && l.contains("cgroup.procs"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while unreadable(&udamon.lines.lock().unwrap()) == 0 {
        assert!(Instant::now() < deadline, "{:?}", udamon.lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    drop(idle);
    group.join(later.0.id());
    udamon.wait_for("the member who joined later", |l| l["added"] == later.0.id());
    udamon.wait_for("its snapshot", |l| l["target_id"] == later.0.id());
    assert!(!udamon.json_lines().iter().any(|l| l["gone"].is_number()), "{:?}", udamon.lines);
    let lines = udamon.lines.lock().unwrap();
    assert_eq!(unreadable(&lines), 1, "{lines:?}");
    let accept_failures = lines.iter().filter(|l| l.contains("cannot accept")).count();
    assert!(accept_failures <= 1, "{lines:?}");
}
