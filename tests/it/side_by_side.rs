//! Gunicorn itself, for tests that make the same observation against rgun and against
//! Gunicorn 27 (pinned in tests/requirements.txt, installed into `./.venv` by
//! `scripts/venv`) and compare: run its command line, or start it as a server on a
//! port and talk to it over a real socket.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{apps_dir, read_response, repo_root, venv, wait_until, Response};

/// The venv's `gunicorn`; panics when it is missing (scripts/venv installs it).
pub fn gunicorn_bin() -> PathBuf {
    let bin = venv().join("bin").join("gunicorn");
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/venv (tests/requirements.txt pins gunicorn)",
        bin.display()
    );
    bin
}

/// A command that runs the venv's Gunicorn from the repository root, with the test
/// apps importable and without its control socket (several run at once).
pub fn gunicorn() -> Command {
    let mut cmd = Command::new(gunicorn_bin());
    cmd.arg("--no-control-socket")
        .arg("--pythonpath")
        .arg(apps_dir())
        .current_dir(repo_root())
        .env_remove("WEB_CONCURRENCY")
        .env_remove("PORT")
        .stdin(Stdio::null());
    cmd
}

/// A port nobody listens on right now (bound on all addresses, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").expect("bind an ephemeral port");
    l.local_addr().unwrap().port()
}

/// One `GET path` to 127.0.0.1:port; `None` when nothing answers.
pub fn get(port: u16, path: &str) -> Option<Response> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    read_response(&mut std::io::BufReader::new(s), false)
}

/// A Gunicorn server this test started; stopped (then killed) on drop.
pub struct Gunicorn {
    pub child: Child,
    pub log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Gunicorn {
    /// Starts `gunicorn ARGS` with `env`, its error log in a file of its own.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Gunicorn {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("gunicorn.log");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let mut cmd = gunicorn();
        cmd.arg("--error-logfile")
            .arg(&log_path)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Gunicorn {
            child: cmd.spawn().expect("spawn gunicorn"),
            log_path,
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// What it wrote to its stderr (errors before its log is set up).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Waits (bounded) until `GET path` on `port` is answered.
    pub fn wait_serving(&self, port: u16, path: &str) -> Response {
        let mut answer = None;
        let served = wait_until(Duration::from_secs(60), || {
            answer = get(port, path);
            answer.is_some()
        });
        assert!(
            served,
            "Gunicorn did not serve on {port}; log:\n{}",
            self.log()
        );
        answer.unwrap()
    }

    /// Waits for Gunicorn to exit by itself; its status code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut code = None;
        let exited = wait_until(limit, || match self.child.try_wait() {
            Ok(Some(status)) => {
                code = status.code();
                true
            }
            _ => false,
        });
        assert!(exited, "Gunicorn did not exit; log:\n{}", self.log());
        code
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling the process this test started.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
            if !wait_until(Duration::from_secs(10), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
