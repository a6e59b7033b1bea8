//! Running `rgunctl`: the command with a socket and arguments, bounded in time, and
//! what it said.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{rgunctl_bin, Server};

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
