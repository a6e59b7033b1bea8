//! A real `rgun` (or the venv's Gunicorn) started for one test: its builder, what the
//! test asks of it (requests, log, status, workers), and stopping it on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    apps_dir, children_of, gunicorn_bin, read_response, repo_root, rgun, rgun_bin, wait_until,
    Response,
};

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
    /// The configuration file names the logs; the error log starts here.
    error_log_from_config: Option<PathBuf>,
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
            error_log_from_config: None,
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
    /// The configuration file sets `workers = n`: no `-w`, wait for `n` workers.
    pub fn workers_from_config(mut self, n: u32) -> Self {
        self.workers = n;
        self.workers_flag = false;
        self
    }
    /// Do not wait for "workers ready" (for start-up failure tests).
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

    /// No `--error-logfile`/`--access-logfile`: the configuration file names the logs,
    /// its error log at `path` (which `Server::log` reads).
    pub fn logs_from_config(mut self, path: &Path) -> Self {
        self.error_log_from_config = Some(path.to_owned());
        self
    }

    /// Run rgun under `command` (e.g. `unshare --pid --fork`), which execs it.
    pub fn wrapped_in(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn start(self) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path =
            (self.error_log_from_config.clone()).unwrap_or_else(|| dir.path().join("error.log"));
        let access_path = dir.path().join("access.log");
        let ctl_path = dir.path().join("rgun.ctl");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
        let port = listener.local_addr().unwrap().port();
        let mut cmd = self.program();
        cmd.args(&self.args);
        if self.workers_flag {
            cmd.arg("-w").arg(self.workers.to_string());
        }
        if self.error_log_from_config.is_none() {
            cmd.arg("--error-logfile")
                .arg(&log_path)
                .arg("--access-logfile")
                .arg(&access_path);
        }
        cmd.arg("--pythonpath").arg(apps_dir());
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
        if self.wait_ready {
            self.wait_until_ready(&server);
        }
        server
    }

    /// What runs: the venv's Gunicorn, rgun under a wrapper, a shell that puts itself
    /// in the cgroups or sets LISTEN_PID and execs rgun, or rgun itself.
    fn program(&self) -> Command {
        if self.gunicorn {
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
        }
    }

    /// Waits (30 s at most) until every worker of `server` is ready.
    fn wait_until_ready(&self, server: &Server) {
        if self.gunicorn {
            // Gunicorn logs no "ready": its workers have booted, and the listener
            // queues what they have not accepted yet.
            let booted = |log: &str| log.matches("Booting worker with pid").count();
            let n = self.workers as usize;
            if !wait_until(Duration::from_secs(30), || booted(&server.log()) >= n) {
                panic!("gunicorn did not boot {n} workers:\n{}", server.log());
            }
        } else {
            server.wait_for_log(
                &format!("All {} workers ready", self.workers),
                Duration::from_secs(30),
            );
        }
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

    /// Asserts that the error log contains `needle` (the log in the message otherwise).
    #[track_caller]
    pub fn assert_log_has(&self, needle: &str) {
        let log = self.log();
        assert!(log.contains(needle), "{log}");
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

    /// Sends raw bytes on a fresh connection and reads one response.
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
