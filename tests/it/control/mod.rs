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
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    apps_dir, children_of, ctl, read_response, repo_root, rgunctl_cmd, run_bounded, wait_until,
    with_rgunctl_args, CtlRun, Server, ServerBuilder,
};

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// The native `rgunctl` binary (crate `ctl`, built by cargo beside this test binary),
/// for a client that runs as another uid: the console script's interpreter may live
/// where that uid cannot read it (pyenv under /root).
fn native_rgunctl() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "-q", "-p", "rgunctl", "--bin", "rgunctl"])
            .current_dir(repo_root());
        crate::support::succeeding(cargo, "cargo build -p rgunctl");
        // This test binary is target/<profile>/deps/it-*; rgunctl is in target/<profile>.
        let exe = std::env::current_exe().expect("the test binary's path");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .join("rgunctl");
        assert!(bin.exists(), "rgunctl not found at {}", bin.display());
        bin
    })
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
        let mut cmd = crate::support::rgun();
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
        crate::support::pass_as_fd3(&mut cmd, &listener);
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

mod bad_input;
mod commands;
mod default_socket;
mod gunicornc;
mod reload;
mod reload_config;
mod reload_probe;
mod socket_and_cli;
