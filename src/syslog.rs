//! Gunicorn's `--log-syslog`: the error log's lines (and, unless
//! `--disable-redirect-access-to-syslog`, the access log's) also go to syslog, framed
//! as Python's `SysLogHandler` frames them: `<PRI>gunicorn.PREFIX.error: [PID] message`
//! and a NUL, PRI being facility × 8 + severity, PREFIX `--log-syslog-prefix` or the
//! process name.
//!
//! A logging configuration's `SysLogHandler` (`config::logconfig`) sends instead the
//! records it routes there, formatted, as that handler does: `<PRI>record` and a NUL.
//!
//! One sender per process (the master's; each worker opens its own after fork). The
//! socket is non-blocking: a datagram the kernel will not take is lost, and a stream
//! (TCP, a Unix stream socket) keeps at most `MAX_PENDING_BYTES` unsent, dropping whole
//! messages beyond. Logging never waits for syslog.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tracing::Level;

use crate::config::observability::{facility_code, Observability, SyslogAddress};

/// Unsent bytes a stream socket may hold before messages are dropped.
const MAX_PENDING_BYTES: usize = 64 * 1024;
/// How long connecting a TCP syslog server may take at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

static ENABLED: AtomicBool = AtomicBool::new(false);
static SENDER: Mutex<Option<Sender>> = Mutex::new(None);

enum Socket {
    Udp(UdpSocket),
    UnixDgram(UnixDatagram),
    Tcp(TcpStream),
    UnixStream(UnixStream),
}

struct Sender {
    socket: Socket,
    facility: u8,
    /// `gunicorn.PREFIX.`
    tag: String,
    error: bool,
    access: bool,
    /// A `SysLogHandler`'s framing: the formatted record alone after `<PRI>`.
    records: bool,
    pending: Vec<u8>,
}

/// Opens this process's sender when `--log-syslog` is set (replacing one inherited
/// across fork). A sender that cannot be opened is one line on the error log.
pub fn start(cfg: &Observability, proc_name: &str) {
    let sender = cfg
        .log_syslog
        .then(|| open(&cfg.log_syslog_to))
        .and_then(|r| match r {
            Ok(socket) => Some(Sender {
                socket,
                facility: facility_code(&cfg.log_syslog_facility).unwrap_or(1),
                tag: format!(
                    "gunicorn.{}.",
                    cfg.log_syslog_prefix
                        .clone()
                        .unwrap_or_else(|| proc_name.replace(':', "."))
                ),
                error: cfg.error_to_syslog(),
                access: cfg.access_to_syslog(),
                records: cfg.syslog_records.is_some(),
                pending: Vec::new(),
            }),
            Err(e) => {
                tracing::warn!("syslog: cannot reach {}: {e}", cfg.log_syslog_to);
                None
            }
        });
    ENABLED.store(sender.is_some(), Ordering::Relaxed);
    *lock() = sender;
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An error-log record: its `message` (without the `[time] [pid] [LEVEL]` head), and
/// the whole line a logging configuration's format made of it, if it has one.
pub fn error_log(level: Level, message: &str, formatted: Option<&str>) {
    let severity = match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    };
    send("error", severity, message, formatted.unwrap_or(message));
}

/// An access-log line, unless access lines are kept out of syslog.
pub fn access_log(line: &str) {
    let line = line.trim_end_matches('\n');
    send("access", 6, line, line);
}

/// `message` with Gunicorn's framing, or `record` with a `SysLogHandler`'s.
fn send(logger: &str, severity: u8, message: &str, record: &str) {
    if !enabled() {
        return;
    }
    let mut guard = lock();
    let Some(s) = guard.as_mut() else { return };
    if !(if logger == "access" {
        s.access
    } else {
        s.error
    }) {
        return;
    }
    let pri = u32::from(s.facility) * 8 + u32::from(severity);
    let packet = if s.records {
        format!("<{pri}>{record}\0")
    } else {
        format!(
            "<{pri}>{}{logger}: [{}] {message}\0",
            s.tag,
            std::process::id()
        )
    };
    s.send(packet.as_bytes());
}

fn lock() -> std::sync::MutexGuard<'static, Option<Sender>> {
    SENDER.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sender {
    fn send(&mut self, packet: &[u8]) {
        // Best effort: errors lose this message, nothing else.
        match &mut self.socket {
            Socket::Udp(u) => drop(u.send(packet)),
            Socket::UnixDgram(u) => drop(u.send(packet)),
            Socket::Tcp(t) => write_stream(t, &mut self.pending, packet),
            Socket::UnixStream(u) => write_stream(u, &mut self.pending, packet),
        }
    }
}

/// Appends to what a stream has not taken yet (dropping the message when that is
/// full) and writes what the socket takes now.
fn write_stream(w: &mut impl Write, pending: &mut Vec<u8>, packet: &[u8]) {
    if pending.len() + packet.len() > MAX_PENDING_BYTES {
        return;
    }
    pending.extend_from_slice(packet);
    while !pending.is_empty() {
        match w.write(pending) {
            Ok(0) => break,
            Ok(n) => drop(pending.drain(..n)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

fn open(to: &SyslogAddress) -> std::io::Result<Socket> {
    match to {
        SyslogAddress::Udp(addr) => {
            let target = resolve(addr)?;
            let local = if target.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let socket = UdpSocket::bind(local)?;
            socket.connect(target)?;
            socket.set_nonblocking(true)?;
            Ok(Socket::Udp(socket))
        }
        SyslogAddress::Tcp(addr) => {
            let socket = TcpStream::connect_timeout(&resolve(addr)?, CONNECT_TIMEOUT)?;
            socket.set_nonblocking(true)?;
            Ok(Socket::Tcp(socket))
        }
        SyslogAddress::Unix { path, stream } => {
            if !stream {
                let socket = UnixDatagram::unbound()?;
                match socket.connect(path) {
                    Ok(()) => {
                        socket.set_nonblocking(true)?;
                        return Ok(Socket::UnixDgram(socket));
                    }
                    // A stream socket there, unless `#dgram` insisted.
                    Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {}
                    Err(e) => return Err(e),
                }
            }
            let socket = UnixStream::connect(path)?;
            socket.set_nonblocking(true)?;
            Ok(Socket::UnixStream(socket))
        }
    }
}

fn resolve(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilities_and_stream_backpressure() {
        assert_eq!(facility_code("LOCAL3"), Some(19));
        assert_eq!(facility_code("nope"), None);
        let mut pending = Vec::new();
        let mut full: &mut [u8] = &mut [];
        write_stream(&mut full, &mut pending, b"abc\0");
        assert_eq!(pending, b"abc\0");
        let big = vec![b'x'; MAX_PENDING_BYTES];
        write_stream(&mut full, &mut pending, &big);
        assert_eq!(
            pending.len(),
            4,
            "a message that does not fit is dropped whole"
        );
    }
}
