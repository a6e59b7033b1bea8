//! Where a control socket is when nobody named one, for the daemon (which creates it)
//! and for `rgunctl` (which looks for it).
//!
//! Under systemd it is `$RUNTIME_DIRECTORY/rgun.ctl`: the unit's own directory, so each
//! service has its own and `ExecReload=rgunctl reload` finds it. Elsewhere each instance
//! has a socket named after its first listener (`127.0.0.1:8000.ctl`, which no other
//! instance can be listening on) in a directory private to the user:
//! `$XDG_RUNTIME_DIR/rgun/`, else `/tmp/rgun-UID/` — so several instances do not
//! collide, nothing is left in the project's directory, and `rgunctl` run from anywhere
//! finds the one instance running (or lists them when there are several).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The socket file's name inside systemd's `RUNTIME_DIRECTORY`.
pub const SYSTEMD_SOCKET_NAME: &str = "rgun.ctl";

/// The longest socket path Linux accepts (`sun_path` less its NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// `$RUNTIME_DIRECTORY/rgun.ctl` when systemd set `RuntimeDirectory=` (the first of
/// its directories).
pub fn systemd_socket_path() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY").filter(|v| !v.is_empty())?;
    let first = dirs.to_string_lossy().split(':').next()?.to_owned();
    Some(PathBuf::from(first).join(SYSTEMD_SOCKET_NAME))
}

/// The user's directory of control sockets: `$XDG_RUNTIME_DIR/rgun`, else
/// `/tmp/rgun-UID` (the daemon creates it with mode 0700).
pub fn default_socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("rgun"),
        // SAFETY: geteuid cannot fail and touches no memory.
        None => PathBuf::from(format!("/tmp/rgun-{}", unsafe { libc::geteuid() })),
    }
}

/// The default socket of an instance whose first listener is `listener` (a TCP
/// address such as `127.0.0.1:8000`, or a Unix socket's path): systemd's, else a file
/// named after the listener in [`default_socket_dir`].
pub fn instance_socket_path(listener: &str) -> PathBuf {
    if let Some(path) = systemd_socket_path() {
        return path;
    }
    let dir = default_socket_dir();
    let name: String = listener
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    let path = dir.join(format!("{}.ctl", name.trim_start_matches('_')));
    if path.as_os_str().len() <= MAX_SOCKET_PATH_BYTES {
        return path;
    }
    // Too long for a socket address (a deep Unix socket path): a digest instead.
    dir.join(format!("rgun-{:016x}.ctl", fnv1a(listener.as_bytes())))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where `rgunctl` connects when neither `-s` nor `RGUN_CONTROL_SOCKET` names a socket:
/// systemd's, else the one live socket in [`default_socket_dir`]. `Err` says where it
/// looked, what it found, and how to point elsewhere.
pub fn find_default_socket() -> Result<PathBuf, String> {
    if let Some(path) = systemd_socket_path() {
        return Ok(path);
    }
    let dir = default_socket_dir();
    let live = live_sockets(&dir);
    match live.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no running rgun has a control socket in {} (where rgun puts one when no \
             --control-socket is given; rgun logs its path at start-up: \"Control socket: PATH\"); \
             name the socket with -s PATH or RGUN_CONTROL_SOCKET",
            dir.display()
        )),
        several => Err(format!(
            "{} rgun instances have control sockets in {}: {}; choose one with -s PATH or \
             RGUN_CONTROL_SOCKET",
            several.len(),
            dir.display(),
            several
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Where Gunicorn puts its control socket when none is named, and where `gunicornc`
/// looks without `-s`: `$XDG_RUNTIME_DIR/gunicorn.ctl` when that directory exists, else
/// `~/.gunicorn/gunicorn.ctl`. rgun links its own socket there (when nothing else
/// answers there) so that `gunicornc` finds it too.
pub fn gunicorn_default_socket() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_dir() {
            return Some(dir.join("gunicorn.ctl"));
        }
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(home).join(".gunicorn").join("gunicorn.ctl"))
}

/// The `*.ctl` sockets in `dir` that a daemon answers on, sorted.
fn live_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut live: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ctl"))
        .filter(|p| UnixStream::connect(p).is_ok())
        .collect();
    live.sort();
    live
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn digest_is_stable() {
        // A name must not change between builds: a new master finds the old one's.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
