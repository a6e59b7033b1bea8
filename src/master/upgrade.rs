//! Re-executing the master on the inherited listening sockets.
//!
//! - `USR2`: a new master (`sys.executable` and the same entry point, so an upgraded
//!   package is what runs) starts beside the old one; once its workers are ready it
//!   takes over the control socket and the pidfile, and the old master keeps serving
//!   until it is told to stop (`TERM`), as in Gunicorn. Under systemd the old master
//!   hands `MAINPID` over.
//! - (A reload with `--preload` re-executes the master in place instead: `reexec.rs`.)
//!
//! Old and new master talk over a socketpair: the new one writes `R` when its workers
//! are ready, or `E<text>` before it exits on a boot failure.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;

use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::unistd::Pid;

use super::Arbiter;

/// Listener descriptors a new master inherits: `fd=display;fd=display`.
pub const INHERIT_ENV: &str = "RGUN_INHERIT_FDS";
/// Set in the new master's environment: the old master's pid.
pub const UPGRADE_FROM_ENV: &str = "RGUN_UPGRADE_FROM";
/// The new master's end of the ready/error pipe.
pub const PIPE_ENV: &str = "RGUN_UPGRADE_PIPE";
/// The generation the new master starts at.
pub const GENERATION_ENV: &str = "RGUN_GENERATION";

pub const UPGRADE_TOKEN: Token = Token(usize::MAX - 3);

/// A new master we started and are waiting for.
pub struct UpgradeChild {
    pub pid: Pid,
    pipe: UnixStream,
    inbox: Vec<u8>,
}

/// In a new master: the pipe to the old one, taken from the environment.
pub fn pipe_to_old_master() -> Option<UnixStream> {
    let fd: i32 = std::env::var(PIPE_ENV).ok()?.parse().ok()?;
    std::env::remove_var(PIPE_ENV);
    // SAFETY: the old master passed this descriptor to us for exactly this purpose.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Some(stream)
}

/// In a new master: tell the old one we failed, with the reason.
pub fn report_failure(pipe: &mut Option<UnixStream>, text: &str) {
    if let Some(p) = pipe.as_mut() {
        let _ = p.write_all(format!("E{text}").as_bytes());
    }
}

impl Arbiter {
    /// Starts a new master (USR2).
    pub(super) fn upgrade(&mut self) -> Result<(), String> {
        if self.upgraded_to.is_some() || self.upgrade_child.is_some() {
            return Err("a new master is already running".into());
        }
        let start = crate::process::start_command();
        self.call_hook("pre_exec", serde_json::json!({}));
        let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
        ours.set_nonblocking(true).map_err(|e| e.to_string())?;
        let inherit: Vec<String> = self
            .listeners
            .iter()
            .map(|l| format!("{}={}", l.socket.as_raw_fd(), l.display.replace(';', ",")))
            .collect();
        let mut keep: Vec<i32> = self
            .listeners
            .iter()
            .map(|l| l.socket.as_raw_fd())
            .collect();
        keep.push(theirs.as_raw_fd());
        // The same interpreter and entry point as this master (`sys.executable` and
        // the console script), so an upgraded package is what starts.
        let mut cmd = start.command();
        cmd.env(INHERIT_ENV, inherit.join(";"))
            .env(UPGRADE_FROM_ENV, std::process::id().to_string())
            .env(PIPE_ENV, theirs.as_raw_fd().to_string())
            .env(GENERATION_ENV, (self.generation + 1).to_string());
        if let Some(path) = self.notifier.socket_path() {
            cmd.env("NOTIFY_SOCKET", path);
        }
        // SAFETY: between fork and exec the child only clears FD_CLOEXEC on the
        // descriptors it must keep (fcntl is async-signal-safe).
        unsafe {
            cmd.pre_exec(move || {
                for fd in &keep {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start a new master: {e}"))?;
        drop(theirs);
        let pid = Pid::from_raw(child.id() as i32);
        // The new master outlives the handle; it is reaped by `reap_workers`.
        std::mem::forget(child);
        let _ = self.poll.registry().register(
            &mut SourceFd(&ours.as_raw_fd()),
            UPGRADE_TOKEN,
            Interest::READABLE,
        );
        if let Some(p) = &mut self.pidfile {
            p.rename_to_oldbin();
        }
        tracing::info!(
            "Starting a new master {pid}: {}",
            std::iter::once(start.interpreter.as_os_str())
                .chain(start.entry.iter().map(|a| a.as_os_str()))
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.upgrade_child = Some(UpgradeChild {
            pid,
            pipe: ours,
            inbox: Vec::new(),
        });
        Ok(())
    }

    /// The new master wrote on the pipe.
    pub(super) fn read_upgrade_pipe(&mut self) {
        let Some(child) = self.upgrade_child.as_mut() else {
            return;
        };
        super::workers::drain(&child.pipe, &mut child.inbox);
        if child.inbox.first() == Some(&b'R') {
            self.on_new_master_ready();
        }
    }

    fn on_new_master_ready(&mut self) {
        let Some(child) = self.upgrade_child.take() else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&child.pipe.as_raw_fd()));
        self.upgraded_to = Some(child.pid.as_raw() as u32);
        // systemd (NotifyAccess=main) only listens to the main pid: hand it over and
        // confirm readiness in one message, as the new master's own READY may have
        // arrived while it was not main yet.
        self.notifier
            .send(&format!("MAINPID={}\nREADY=1", child.pid));
        tracing::info!("New master {} is ready", child.pid);
    }

    /// The new master exited; before it was ready, that is a failed upgrade.
    pub(super) fn on_new_master_exited(&mut self, code: Option<i32>) {
        let Some(mut child) = self.upgrade_child.take() else {
            return;
        };
        super::workers::drain(&child.pipe, &mut child.inbox);
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&child.pipe.as_raw_fd()));
        if let Some(p) = &mut self.pidfile {
            p.restore_from_oldbin();
        }
        let why = match child.inbox.first() {
            Some(b'E') => String::from_utf8_lossy(&child.inbox[1..]).into_owned(),
            _ => format!("the new master exited with {code:?} before it was ready"),
        };
        tracing::error!(
            "The new master {} failed; this master keeps serving: {why}",
            child.pid
        );
    }

    pub(super) fn is_upgrade_child(&self, pid: Pid) -> bool {
        self.upgrade_child.as_ref().is_some_and(|c| c.pid == pid)
    }
}
