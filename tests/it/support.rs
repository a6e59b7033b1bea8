//! Shared test helpers: start a real `rgun` on an ephemeral loopback port (handed over
//! as `fd://3`, so there is no port race), wait for its workers through its log, talk
//! HTTP over real sockets, and stop what we started by pid.
//!
//! The `rgun` and `rgunctl` under test are what users run: the console scripts of
//! `./.venv`, where `scripts/test` installed this checkout with pip (beside the pinned
//! Flask and Django). A missing or out-of-date install fails the test that needs it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project venv made by `scripts/test`: rgun installed from this checkout, Flask,
/// Django. Panics when it is missing or its rgun is older than the sources.
pub fn venv() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let v = repo_root().join(".venv");
            let stamp = v.join(".rgun-installed");
            let installed = std::fs::metadata(&stamp)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| {
                    panic!(
                        "{} is missing: run ./scripts/test, which installs rgun into ./.venv",
                        stamp.display()
                    )
                });
            let newest = newest_source(&repo_root());
            if let Some((path, _)) = newest.filter(|(_, m)| *m > installed) {
                panic!(
                    "./.venv's rgun is older than {}: run ./scripts/test, which reinstalls it",
                    path.display()
                );
            }
            v
        })
        .clone()
}

/// The newest file among the sources that go into the installed package.
fn newest_source(root: &Path) -> Option<(PathBuf, std::time::SystemTime)> {
    let mut newest: Option<(PathBuf, std::time::SystemTime)> = None;
    let mut dirs: Vec<PathBuf> = ["src", "ctl/src", "python"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let mut files = vec![root.join("Cargo.toml"), root.join("pyproject.toml")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for path in files {
        let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
            continue;
        };
        if newest.as_ref().is_none_or(|(_, m)| modified > *m) {
            newest = Some((path, modified));
        }
    }
    newest
}

/// The installed `rgun` console script.
pub fn rgun_bin() -> PathBuf {
    venv().join("bin").join("rgun")
}

/// The installed `rgunctl` console script.
pub fn rgunctl_bin() -> PathBuf {
    venv().join("bin").join("rgunctl")
}

/// Gunicorn, pinned in tests/requirements.txt, to compare with.
/// What a finished `rgunctl` run said.
#[derive(Debug)]
pub struct CtlRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlRun {
    pub fn from(out: std::process::Output) -> CtlRun {
        CtlRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    pub fn assert_ok(&self, what: &str) -> &CtlRun {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: exit {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs a prepared `rgunctl` command with a time limit (killing it by pid on overrun).
pub fn run_bounded(mut cmd: Command, limit: Duration) -> CtlRun {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn rgunctl");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => CtlRun::from(out.expect("wait for rgunctl")),
        Err(_) => {
            // SAFETY: killing the rgunctl process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("rgunctl {cmd:?} did not finish within {limit:?}");
        }
    }
}

/// `rgunctl [-s SOCKET] ARGS`, the environment's socket removed.
pub fn rgunctl_cmd(socket: Option<&Path>, args: &[&str]) -> Command {
    with_rgunctl_args(Command::new(rgunctl_bin()), socket, args)
}

/// `cmd` (an `rgunctl`) with `-s SOCKET` and `args`, the environment's socket removed.
pub fn with_rgunctl_args(mut cmd: Command, socket: Option<&Path>, args: &[&str]) -> Command {
    cmd.env_remove("RGUN_CONTROL_SOCKET");
    if let Some(s) = socket {
        cmd.arg("-s").arg(s);
    }
    cmd.args(args);
    cmd
}

/// `rgunctl -s <server's socket> ARGS`, in at most 90 s.
pub fn ctl(server: &Server, args: &[&str]) -> CtlRun {
    run_bounded(
        rgunctl_cmd(Some(&server.ctl_path), args),
        Duration::from_secs(90),
    )
}

pub fn gunicorn_bin() -> PathBuf {
    venv().join("bin").join("gunicorn")
}

/// A command that runs the installed `rgun`.
pub fn rgun() -> Command {
    Command::new(rgun_bin())
}

pub fn apps_dir() -> PathBuf {
    repo_root().join("tests").join("apps")
}

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
    pub access_path: PathBuf,
    pub ctl_path: PathBuf,
}

pub struct ServerBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    workers: u32,
    /// Pass `-w workers` (else the count comes from the configuration file).
    workers_flag: bool,
    wait_ready: bool,
    bind_fd: bool,
    systemd: bool,
    /// Start Gunicorn (the venv's, for a side-by-side comparison) instead of rgun.
    gunicorn: bool,
    /// cgroup directories (v1 or v2) rgun starts in.
    cgroups: Vec<PathBuf>,
    /// A command rgun runs under (`unshare ...`), rgun's path and arguments after it.
    wrapper: Vec<String>,
}

impl ServerBuilder {
    pub fn new(app: &str) -> ServerBuilder {
        ServerBuilder {
            args: vec![app.to_owned()],
            env: Vec::new(),
            workers: 1,
            workers_flag: true,
            wait_ready: true,
            bind_fd: true,
            systemd: false,
            gunicorn: false,
            cgroups: Vec::new(),
            wrapper: Vec::new(),
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }
    /// Do not wait for "workers ready" (for start-up failure tests).
    /// The configuration file sets `workers = n`: no `-w`, wait for `n` workers.
    pub fn workers_from_config(mut self, n: u32) -> Self {
        self.workers = n;
        self.workers_flag = false;
        self
    }
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }
    /// The test passes its own -b.
    pub fn own_bind(mut self) -> Self {
        self.bind_fd = false;
        self
    }

    /// Hand the socket over as systemd socket activation does (LISTEN_FDS/LISTEN_PID)
    /// instead of `-b fd://3`.
    pub fn systemd_activation(mut self) -> Self {
        self.systemd = true;
        self
    }

    /// Start the venv's Gunicorn with the same arguments instead of rgun, to make the
    /// same observation of both (no control socket; ready once every worker booted).
    pub fn gunicorn(mut self) -> Self {
        self.gunicorn = true;
        self
    }

    /// Start rgun inside these cgroups (a shell writes its pid into each
    /// `cgroup.procs`, then execs rgun).
    pub fn in_cgroups(mut self, dirs: &[PathBuf]) -> Self {
        self.cgroups = dirs.to_vec();
        self
    }

    /// Run rgun under `command` (e.g. `unshare --pid --fork`), which execs it.
    pub fn wrapped_in(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn start(self) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("error.log");
        let access_path = dir.path().join("access.log");
        let ctl_path = dir.path().join("rgun.ctl");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
        let port = listener.local_addr().unwrap().port();
        let mut cmd = if self.gunicorn {
            Command::new(gunicorn_bin())
        } else if let Some((program, args)) = self.wrapper.split_first() {
            let mut c = Command::new(program);
            c.args(args).arg(rgun_bin());
            c
        } else if !self.cgroups.is_empty() {
            let mut c = Command::new("/bin/sh");
            let mut script = String::new();
            for dir in &self.cgroups {
                let procs = dir.join("cgroup.procs");
                script.push_str(&format!("echo $$ > '{}' || exit 97; ", procs.display()));
            }
            script.push_str("exec \"$0\" \"$@\"");
            c.arg("-c").arg(script).arg(rgun_bin());
            c
        } else if self.systemd {
            // LISTEN_PID must be rgun's own pid: a shell sets it and execs in place.
            let mut c = Command::new("/bin/sh");
            c.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""]);
            c.arg(rgun_bin());
            c
        } else {
            rgun()
        };
        cmd.args(&self.args);
        if self.workers_flag {
            cmd.arg("-w").arg(self.workers.to_string());
        }
        cmd.arg("--error-logfile")
            .arg(&log_path)
            .arg("--access-logfile")
            .arg(&access_path)
            .arg("--pythonpath")
            .arg(apps_dir());
        if self.gunicorn {
            cmd.arg("--no-control-socket");
        } else {
            cmd.arg("--control-socket").arg(&ctl_path);
        }
        cmd.current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // The installed rgun needs no activated venv: its interpreter is the venv's.
        cmd.env_remove("VIRTUAL_ENV");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if self.bind_fd {
            if !self.systemd {
                cmd.arg("-b").arg("fd://3");
            }
            pass_as_fd3(&mut cmd, &listener);
        }
        let child = cmd.spawn().expect("spawn rgun");
        drop(listener);
        let server = Server {
            child,
            port,
            dir,
            log_path,
            access_path,
            ctl_path,
        };
        if self.wait_ready && self.gunicorn {
            // Gunicorn logs no "ready": its workers have booted, and the listener
            // queues what they have not accepted yet.
            let booted = |log: &str| log.matches("Booting worker with pid").count();
            let n = self.workers as usize;
            if !wait_until(Duration::from_secs(30), || booted(&server.log()) >= n) {
                panic!("gunicorn did not boot {n} workers:\n{}", server.log());
            }
        } else if self.wait_ready {
            server.wait_for_log(
                &format!("All {} workers ready", self.workers),
                Duration::from_secs(30),
            );
        }
        server
    }
}

impl Server {
    pub fn start(app: &str) -> Server {
        ServerBuilder::new(app).start()
    }

    pub fn child_alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(self.pid(), 0) == 0 }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_path).unwrap_or_default()
    }

    /// Waits until the error log contains `needle`; panics with the log on time-out.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {needle:?}; log:\n{}", self.log());
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the master to exit; returns its status code (None: killed).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("rgun did not exit within {limit:?}; log:\n{}", self.log());
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    pub fn get(&self, path: &str) -> Response {
        self.request(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    }

    /// Sends raw bytes on a fresh connection and reads one response.
    /// Sends `raw` on a fresh connection and returns every byte the server sends back
    /// until it closes.
    pub fn exchange(&self, raw: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut s = self.connect();
        s.write_all(raw).expect("write request");
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read until close");
        out
    }

    pub fn request(&self, raw: &[u8]) -> Response {
        let mut s = self.connect();
        s.write_all(raw).expect("write request");
        let mut r = BufReader::new(s);
        read_response(&mut r, false).expect("a response")
    }

    /// The control socket's `status` answer (`Null` when it cannot be had).
    pub fn status(&self) -> serde_json::Value {
        let Ok(mut c) = std::os::unix::net::UnixStream::connect(&self.ctl_path) else {
            return serde_json::Value::Null;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        if c.write_all(b"{\"id\":0,\"cmd\":\"status\"}\n").is_err() {
            return serde_json::Value::Null;
        }
        let mut line = String::new();
        let _ = BufReader::new(c).read_line(&mut line);
        serde_json::from_str(&line).unwrap_or(serde_json::Value::Null)
    }

    /// A reload is answered once the new generation serves; the old workers, told then to
    /// stop, may still take a client that connects at once (a worker woken for it serves
    /// it before it goes). Waits (bounded) until only the serving generation is left.
    pub fn wait_for_the_old_workers_to_go(&self) {
        let mut last = serde_json::Value::Null;
        let only_new = wait_until(Duration::from_secs(30), || {
            last = self.status();
            let serving = &last["result"]["master"]["generation"];
            last["result"]["workers"]
                .as_array()
                .is_some_and(|ws| !ws.is_empty() && ws.iter().all(|w| &w["generation"] == serving))
        });
        assert!(only_new, "the old workers stayed: {last}\n{}", self.log());
    }

    /// Waits (bounded) until some worker is inside a request, as the control socket's
    /// `status` reports it: a request sent just before is then past the backlog.
    pub fn wait_for_request_in_flight(&self, limit: Duration) {
        let mut last = serde_json::Value::Null;
        let mut in_flight = || {
            last = self.status();
            last["result"]["workers"]
                .as_array()
                .is_some_and(|ws| ws.iter().any(|w| !w["current_request_s"].is_null()))
        };
        let ok = wait_until(limit, &mut in_flight);
        assert!(
            ok,
            "no request in flight after {limit:?}; last status: {last}\nlog:\n{}",
            self.log()
        );
    }

    /// Worker pids, from /proc (children of the master).
    pub fn worker_pids(&self) -> Vec<i32> {
        // Not the hook host, which is a child of the master too.
        children_of(self.pid())
            .into_iter()
            .filter(|p| {
                let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                !cmdline.starts_with(b"rgun: hooks")
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let workers = self.worker_pids();
            self.signal(libc::SIGQUIT);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in workers {
                // SAFETY: killing processes we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

pub fn children_of(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Reads one HTTP/1.1 response (Content-Length, chunked or close-delimited body).
/// `None` when the connection closed before a status line.
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> Option<Response> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 100 {
        return read_response(r, head_request);
    }
    if head_request || status == 204 || status == 304 {
        return Some(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end).ok()?;
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = resp.header("content-length") {
        let n: usize = len.parse().ok()?;
        let mut body = vec![0; n];
        r.read_exact(&mut body).ok()?;
        resp.body = body;
    } else {
        r.read_to_end(&mut resp.body).ok()?;
    }
    Some(resp)
}

/// Resident set size of a process in bytes, from /proc.
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// Polls `f` every 50 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Kills a process the test caused to exist but did not spawn itself (a new master
/// after USR2 or a `--preload` reload) and its children, even when the test fails.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let children = children_of(self.0);
        // SAFETY: signalling processes this test started (directly or through rgun).
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            for c in children {
                libc::kill(c, libc::SIGKILL);
            }
        }
    }
}

/// Makes `listener` the child's fd 3 (for `-b fd://3`).
pub fn pass_as_fd3(cmd: &mut Command, listener: &TcpListener) {
    let fd = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe. dup2 onto itself would keep
    // CLOEXEC, so it is cleared explicitly; the child then inherits the socket.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The ids on a `/proc/<pid>/status` line such as `Uid:` or `Gid:`.
pub fn proc_ids(pid: i32, field: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().skip(1).map(String::from).collect())
        .unwrap_or_default()
}

/// The `--print-config` line for `name` ends with `= value`.
pub fn has_setting(printed: &str, name: &str, value: &str) -> bool {
    printed
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name) && l.ends_with(&format!("= {value}")))
}

/// A stdout whose reader has already gone (`cmd | true`): every write fails with EPIPE.
pub fn closed_pipe() -> Stdio {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    Stdio::from(write)
}

/// Says that `test` skips the rest of its body because `reason`, where the test run's
/// output shows it (libtest hides what a passing test prints with `eprintln!`; this
/// writes to the real stderr). Under CI (`CI` or `RGUN_NO_SKIP` set, as `.ci/run`
/// does) a skip is a failure instead: CI runs as root with what the tests need
/// installed by `scripts/test`.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() || std::env::var_os("RGUN_NO_SKIP").is_some() {
        panic!("{test} must run in CI, but {reason}");
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
}

/// True when running as root; otherwise says `test` is skipped (see [`skip`]).
pub fn running_as_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip(test, "it needs root");
    }
    root
}

/// An h2c client that announces a zero stream window and never opens it, and the
/// response head it waited for; the stream stays open while this lives.
pub struct ZeroWindowClient {
    _held: (
        h2::client::SendRequest<bytes::Bytes>,
        http::Response<h2::RecvStream>,
    ),
    _runtime: tokio::runtime::Runtime,
}

/// Asks for `path` over h2c with a zero stream window, waits (10 s at most) for the
/// response head, which must be a 200, then for `hold` more.
pub fn zero_window_get(port: u16, path: &str, hold: Duration) -> ZeroWindowClient {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uri = format!("http://127.0.0.1{path}");
    let held = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.unwrap();
        let req = http::Request::get(uri).body(()).unwrap();
        let (response, _) = send.send_request(req, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("the head comes despite the zero window")
            .unwrap();
        assert_eq!(response.status(), 200);
        tokio::time::sleep(hold).await;
        (send, response)
    });
    ZeroWindowClient {
        _held: held,
        _runtime: runtime,
    }
}
