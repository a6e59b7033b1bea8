//! `USR2`: re-execute the rgun binary in a new master that inherits the listening
//! sockets, so a new binary (or new code with `--preload`) starts serving without a
//! refused connection. The old master keeps serving until it is told to stop (`TERM`),
//! as in Gunicorn; under systemd it hands `MAINPID` to the new master.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

use super::Arbiter;

/// Listener descriptors a new master inherits: `fd=display;fd=display`.
pub const INHERIT_ENV: &str = "RGUN_INHERIT_FDS";
/// Set in the new master's environment: the old master's pid.
pub const UPGRADE_FROM_ENV: &str = "RGUN_UPGRADE_FROM";

impl Arbiter {
    pub(super) fn upgrade(&mut self) {
        if self.upgraded_to.is_some() {
            tracing::warn!("USR2 ignored: already upgraded to a new master");
            return;
        }
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot upgrade: cannot find the rgun binary: {e}");
                return;
            }
        };
        let inherit: Vec<String> = self
            .listeners
            .iter()
            .map(|l| format!("{}={}", l.socket.as_raw_fd(), l.display.replace(';', ",")))
            .collect();
        let fds: Vec<i32> = self
            .listeners
            .iter()
            .map(|l| l.socket.as_raw_fd())
            .collect();
        if let Some(p) = &mut self.pidfile {
            p.rename_to_oldbin();
        }
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .env(INHERIT_ENV, inherit.join(";"))
            .env(UPGRADE_FROM_ENV, std::process::id().to_string());
        if let Some(path) = self.notifier.socket_path() {
            cmd.env("NOTIFY_SOCKET", path);
        }
        // SAFETY: between fork and exec the child only clears FD_CLOEXEC on the
        // listeners (fcntl is async-signal-safe) so that exec keeps them open.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id();
                tracing::info!("Upgrading: new master {pid} started from {}", exe.display());
                self.notifier.send(&format!("MAINPID={pid}"));
                self.upgraded_to = Some(pid);
                // The new master outlives us; do not wait on it here.
                std::mem::forget(child);
            }
            Err(e) => tracing::error!("cannot upgrade: {e}"),
        }
    }
}
