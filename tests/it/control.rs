//! The control socket (protocol v1) and `rgunctl`, against a real daemon: every command
//! over the raw socket (several requests on one connection, ids echoed), scaling and
//! killing workers, rolling reloads under keep-alive load while the code changes, a
//! deploy that cannot be imported, SIGHUP, a matrix of bad input (invalid JSON, bad
//! arguments, over-long and half-written lines, idle, vanishing and hundreds of
//! clients), the socket file's mode, stale and live socket files, and the CLI's exit
//! codes and output.
//!
//! Nothing sleeps to wait for readiness: every wait is a bounded poll. `rgunctl` lives
//! in another package, so it is built once (`cargo build -p rgunctl`) next to `rgun`.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    apps_dir, children_of, read_response, repo_root, wait_until, Server, ServerBuilder,
};

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// The `rgunctl` binary, built once beside `rgun` (same target directory and profile).
fn rgunctl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "rgunctl", "--bin", "rgunctl"])
            .current_dir(repo_root())
            .output()
            .expect("run cargo build -p rgunctl");
        assert!(
            out.status.success(),
            "cargo build -p rgunctl failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = Path::new(env!("CARGO_BIN_EXE_rgun"))
            .parent()
            .expect("rgun's directory")
            .join("rgunctl");
        assert!(bin.exists(), "rgunctl not found at {}", bin.display());
        bin
    })
}

/// What a finished `rgunctl` run said.
struct CtlRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl CtlRun {
    fn from(out: Output) -> CtlRun {
        CtlRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    fn assert_ok(&self, what: &str) -> &CtlRun {
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
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs a prepared `rgunctl` command with a time limit (killing it by pid on overrun).
fn run_bounded(mut cmd: Command, limit: Duration) -> CtlRun {
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

fn rgunctl_cmd(socket: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new(rgunctl_bin());
    cmd.env_remove("RGUN_CONTROL_SOCKET");
    if let Some(s) = socket {
        cmd.arg("-s").arg(s);
    }
    cmd.args(args);
    cmd
}

/// `rgunctl -s <server's socket> ARGS`.
fn ctl(server: &Server, args: &[&str]) -> CtlRun {
    run_bounded(
        rgunctl_cmd(Some(&server.ctl_path), args),
        Duration::from_secs(90),
    )
}

/// A raw control connection: newline-delimited JSON.
struct Raw {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let s =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        Raw {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }
    fn send(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .expect("write to the control socket");
    }
    fn send_json(&mut self, v: &Value) {
        self.send(format!("{v}\n").as_bytes());
    }
    /// The next response line; panics on EOF.
    fn recv(&mut self) -> Value {
        self.try_recv()
            .expect("the daemon closed the control connection")
    }
    fn try_recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("response is not JSON ({e}): {line:?}")),
            ),
            Err(e) => panic!("reading a control response: {e}"),
        }
    }
    fn call(&mut self, v: Value) -> Value {
        self.send_json(&v);
        self.recv()
    }
}

/// The `result` of a successful response (checking the id).
fn ok(resp: &Value, id: &Value) -> Value {
    assert_eq!(&resp["id"], id, "id not echoed: {resp}");
    assert_eq!(resp["ok"], json!(true), "expected success: {resp}");
    resp["result"].clone()
}

/// The error code of a failed response (checking the id and that there is a message).
fn err_code(resp: &Value, id: &Value) -> String {
    assert_eq!(&resp["id"], id, "id not echoed: {resp}");
    assert_eq!(resp["ok"], json!(false), "expected an error: {resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without a message: {resp}"
    );
    resp["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a code: {resp}"))
        .to_owned()
}

fn status(path: &Path) -> Value {
    let mut c = Raw::connect(path);
    ok(&c.call(json!({"id": "st", "cmd": "status"})), &json!("st"))
}

fn ping_ok(path: &Path) -> bool {
    let Ok(s) = UnixStream::connect(path) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return false,
    };
    if w.write_all(b"{\"id\":0,\"cmd\":\"ping\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok()
        && serde_json::from_str::<Value>(&line).is_ok_and(|v| v["ok"] == json!(true))
}

/// The process state letter from /proc/PID/stat (None: gone).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn assert_no_zombie_children(server: &Server) {
    let ok = wait_until(Duration::from_secs(10), || {
        server
            .worker_pids()
            .iter()
            .all(|p| proc_state(*p).is_none_or(|s| s != 'Z'))
    });
    assert!(ok, "zombie workers remain; log:\n{}", server.log());
}

/// Writes `deployed.py` (from tests/apps/deploy_app.py) with `version` and optional
/// import-time code.
fn write_deploy(dir: &Path, version: &str, import_hook: &str) {
    let template =
        std::fs::read_to_string(apps_dir().join("deploy_app.py")).expect("read deploy_app.py");
    assert!(template.contains("VERSION = \"initial\"") && template.contains("# IMPORT-HOOK"));
    let text = template
        .replace("VERSION = \"initial\"", &format!("VERSION = {version:?}"))
        .replace("# IMPORT-HOOK", import_hook);
    // Write then rename, so a worker booting meanwhile never imports half a file.
    let tmp = dir.join("deployed.py.tmp");
    std::fs::write(&tmp, text).expect("write deployed.py");
    std::fs::rename(&tmp, dir.join("deployed.py")).expect("rename deployed.py");
}

/// A server running `deployed:application` from a fresh temp dir (`--chdir`).
fn deploy_server(workers: u32, version: &str) -> (tempfile::TempDir, Server) {
    let code = tempfile::tempdir().expect("tempdir");
    write_deploy(code.path(), version, "");
    let server = ServerBuilder::new("deployed:application")
        .workers(workers)
        .arg("--chdir")
        .arg(code.path().to_str().unwrap())
        // Every rewrite must be re-read: no stale bytecode if two rewrites share an mtime.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .start();
    (code, server)
}

/// The version a fresh connection gets.
fn version_of(server: &Server) -> String {
    let r = server.get("/");
    assert_eq!(r.status, 200, "GET / -> {} {}", r.status, r.text());
    r.text()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until `n` fresh requests in a row answer `version`.
fn wait_for_version(server: &Server, version: &str, limit: Duration) {
    let mut streak = 0;
    let ok = wait_until(limit, || {
        if version_of(server) == version {
            streak += 1;
        } else {
            streak = 0;
        }
        streak >= 10
    });
    assert!(
        ok,
        "responses did not switch to {version:?} within {limit:?}; log:\n{}",
        server.log()
    );
}

// ---------------------------------------------------------------------------------
// HTTP load that counts failures
// ---------------------------------------------------------------------------------

#[derive(Default, Debug)]
struct LoadStats {
    ok: u64,
    /// Requests that were sent and got no (or a non-200) response.
    failures: Vec<String>,
    /// Keep-alive connections the server closed between requests (seen before reuse).
    reconnects: u64,
}

struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadStats>>,
}

impl Load {
    /// Four clients: keep-alive and `Connection: close`, each fast and slow (`sleep`).
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let kinds = [
            (true, ""),
            (false, ""),
            (true, "sleep=0.05"),
            (false, "sleep=0.05"),
        ];
        let threads = kinds
            .into_iter()
            .map(|(keep_alive, query)| {
                let stop = stop.clone();
                std::thread::spawn(move || load_client(port, keep_alive, query, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadStats::default();
        for t in self.threads {
            let s = t.join().expect("load thread panicked");
            total.ok += s.ok;
            total.reconnects += s.reconnects;
            total.failures.extend(s.failures);
        }
        total
    }
}

/// True when the server has closed this idle connection (EOF or reset pending).
fn closed_by_peer(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let closed = match s.peek(&mut b) {
        Ok(_) => true, // EOF, or bytes nobody asked for: do not reuse
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    closed
}

fn load_client(port: u16, keep_alive: bool, query: &str, stop: &AtomicBool) -> LoadStats {
    let mut stats = LoadStats::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut reused;
    let target = if query.is_empty() {
        "/".to_owned()
    } else {
        format!("/?{query}")
    };
    while !stop.load(Ordering::SeqCst) {
        if let Some(c) = &conn {
            if closed_by_peer(c.get_ref()) {
                stats.reconnects += 1;
                conn = None;
            }
        }
        reused = conn.is_some();
        if conn.is_none() {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    conn = Some(BufReader::new(s));
                }
                Err(e) => {
                    stats.failures.push(format!("connect: {e}"));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let close = if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{close}\r\n");
        if let Err(e) = c.get_mut().write_all(req.as_bytes()) {
            stats
                .failures
                .push(format!("write (reused connection: {reused}): {e}"));
            conn = None;
            continue;
        }
        let first = match c.fill_buf() {
            Ok([]) => Err("EOF before any response byte".to_owned()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{e} before any response byte")),
        };
        if let Err(why) = first {
            stats.failures.push(format!(
                "no response to GET {target} (keep-alive {keep_alive}, reused connection: {reused}): {why}"
            ));
            conn = None;
            continue;
        }
        match read_response(c, false) {
            Some(r) if r.status == 200 => {
                stats.ok += 1;
                let server_closes = r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if !keep_alive || server_closes {
                    conn = None;
                }
            }
            Some(r) => {
                stats
                    .failures
                    .push(format!("status {} {}: {}", r.status, target, r.text()));
                conn = None;
            }
            None => {
                stats.failures.push(format!(
                    "truncated response to GET {target} (keep-alive {keep_alive}, reused connection: {reused})"
                ));
                conn = None;
            }
        }
    }
    stats
}

fn assert_no_failures(stats: &LoadStats, server: &Server) {
    assert!(stats.ok > 0, "the load sent nothing");
    assert!(
        stats.failures.is_empty(),
        "{} failed requests out of {} (first: {:?}); log:\n{}",
        stats.failures.len(),
        stats.ok + stats.failures.len() as u64,
        &stats.failures[..stats.failures.len().min(10)],
        server.log()
    );
}

// ---------------------------------------------------------------------------------
// A daemon started by hand (own control-socket path, captured stderr)
// ---------------------------------------------------------------------------------

/// An `rgun` started without `support`, to choose the control socket path. Killed by
/// pid (with its workers) on drop.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn spawn(ctl_path: &Path, extra: &[&str], log: Option<&Path>) -> Daemon {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rgun"));
        cmd.args([
            "echo:application",
            "-w",
            "1",
            "-b",
            "fd://3",
            "--pythonpath",
        ])
        .arg(apps_dir())
        .arg("--control-socket")
        .arg(ctl_path)
        .args(extra)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(l) = log {
            cmd.arg("--error-logfile").arg(l);
        }
        if let Some(v) = crate::support::venv() {
            cmd.env("VIRTUAL_ENV", v);
        } else {
            cmd.env_remove("VIRTUAL_ENV");
        }
        use std::os::fd::AsRawFd;
        let fd = listener.as_raw_fd();
        // SAFETY: dup2/fcntl are async-signal-safe; fd 3 becomes the inherited listener.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn rgun");
        Daemon { child }
    }

    /// Waits for exit; returns (code, stderr).
    fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, String) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (st.code(), err);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("rgun did not exit within {limit:?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id() as i32;
            let workers = children_of(pid);
            let _ = self.child.kill();
            let _ = self.child.wait();
            for w in workers {
                // SAFETY: killing the workers of the daemon this test started.
                unsafe { libc::kill(w, libc::SIGKILL) };
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// 1. Every command over the raw socket
// ---------------------------------------------------------------------------------

#[test]
fn every_command_over_one_raw_connection() {
    let mut server = ServerBuilder::new("echo:application").workers(2).start();
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut c = Raw::connect(&server.ctl_path);

    // Several requests in one write, answered in order, ids of any JSON type echoed.
    c.send(
        b"{\"id\":1,\"cmd\":\"ping\"}\n{\"id\":\"two\",\"cmd\":\"status\"}\n{\"id\":[3],\"cmd\":\"config\"}\n{\"cmd\":\"history\"}\n",
    );
    let ping = ok(&c.recv(), &json!(1));
    assert_eq!(ping["pid"], json!(server.pid()));
    assert!(
        ping["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{ping}"
    );

    let st = ok(&c.recv(), &json!("two"));
    let m = &st["master"];
    assert_eq!(m["pid"], json!(server.pid()), "{st}");
    assert_eq!(m["version"], ping["version"]);
    let started_at = m["started_at"].as_f64().expect("started_at");
    assert!(
        started_at <= t0 + 1.0 && started_at > t0 - 120.0,
        "started_at {started_at} vs now {t0}"
    );
    assert!(
        m["uptime_s"]
            .as_f64()
            .is_some_and(|u| (0.0..120.0).contains(&u)),
        "{m}"
    );
    assert_eq!(m["app"], json!("echo:application"));
    assert!(m["binds"].as_array().is_some_and(|b| b.len() == 1), "{m}");
    assert_eq!(m["generation"], json!(1));
    assert_eq!(m["workers_target"], json!(2));
    assert_eq!(m["state"], json!("running"));
    let workers = st["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{st}");
    let mut pids: Vec<i64> = Vec::new();
    for w in workers {
        pids.push(w["pid"].as_i64().expect("pid"));
        assert_eq!(w["generation"], json!(1), "{w}");
        assert_eq!(w["state"], json!("idle"), "{w}");
        assert!(w["age_s"].as_f64().is_some_and(|a| a >= 0.0), "{w}");
        assert!(w["requests"].as_u64().is_some(), "{w}");
        assert!(w["current_request_s"].is_null(), "idle worker: {w}");
        assert!(
            w["last_heartbeat_s"]
                .as_f64()
                .is_some_and(|h| (0.0..30.0).contains(&h)),
            "{w}"
        );
        assert!(w["rss_bytes"].as_u64().is_some_and(|r| r > 0), "{w}");
    }
    pids.sort();
    let mut real: Vec<i64> = server.worker_pids().into_iter().map(i64::from).collect();
    real.sort();
    assert_eq!(pids, real, "status workers vs the master's children");
    let totals = &st["totals"];
    for k in [
        "requests",
        "workers_spawned",
        "workers_exited",
        "timeouts",
        "reloads",
    ] {
        assert!(totals[k].as_u64().is_some(), "totals.{k}: {st}");
    }
    assert_eq!(totals["workers_spawned"], json!(2));
    assert_eq!(totals["reloads"], json!(0));

    let config = ok(&c.recv(), &json!([3]));
    assert_eq!(config["wsgi_app"], json!("echo:application"), "{config}");
    assert_eq!(config["workers"], json!(2), "{config}");
    assert_eq!(
        config["control_socket"],
        json!(server.ctl_path.to_str().unwrap())
    );
    assert_eq!(config["control_socket_mode"], json!("0600"));

    let history = ok(&c.recv(), &Value::Null);
    assert_eq!(history["entries"], json!([]), "{history}");

    // Requests are counted.
    for _ in 0..3 {
        assert_eq!(server.get("/x").status, 200);
    }
    let counted = wait_until(Duration::from_secs(5), || {
        let st = ok(&c.call(json!({"id": 4, "cmd": "status"})), &json!(4));
        st["totals"]["requests"].as_u64() == Some(3)
    });
    assert!(counted, "status totals.requests never reached 3");

    // reopen_logs: a rotated error log is recreated.
    let rotated = server.log_path.with_extension("log.1");
    std::fs::rename(&server.log_path, &rotated).unwrap();
    assert_eq!(
        ok(&c.call(json!({"id": 5, "cmd": "reopen_logs"})), &json!(5)),
        json!({})
    );
    assert!(
        server.log_path.exists(),
        "reopen_logs did not recreate the error log"
    );

    // kill: that worker is replaced by a new pid.
    let victim = pids[0];
    assert_eq!(
        ok(
            &c.call(json!({"id": 6, "cmd": "kill", "pid": victim})),
            &json!(6)
        ),
        json!({})
    );
    let replaced = wait_until(Duration::from_secs(20), || {
        let now = server.worker_pids();
        now.len() == 2 && !now.contains(&(victim as i32))
    });
    assert!(
        replaced,
        "worker {victim} not replaced; log:\n{}",
        server.log()
    );

    // scale: absolute with wait, then relative without.
    let r = ok(
        &c.call(json!({"id": 7, "cmd": "scale", "workers": 3, "wait": true})),
        &json!(7),
    );
    assert_eq!(r["target"], json!(3), "{r}");
    assert_eq!(server.worker_pids().len(), 3);
    let r = ok(
        &c.call(json!({"id": 8, "cmd": "scale", "delta": -2})),
        &json!(8),
    );
    assert_eq!(r, json!({"previous": 3, "target": 1}));
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 1),
        "scale to 1 did not converge"
    );

    // reload (waits by default).
    let r = ok(&c.call(json!({"id": 9, "cmd": "reload"})), &json!(9));
    assert_eq!(r["generation"], json!(2), "{r}");
    assert_eq!(r["previous_generation"], json!(1), "{r}");
    assert!(r["duration_ms"].as_u64().is_some(), "{r}");
    let st = ok(&c.call(json!({"id": 10, "cmd": "status"})), &json!(10));
    assert_eq!(st["master"]["generation"], json!(2));
    assert_eq!(
        st["master"]["workers_target"],
        json!(1),
        "target survives reload"
    );
    assert_eq!(st["totals"]["reloads"], json!(1));

    // history: the scale changes and the reload, with triggers and outcomes.
    let h = ok(&c.call(json!({"id": 11, "cmd": "history"})), &json!(11));
    let entries = h["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["scale", "scale", "reload"], "{h}");
    for e in entries {
        assert_eq!(e["trigger"], json!("ctl uid 0"), "{e}");
        assert_eq!(e["outcome"], json!("ok"), "{e}");
        assert!(e["started_at"].as_f64().is_some_and(|s| s > 0.0), "{e}");
    }
    assert!(entries[2]["duration_ms"].as_u64().is_some(), "{h}");
    assert_eq!(entries[0]["detail"], json!({"previous": 2, "target": 3}));

    // stop: answered, then the daemon exits 0 and removes its socket.
    assert_eq!(
        ok(&c.call(json!({"id": 12, "cmd": "stop"})), &json!(12)),
        json!({})
    );
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(c.try_recv().is_none(), "connection closed after stop");
    assert!(!server.ctl_path.exists(), "control socket left behind");
}

// ---------------------------------------------------------------------------------
// 2. rgunctl scale / kill
// ---------------------------------------------------------------------------------

#[test]
fn rgunctl_scale_wait_scale_down_and_kill() {
    let server = ServerBuilder::new("echo:application").workers(1).start();
    let run = ctl(&server, &["scale", "4", "--wait"]);
    run.assert_ok("scale 4 --wait");
    assert_eq!(server.worker_pids().len(), 4, "after scale 4 --wait");
    let st = status(&server.ctl_path);
    let idle = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == json!("idle"))
        .count();
    assert_eq!(idle, 4, "{st}");
    assert_eq!(st["master"]["workers_target"], json!(4));

    let before = server.worker_pids();
    let run = ctl(&server, &["scale", "1"]);
    run.assert_ok("scale 1");
    assert!(
        run.stdout.contains("4") && run.stdout.contains("1"),
        "{}",
        run.stdout
    );
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 1),
        "scale 1 did not converge: {:?}; log:\n{}",
        server.worker_pids(),
        server.log()
    );
    let gone: Vec<i32> = before
        .iter()
        .copied()
        .filter(|p| !server.worker_pids().contains(p))
        .collect();
    assert_eq!(gone.len(), 3);
    assert!(
        wait_until(Duration::from_secs(10), || gone
            .iter()
            .all(|p| proc_state(*p).is_none())),
        "retired workers not reaped: {:?}",
        gone.iter().map(|p| (p, proc_state(*p))).collect::<Vec<_>>()
    );
    assert_no_zombie_children(&server);
    assert_eq!(server.get("/").status, 200);

    let victim = server.worker_pids()[0];
    let run = ctl(&server, &["kill", &victim.to_string()]);
    run.assert_ok("kill");
    let replaced = wait_until(Duration::from_secs(20), || {
        let now = server.worker_pids();
        now.len() == 1 && now[0] != victim
    });
    assert!(
        replaced,
        "killed worker not replaced; log:\n{}",
        server.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || proc_state(victim).is_none()),
        "killed worker not reaped"
    );
    assert!(wait_until(Duration::from_secs(20), || status(
        &server.ctl_path
    )["workers"][0]["state"]
        == json!("idle")));
    assert_eq!(server.get("/").status, 200);
    assert_no_zombie_children(&server);
}

// ---------------------------------------------------------------------------------
// 3. Scaling under load
// ---------------------------------------------------------------------------------

#[test]
fn scaling_1_to_5_under_load_fails_no_request() {
    let (_code, server) = deploy_server(1, "v1");
    let load = Load::start(server.port);
    for round in 0..4 {
        ctl(&server, &["scale", "5", "--wait"]).assert_ok("scale 5 --wait");
        assert_eq!(server.worker_pids().len(), 5, "round {round}");
        ctl(&server, &["scale", "1", "--wait"]).assert_ok("scale 1 --wait");
        assert!(
            wait_until(Duration::from_secs(20), || server.worker_pids().len() == 1),
            "round {round}: scale 1 did not converge"
        );
    }
    let stats = load.finish();
    eprintln!(
        "scaling under load: {} ok, {} reconnects",
        stats.ok, stats.reconnects
    );
    assert_no_failures(&stats, &server);
    assert_no_zombie_children(&server);
}

/// Sockets a process holds open, from /proc.
fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The deterministic form of the failures the load tests above can hit: a worker told
/// to stop (scale down, reload, kill) keeps a connection it accepted but has not yet
/// read from; the request that then arrives must be answered, not dropped.
#[test]
fn a_connection_accepted_before_a_graceful_stop_is_still_served() {
    let (_code, server) = deploy_server(1, "v1");
    let worker = server.worker_pids()[0];
    let before = socket_fds(worker);
    let s = server.connect();
    assert!(
        wait_until(Duration::from_secs(5), || socket_fds(worker) > before),
        "the worker never accepted the connection"
    );
    ctl(&server, &["kill", &worker.to_string()]).assert_ok("kill");
    let stopping = wait_until(Duration::from_secs(10), || {
        status(&server.ctl_path)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["pid"] == json!(worker) && w["state"] == json!("stopping"))
    });
    assert!(stopping, "worker {worker} never reported stopping");
    assert_eq!(
        proc_state(worker).map(|c| c != 'Z'),
        Some(true),
        "worker gone too early"
    );
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send the request");
    let resp = read_response(&mut r, false);
    assert!(
        resp.as_ref().is_some_and(|r| r.status == 200),
        "a request on a connection the stopping worker {worker} had accepted got {:?}; log:\n{}",
        resp.map(|r| (r.status, r.text())),
        server.log()
    );
}

// ---------------------------------------------------------------------------------
// 4. Reloads under load while the code changes
// ---------------------------------------------------------------------------------

#[test]
fn five_reloads_under_load_switch_the_code_without_failures() {
    let (code, server) = deploy_server(2, "v0");
    assert_eq!(version_of(&server), "v0");
    let load = Load::start(server.port);
    for n in 1..=5 {
        let version = format!("v{n}");
        write_deploy(code.path(), &version, "");
        let run = ctl(&server, &["reload"]);
        run.assert_ok("reload");
        assert!(
            run.stdout
                .contains(&format!("generation {} -> {}", n, n + 1)),
            "{}",
            run.stdout
        );
        wait_for_version(&server, &version, Duration::from_secs(10));
        let st = status(&server.ctl_path);
        assert_eq!(st["master"]["generation"], json!(n + 1));
        assert_eq!(st["master"]["state"], json!("running"));
    }
    let stats = load.finish();
    eprintln!(
        "reloads under load: {} ok, {} reconnects",
        stats.ok, stats.reconnects
    );
    assert_no_failures(&stats, &server);
    // The old generations are all gone.
    assert!(
        wait_until(Duration::from_secs(30), || server.worker_pids().len() == 2),
        "old workers remain: {:?}",
        server.worker_pids()
    );
    let st = status(&server.ctl_path);
    assert!(
        st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["generation"] == json!(6)),
        "{st}"
    );
    assert_eq!(st["totals"]["reloads"], json!(5));
    assert_no_zombie_children(&server);
}

// ---------------------------------------------------------------------------------
// 5. A deploy that cannot be imported
// ---------------------------------------------------------------------------------

#[test]
fn failed_deploy_keeps_the_old_code_and_is_reported() {
    let (code, server) = deploy_server(2, "good-1");
    let old_pids = {
        let mut p = server.worker_pids();
        p.sort();
        p
    };
    write_deploy(
        code.path(),
        "bad",
        "raise RuntimeError(\"deploy exploded: marker-7731\")",
    );
    let run = ctl(&server, &["reload"]);
    assert_eq!(
        run.code,
        Some(1),
        "reload of a broken deploy: stdout {} stderr {}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("RuntimeError") && run.stderr.contains("deploy exploded: marker-7731"),
        "stderr lacks the Python error: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Traceback") || run.stderr.contains("deployed.py"),
        "stderr lacks the traceback: {}",
        run.stderr
    );
    // The old generation keeps serving, untouched.
    assert_eq!(version_of(&server), "good-1");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let mut p = server.worker_pids();
            p.sort();
            p == old_pids
        }),
        "the serving workers changed: {:?} -> {:?}",
        old_pids,
        server.worker_pids()
    );
    let st = status(&server.ctl_path);
    assert_eq!(st["master"]["generation"], json!(1), "{st}");
    assert_eq!(st["master"]["state"], json!("running"), "{st}");
    for _ in 0..10 {
        assert_eq!(version_of(&server), "good-1");
    }

    write_deploy(code.path(), "good-2", "");
    ctl(&server, &["reload"]).assert_ok("reload of the fixed deploy");
    wait_for_version(&server, "good-2", Duration::from_secs(10));

    let h = ctl(&server, &["--json", "history"]);
    h.assert_ok("history --json");
    let entries = h.json()["entries"].as_array().cloned().expect("entries");
    let reloads: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == json!("reload"))
        .collect();
    assert_eq!(reloads.len(), 2, "{entries:?}");
    assert_eq!(reloads[0]["outcome"], json!("failed"));
    assert!(
        reloads[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("marker-7731")),
        "{:?}",
        reloads[0]
    );
    assert!(reloads[0]["duration_ms"].as_u64().is_some());
    assert_eq!(reloads[1]["outcome"], json!("ok"));
    assert!(reloads[1]["error"].is_null());
    let human = ctl(&server, &["history"]);
    human.assert_ok("history");
    assert!(
        human.stdout.contains("failed") && human.stdout.contains("ok"),
        "{}",
        human.stdout
    );
    assert_no_zombie_children(&server);
}

#[test]
fn ping_and_status_answer_during_a_slow_reload_and_a_second_reload_is_busy() {
    let (code, server) = deploy_server(1, "slow-1");
    write_deploy(code.path(), "slow-2", "time.sleep(2)");
    let mut c = Raw::connect(&server.ctl_path);
    // Both in one write: the second arrives while the first is surely running.
    c.send(b"{\"id\":1,\"cmd\":\"reload\",\"wait\":false}\n{\"id\":2,\"cmd\":\"reload\"}\n");
    let r = ok(&c.recv(), &json!(1));
    assert_eq!(r["generation"], json!(2), "{r}");
    assert_eq!(err_code(&c.recv(), &json!(2)), "busy");
    let t = Instant::now();
    ok(&c.call(json!({"id": 3, "cmd": "ping"})), &json!(3));
    let st = ok(&c.call(json!({"id": 4, "cmd": "status"})), &json!(4));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "ping/status waited for the reload"
    );
    assert_eq!(st["master"]["state"], json!("reloading"), "{st}");
    assert!(
        st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["generation"] == json!(2) && w["state"] == json!("booting")),
        "{st}"
    );
    assert_eq!(version_of(&server), "slow-1");
    wait_for_version(&server, "slow-2", Duration::from_secs(30));
    let st = ok(&c.call(json!({"id": 5, "cmd": "status"})), &json!(5));
    assert_eq!(st["master"]["generation"], json!(2), "{st}");
    assert_eq!(st["master"]["state"], json!("running"), "{st}");
}

// ---------------------------------------------------------------------------------
// 6. SIGHUP
// ---------------------------------------------------------------------------------

#[test]
fn sighup_reloads_the_changed_code() {
    let (code, server) = deploy_server(2, "hup-1");
    assert_eq!(version_of(&server), "hup-1");
    write_deploy(code.path(), "hup-2", "");
    server.signal(libc::SIGHUP);
    wait_for_version(&server, "hup-2", Duration::from_secs(30));
    let h = ok(
        &Raw::connect(&server.ctl_path).call(json!({"id": 1, "cmd": "history"})),
        &json!(1),
    );
    let last = h["entries"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(last["action"], json!("reload"));
    assert_eq!(last["trigger"], json!("signal HUP"));
    assert!(
        wait_until(Duration::from_secs(10), || status(&server.ctl_path)
            ["master"]["state"]
            == json!("running")),
        "reload never finished"
    );
    assert_eq!(status(&server.ctl_path)["master"]["generation"], json!(2));
}

// ---------------------------------------------------------------------------------
// 7. Bad input
// ---------------------------------------------------------------------------------

#[test]
fn bad_input_gets_errors_and_the_connection_stays_usable() {
    let server = ServerBuilder::new("echo:application").workers(1).start();
    let path = server.ctl_path.clone();
    let mut c = Raw::connect(&path);
    let cases: &[(&[u8], Value, &str)] = &[
        (b"{nope\n", Value::Null, "bad_request"),
        (b"\xff\xfe\x00garbage\n", Value::Null, "bad_request"),
        (b"[1,2]\n", Value::Null, "bad_request"),
        (b"\"ping\"\n", Value::Null, "bad_request"),
        (b"{}\n", Value::Null, "bad_request"),
        (b"{\"id\":1,\"cmd\":5}\n", json!(1), "bad_request"),
        (
            b"{\"id\":2,\"cmd\":\"dance\"}\n",
            json!(2),
            "unknown_command",
        ),
        (
            b"{\"id\":3,\"cmd\":\"scale\",\"workers\":-5}\n",
            json!(3),
            "bad_request",
        ),
        (
            b"{\"id\":4,\"cmd\":\"scale\",\"workers\":\"many\"}\n",
            json!(4),
            "bad_request",
        ),
        (
            b"{\"id\":5,\"cmd\":\"scale\",\"workers\":0}\n",
            json!(5),
            "bad_request",
        ),
        (
            b"{\"id\":6,\"cmd\":\"scale\",\"workers\":100000}\n",
            json!(6),
            "bad_request",
        ),
        (
            b"{\"id\":7,\"cmd\":\"scale\",\"workers\":2.5}\n",
            json!(7),
            "bad_request",
        ),
        (b"{\"id\":8,\"cmd\":\"scale\"}\n", json!(8), "bad_request"),
        (
            b"{\"id\":9,\"cmd\":\"scale\",\"delta\":0}\n",
            json!(9),
            "bad_request",
        ),
        (
            b"{\"id\":10,\"cmd\":\"scale\",\"delta\":-5}\n",
            json!(10),
            "bad_request",
        ),
        (
            b"{\"id\":11,\"cmd\":\"scale\",\"workers\":2,\"delta\":1}\n",
            json!(11),
            "bad_request",
        ),
        (
            b"{\"id\":12,\"cmd\":\"scale\",\"workers\":2,\"wait\":\"yes\"}\n",
            json!(12),
            "bad_request",
        ),
        (
            b"{\"id\":13,\"cmd\":\"reload\",\"wait\":1}\n",
            json!(13),
            "bad_request",
        ),
        (
            b"{\"id\":14,\"cmd\":\"stop\",\"mode\":\"now\"}\n",
            json!(14),
            "bad_request",
        ),
        (b"{\"id\":15,\"cmd\":\"kill\"}\n", json!(15), "bad_request"),
        (
            b"{\"id\":16,\"cmd\":\"kill\",\"pid\":\"1\"}\n",
            json!(16),
            "bad_request",
        ),
        (
            b"{\"id\":17,\"cmd\":\"kill\",\"pid\":-1}\n",
            json!(17),
            "bad_request",
        ),
        (
            b"{\"id\":18,\"cmd\":\"kill\",\"pid\":1}\n",
            json!(18),
            "failed",
        ),
        (
            b"{\"id\":19,\"cmd\":\"ping\",\"extra\":true}\n",
            json!(19),
            "bad_request",
        ),
    ];
    for (line, id, code) in cases {
        c.send(line);
        let resp = c.recv();
        assert_eq!(
            err_code(&resp, id),
            *code,
            "{}: {resp}",
            String::from_utf8_lossy(line)
        );
    }
    // Blank lines are ignored and CRLF is accepted.
    c.send(b"\n  \r\n{\"id\":20,\"cmd\":\"ping\"}\r\n");
    ok(&c.recv(), &json!(20));
    // The daemon did nothing it was not asked to.
    let st = ok(&c.call(json!({"id": 21, "cmd": "status"})), &json!(21));
    assert_eq!(st["master"]["workers_target"], json!(1));
    assert_eq!(st["master"]["state"], json!("running"));

    // Over-long lines: one error each, then the connection works.
    let mut long = vec![b'a'; 100 * 1024];
    long.push(b'\n');
    c.send(&long);
    let resp = c.recv();
    assert_eq!(err_code(&resp, &Value::Null), "bad_request", "{resp}");
    ok(&c.call(json!({"id": 22, "cmd": "ping"})), &json!(22));
    // A valid-looking JSON request padded past 64 KiB.
    let padded = format!(
        "{{\"id\":23,\"cmd\":\"ping\",\"pad\":\"{}\"}}\n",
        "x".repeat(70 * 1024)
    );
    c.send(padded.as_bytes());
    assert_eq!(err_code(&c.recv(), &Value::Null), "bad_request");
    ok(&c.call(json!({"id": 24, "cmd": "ping"})), &json!(24));
    // A 2 MiB line in small pieces, then a request on the same write.
    let mut huge = vec![b'{'; 2 * 1024 * 1024];
    huge.extend_from_slice(b"\n{\"id\":25,\"cmd\":\"ping\"}\n");
    for chunk in huge.chunks(7000) {
        c.send(chunk);
    }
    assert_eq!(err_code(&c.recv(), &Value::Null), "bad_request");
    ok(&c.recv(), &json!(25));
    // Exactly 64 KiB is still allowed.
    let body = "{\"id\":26,\"cmd\":\"ping\",\"pad\":\"";
    let fill = 64 * 1024 - body.len() - 2;
    let exact = format!("{body}{}\"}}", "y".repeat(fill));
    assert_eq!(exact.len(), 64 * 1024);
    c.send(format!("{exact}\n").as_bytes());
    // (an unknown argument, but judged as a request, not as an over-long line)
    let resp = c.recv();
    assert_eq!(err_code(&resp, &json!(26)), "bad_request", "{resp}");

    // A half-written line, completed later; others are served meanwhile.
    c.send(b"{\"id\":\"half\",\"cmd\":");
    std::thread::sleep(Duration::from_millis(200)); // let the daemon see the partial line
    ok(
        &Raw::connect(&path).call(json!({"id": "other", "cmd": "ping"})),
        &json!("other"),
    );
    c.send(b"\"ping\"}\n");
    ok(&c.recv(), &json!("half"));

    // A client that connects and never writes does not block anyone.
    let _silent = UnixStream::connect(&path).unwrap();
    ok(
        &Raw::connect(&path).call(json!({"id": "after-silent", "cmd": "ping"})),
        &json!("after-silent"),
    );

    // Clients that vanish: before reading many answers, and before a deferred answer.
    {
        let mut v = Raw::connect(&path);
        let mut burst = Vec::new();
        for i in 0..2000 {
            burst.extend_from_slice(format!("{{\"id\":{i},\"cmd\":\"status\"}}\n").as_bytes());
        }
        v.send(&burst);
        // Read part of one answer, then go.
        let mut part = [0u8; 10];
        v.reader.read_exact(&mut part).unwrap();
    }
    {
        let mut v = Raw::connect(&path);
        v.send(b"{\"id\":1,\"cmd\":\"scale\",\"workers\":2,\"wait\":true}\n");
    }
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 2),
        "scale 2 (asked by a vanished client) did not happen"
    );
    {
        let mut v = Raw::connect(&path);
        v.send(b"{\"id\":1,\"cmd\":\"reload\"}\n");
    }
    assert!(
        wait_until(Duration::from_secs(30), || {
            let st = status(&path);
            st["master"]["generation"] == json!(2) && st["master"]["state"] == json!("running")
        }),
        "reload asked by a vanished client did not finish; log:\n{}",
        server.log()
    );
    ok(&c.call(json!({"id": 27, "cmd": "ping"})), &json!(27));

    // Hundreds of connections at once, all answered.
    let mut many: Vec<Raw> = (0..300).map(|_| Raw::connect(&path)).collect();
    for (i, m) in many.iter_mut().enumerate() {
        m.send_json(&json!({"id": i, "cmd": "ping"}));
    }
    for (i, m) in many.iter_mut().enumerate() {
        ok(&m.recv(), &json!(i));
    }
    drop(many);

    // Still serving, over the control socket and HTTP.
    assert!(server.child_alive());
    ok(&c.call(json!({"id": 28, "cmd": "status"})), &json!(28));
    assert_eq!(server.get("/").status, 200);
    assert!(!server.log().contains("panicked"), "log:\n{}", server.log());
}

// ---------------------------------------------------------------------------------
// 8. The socket file
// ---------------------------------------------------------------------------------

fn mode_of(path: &Path) -> u32 {
    let md = std::fs::metadata(path).expect("stat control socket");
    assert!(
        md.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
    md.permissions().mode() & 0o7777
}

#[test]
fn socket_mode_is_0600_by_default_and_configurable() {
    let server = ServerBuilder::new("echo:application").start();
    assert_eq!(mode_of(&server.ctl_path), 0o600);
    let server = ServerBuilder::new("echo:application")
        .args(["--control-socket-mode", "0640"])
        .start();
    assert_eq!(mode_of(&server.ctl_path), 0o640);
    let c = ctl(&server, &["--json", "config"]);
    c.assert_ok("config");
    assert_eq!(c.json()["control_socket_mode"], json!("0640"));
}

#[test]
fn a_stale_socket_is_replaced_and_stop_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.ctl");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(UnixStream::connect(&path).is_err(), "nobody listens on it");

    // rgunctl on a stale socket cannot connect: exit 3, naming the path and the error.
    let run = run_bounded(rgunctl_cmd(Some(&path), &["ping"]), Duration::from_secs(30));
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains(path.to_str().unwrap()) && run.stderr.contains("refused"),
        "{}",
        run.stderr
    );

    let log = dir.path().join("error.log");
    let mut d = Daemon::spawn(&path, &[], Some(&log));
    assert!(
        wait_until(Duration::from_secs(30), || ping_ok(&path)),
        "the daemon never answered on the replaced socket; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(mode_of(&path), 0o600);
    let run = run_bounded(rgunctl_cmd(Some(&path), &["stop"]), Duration::from_secs(30));
    run.assert_ok("stop");
    let (code, _) = d.wait_exit(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!path.exists(), "stop left the socket behind");
}

#[test]
fn a_second_daemon_on_a_live_socket_fails_clearly() {
    let server = ServerBuilder::new("echo:application").start();
    let mut second = Daemon::spawn(&server.ctl_path, &[], None);
    let (code, stderr) = second.wait_exit(Duration::from_secs(30));
    assert!(
        code.is_some_and(|c| c != 0),
        "second daemon exit {code:?}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(server.ctl_path.to_str().unwrap()),
        "the message does not name the path:\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("another daemon"),
        "unclear message:\n{stderr}"
    );
    // The first one is unharmed, socket and all.
    assert_eq!(mode_of(&server.ctl_path), 0o600);
    assert!(ping_ok(&server.ctl_path));
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn rgunctl_stop_exits_0_and_removes_the_socket() {
    let mut server = ServerBuilder::new("echo:application").workers(2).start();
    let workers = server.worker_pids();
    let run = ctl(&server, &["stop"]);
    run.assert_ok("stop");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!server.ctl_path.exists(), "socket left behind");
    for w in workers {
        assert!(proc_state(w).is_none(), "worker {w} outlived the master");
    }
}

// ---------------------------------------------------------------------------------
// 9. The CLI
// ---------------------------------------------------------------------------------

#[test]
fn rgunctl_exit_codes_output_and_socket_selection() {
    let server = ServerBuilder::new("echo:application").workers(2).start();

    // 0: ok, human output.
    let run = ctl(&server, &["ping"]);
    run.assert_ok("ping");
    assert!(
        run.stdout.contains("pong") && run.stdout.contains(&server.pid().to_string()),
        "{}",
        run.stdout
    );

    // --json prints the raw result.
    let run = ctl(&server, &["--json", "ping"]);
    run.assert_ok("--json ping");
    assert_eq!(run.json()["pid"], json!(server.pid()));
    let run = ctl(&server, &["--json", "status"]);
    run.assert_ok("--json status");
    let st = run.json();
    assert_eq!(st["master"]["pid"], json!(server.pid()));
    assert_eq!(st["workers"].as_array().map(Vec::len), Some(2));

    // status: a master line and one row per worker.
    let run = ctl(&server, &["status"]);
    run.assert_ok("status");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("master {}", server.pid()))),
        "no master line:\n{}",
        run.stdout
    );
    for pid in server.worker_pids() {
        let rows = lines
            .iter()
            .filter(|l| l.split_whitespace().next() == Some(&pid.to_string()))
            .count();
        assert_eq!(rows, 1, "worker {pid} row:\n{}", run.stdout);
    }

    // The other commands, human output.
    let run = ctl(&server, &["config"]);
    run.assert_ok("config");
    assert!(run.stdout.contains("echo:application"), "{}", run.stdout);
    ctl(&server, &["history"]).assert_ok("history");
    let run = ctl(&server, &["reopen-logs"]);
    run.assert_ok("reopen-logs");
    assert!(run.stdout.contains("reopened"), "{}", run.stdout);
    let run = ctl(&server, &["scale", "+1"]);
    run.assert_ok("scale +1");
    assert!(run.stdout.contains("2 -> 3"), "{}", run.stdout);
    let run = ctl(&server, &["scale", "-1", "--wait"]);
    run.assert_ok("scale -1 --wait");
    assert_eq!(server.worker_pids().len(), 2);

    // 1: the daemon answered with an error; the message is on stderr.
    let run = ctl(&server, &["kill", "1"]);
    assert_eq!(run.code, Some(1), "{} {}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("no worker with pid 1"),
        "{}",
        run.stderr
    );
    let run = ctl(&server, &["scale", "-5"]);
    assert_eq!(run.code, Some(1), "{} {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("out of range"), "{}", run.stderr);

    // 2: usage.
    for args in [
        &["scale", "abc"][..],
        &["scale", "0"],
        &["scale", "+0"],
        &["scale"],
        &["kill", "x"],
        &["dance"],
        &[],
        &["--bogus", "ping"],
    ] {
        let run = ctl(&server, args);
        assert_eq!(
            run.code,
            Some(2),
            "rgunctl {args:?}: {} {}",
            run.stdout,
            run.stderr
        );
        assert!(!run.stderr.is_empty(), "rgunctl {args:?}: no usage message");
    }

    // 3: cannot connect; the message names the path and the OS error.
    let missing = server.dir.path().join("nope").join("x.ctl");
    let run = run_bounded(
        rgunctl_cmd(Some(&missing), &["ping"]),
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains(missing.to_str().unwrap())
            && run.stderr.contains("No such file or directory"),
        "{}",
        run.stderr
    );

    // Socket selection: RGUN_CONTROL_SOCKET, and -s over it.
    let mut cmd = rgunctl_cmd(None, &["--json", "ping"]);
    cmd.env("RGUN_CONTROL_SOCKET", &server.ctl_path);
    let run = run_bounded(cmd, Duration::from_secs(30));
    run.assert_ok("ping via RGUN_CONTROL_SOCKET");
    assert_eq!(run.json()["pid"], json!(server.pid()));
    let mut cmd = rgunctl_cmd(Some(&server.ctl_path), &["ping"]);
    cmd.env("RGUN_CONTROL_SOCKET", &missing);
    run_bounded(cmd, Duration::from_secs(30)).assert_ok("-s wins over the environment");
    let mut cmd = rgunctl_cmd(Some(&missing), &["ping"]);
    cmd.env("RGUN_CONTROL_SOCKET", &server.ctl_path);
    assert_eq!(run_bounded(cmd, Duration::from_secs(30)).code, Some(3));
    let mut cmd = rgunctl_cmd(
        None,
        &["--socket", server.ctl_path.to_str().unwrap(), "ping"],
    );
    cmd.env("RGUN_CONTROL_SOCKET", &missing);
    run_bounded(cmd, Duration::from_secs(30)).assert_ok("--socket");
}

// ---------------------------------------------------------------------------------
// forbidden: a peer that is neither the daemon's uid nor root
// ---------------------------------------------------------------------------------

#[test]
fn another_uid_is_forbidden() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    const NOBODY: u32 = 65534;
    let as_nobody = |path: &Path, args: &[&str]| {
        let mut cmd = rgunctl_cmd(Some(path), args);
        cmd.uid(NOBODY).gid(NOBODY);
        run_bounded(cmd, Duration::from_secs(30))
    };
    // With the default mode, the socket file itself keeps others out.
    let server = ServerBuilder::new("echo:application").start();
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = as_nobody(&server.ctl_path, &["ping"]);
    assert_eq!(run.code, Some(3), "{} {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);

    // Opened to everyone, the daemon still refuses the uid.
    let server = ServerBuilder::new("echo:application")
        .args(["--control-socket-mode", "0666"])
        .start();
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [&["ping"][..], &["stop"], &["scale", "3"]] {
        let run = as_nobody(&server.ctl_path, args);
        assert_eq!(run.code, Some(1), "{args:?}: {} {}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("forbidden") && run.stderr.contains("65534"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // Nothing happened, and root is still served.
    let st = status(&server.ctl_path);
    assert_eq!(st["master"]["workers_target"], json!(1));
    assert_eq!(st["master"]["state"], json!("running"));
    assert!(server.child_alive());
}

// ---------------------------------------------------------------------------------
// --preload: the app lives in the master, so a reload re-executes the master
// ---------------------------------------------------------------------------------

#[test]
fn preload_reload_brings_new_code_without_failures() {
    let code = tempfile::tempdir().expect("tempdir");
    let imports = code.path().join("imports.log");
    let hook = format!(
        "open({:?}, 'a').write('%d\\n' % os.getpid())",
        imports.to_str().unwrap()
    );
    write_deploy(code.path(), "p0", &hook);
    let server = ServerBuilder::new("deployed:application")
        .workers(2)
        .args(["--preload", "--chdir", code.path().to_str().unwrap()])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .start();
    assert_eq!(version_of(&server), "p0");
    // Imported once, in the master, not in each worker.
    let imported = std::fs::read_to_string(&imports).unwrap();
    assert_eq!(
        imported.lines().collect::<Vec<_>>(),
        vec![server.pid().to_string()],
        "{imported}"
    );
    let load = Load::start(server.port);
    let mut master = server.pid();
    for n in 1..=2 {
        let version = format!("p{n}");
        write_deploy(code.path(), &version, &hook);
        ctl(&server, &["reload"]).assert_ok("reload");
        wait_for_version(&server, &version, Duration::from_secs(20));
        let st = status(&server.ctl_path);
        let new_master = st["master"]["pid"].as_i64().unwrap() as i32;
        assert_ne!(new_master, master, "a new master serves the new code");
        assert_eq!(st["master"]["generation"], json!(n + 1));
        master = new_master;
    }
    // A broken deploy: the reload fails with the traceback and the current master stays.
    write_deploy(
        code.path(),
        "broken",
        "raise RuntimeError('preload exploded: marker-5150')",
    );
    let run = ctl(&server, &["reload"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("marker-5150"), "{}", run.stderr);
    assert_eq!(version_of(&server), "p2");
    assert_eq!(
        status(&server.ctl_path)["master"]["pid"].as_i64().unwrap() as i32,
        master
    );
    let stats = load.finish();
    assert_no_failures(&stats, &server);
    // Stop the master this test caused to exist (the first one already left).
    ctl(&server, &["stop"]).assert_ok("stop");
    assert!(
        wait_until(Duration::from_secs(15), || unsafe { libc::kill(master, 0) }
            != 0),
        "the last master did not stop"
    );
}

#[test]
fn the_scale_target_survives_a_reload() {
    let (code, server) = deploy_server(1, "t0");
    ctl(&server, &["scale", "3", "--wait"]).assert_ok("scale");
    write_deploy(code.path(), "t1", "");
    ctl(&server, &["reload"]).assert_ok("reload");
    wait_for_version(&server, "t1", Duration::from_secs(20));
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 3),
        "{:?}",
        server.worker_pids()
    );
    let st = status(&server.ctl_path);
    assert_eq!(st["master"]["workers_target"], json!(3));
    assert!(
        st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["generation"] == json!(2)),
        "{st}"
    );
}

#[test]
fn rgunctl_generates_a_man_page_and_completions() {
    let man = run_bounded(
        rgunctl_cmd(None, &["generate", "man"]),
        Duration::from_secs(30),
    );
    assert_eq!(man.code, Some(0));
    assert!(
        man.stdout.contains(".TH rgunctl") && man.stdout.contains("reload"),
        "{}",
        man.stdout
    );
    for shell in ["bash", "zsh", "fish"] {
        let run = run_bounded(
            rgunctl_cmd(None, &["generate", shell]),
            Duration::from_secs(30),
        );
        assert_eq!(run.code, Some(0), "{shell}");
        assert!(
            run.stdout.contains("rgunctl") && run.stdout.contains("scale"),
            "{shell}: {}",
            run.stdout
        );
    }
}
