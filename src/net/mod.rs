//! Networking types that both the master and the worker use: a listening socket with
//! what it is known as, the two ends of a client connection, the `Transport` every
//! byte of a client connection goes through (in TLS: `tls`, configured by `tls_setup`),
//! and the `Outbox` of bytes waiting for it.
//!
//! The lowest layer of the tree: no HTTP, no Python, no process management.

pub mod outbox;
pub mod pipe;
mod sys;
pub mod tickets;
pub mod tls;
pub mod tls_setup;
pub mod transport;
mod x509;

use std::path::PathBuf;

use socket2::Socket;

/// A listening socket, opened once by the master and inherited by every worker.
pub struct Listener {
    pub socket: Socket,
    /// What SERVER_NAME/SERVER_PORT say when a request has no Host header.
    pub local: Local,
    /// Shown in logs: `http://127.0.0.1:8000`, `unix:/run/app.sock`.
    pub display: String,
    /// A Unix socket file we created and remove on exit.
    pub unix_path: Option<PathBuf>,
}

impl Listener {
    /// Drops this process's hold on the socket while keeping its descriptor number
    /// taken (it then refers to `/dev/null`, so nothing that still has the number can
    /// reach another file). The kernel closes a listening socket, resetting every
    /// client waiting in its backlog, only once no process holds it; a process that
    /// lets go early leaves that moment to those still serving it.
    pub fn let_go(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let null = std::fs::File::open("/dev/null")?;
        // SAFETY: both descriptors are open and ours; dup2 atomically makes the
        // listener's number refer to /dev/null, and `null`'s own copy closes on drop.
        if unsafe { libc::dup2(null.as_raw_fd(), self.socket.as_raw_fd()) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Who is on the other end of a connection, formatted once per connection.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// IP address text, or empty for a Unix-socket peer.
    pub addr: String,
    pub port: String,
    /// Trusted by `--forwarded-allow-ips` to set the URL scheme.
    pub trusted: bool,
}

/// Where the connection arrived, for SERVER_NAME/SERVER_PORT when there is no Host.
#[derive(Debug, Clone, Default)]
pub struct Local {
    pub name: String,
    pub port: String,
}

/// Writes what `outbuf` holds to the non-blocking `socket`, removing what went out.
/// False when the peer is gone (a write of nothing, or an error); true once all went
/// or the socket is full.
pub fn flush_nonblocking(mut socket: impl std::io::Write, outbuf: &mut Vec<u8>) -> bool {
    while !outbuf.is_empty() {
        match socket.write(outbuf) {
            Ok(0) => return false,
            Ok(n) => {
                outbuf.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
