//! statsd as Gunicorn sends it (`--statsd-host`): the same metric names and types
//! (`gunicorn.requests` and `gunicorn.request.status.<code>` counters,
//! `gunicorn.request.duration` timer in ms, `gunicorn.workers` gauge,
//! `gunicorn.log.<level>` counters, `gunicorn.backlog`), the prefix and dogstatsd tags.
//!
//! One sender per process (the master's, and each worker's own, opened after fork).
//! Lines are gathered into a datagram of at most `DATAGRAM_BYTES` (statsd servers split
//! a packet on newlines) and sent when it is full, or when the process's loop ends a
//! turn at least `FLUSH_INTERVAL` after the last send (`flush`). The response counters
//! (`gunicorn.requests`, `gunicorn.request.status.<code>`) are summed until then and
//! sent as one line each (`gunicorn.requests:37|c|@1.0`): a statsd server adds up a
//! counter's values over its interval, so the totals are Gunicorn's, in a fraction of
//! the bytes. Every response's timer sample is sent, as statsd's percentiles need them.
//! The socket is non-blocking and every error is ignored: a missing or slow statsd
//! server loses metrics, never time. Nothing here knows HTTP or Python.

use std::net::{ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::observability::{Observability, StatsdHost};

/// Largest datagram we send: fits an Ethernet frame with IPv6 and UDP headers.
const DATAGRAM_BYTES: usize = 1432;
/// Lines wait at most this long after the previous send (plus a loop's idle turn).
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

static ENABLED: AtomicBool = AtomicBool::new(false);
static SENDER: Mutex<Option<Sender>> = Mutex::new(None);

enum Socket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

struct Sender {
    socket: Socket,
    /// `PREFIX.` (or empty).
    prefix: String,
    /// `|#tags` (or empty).
    tags: String,
    /// Lines waiting for the next datagram, each ending in a newline.
    pending: String,
    last_send: Instant,
    /// The duration line around its value, made once.
    duration_head: String,
    duration_tail: String,
    /// Responses since the counters were last sent, in all and by status code
    /// (`status_counts[code - 100]`); codes outside 100..600 are counted as they come.
    requests: u64,
    status_counts: Vec<u64>,
}

/// Opens this process's sender when `--statsd-host` is set (and replaces one inherited
/// across fork). A sender that cannot be opened is a warning: statsd is best effort.
pub fn start(cfg: &Observability) {
    let sender = cfg.statsd_host.as_ref().and_then(|host| match open(host) {
        Ok(socket) => {
            let tags = if cfg.dogstatsd_tags.is_empty() {
                String::new()
            } else {
                format!("|#{}", cfg.dogstatsd_tags)
            };
            Some(Sender::new(
                socket,
                normalise_prefix(&cfg.statsd_prefix),
                tags,
            ))
        }
        Err(e) => {
            tracing::warn!("statsd: cannot send to {host}: {e}; no statsd metrics");
            None
        }
    });
    ENABLED.store(sender.is_some(), Ordering::Relaxed);
    *lock() = sender;
}

/// The sender's descriptor, for a forked worker to close.
pub fn fd() -> Option<RawFd> {
    lock().as_ref().map(|s| match &s.socket {
        Socket::Udp(u) => u.as_raw_fd(),
        Socket::Unix(u) => u.as_raw_fd(),
    })
}

/// One response, as Gunicorn's access hook counts it.
#[inline]
pub fn request(status: u16, elapsed: Duration) {
    if ENABLED.load(Ordering::Relaxed) {
        send_request(status, elapsed);
    }
}

#[inline(never)]
fn send_request(status: u16, elapsed: Duration) {
    // Formatted by hand from lines made once: this runs for every response, and
    // core::fmt's float formatting costs more than the rest of the line.
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let (mut whole, mut frac) = (itoa::Buffer::new(), itoa::Buffer::new());
    let whole = whole.format(us / 1000);
    let frac = &frac.format(1000 + us % 1000)[1..]; // three digits, zero-padded
    with_sender(|s| s.response(whole, frac, status));
}

/// Status codes counted between sends (100 to 599); any other is sent as it comes.
const STATUS_CODES: usize = 500;

/// A counter of one (`gunicorn.log.error`, ...).
pub fn increment(name: &str) {
    if ENABLED.load(Ordering::Relaxed) {
        with_sender(|s| s.line(&[name, ":1|c|@1.0"]));
    }
}

/// A counter of `n` (`gunicorn.dirty.calls`, sent as a sum since the last send).
pub fn count(name: &str, n: u64) {
    if ENABLED.load(Ordering::Relaxed) && n > 0 {
        let mut buf = itoa::Buffer::new();
        let n = buf.format(n);
        with_sender(|s| s.line(&[name, ":", n, "|c|@1.0"]));
    }
}

/// A timing in milliseconds, to the microsecond (`gunicorn.dirty.duration`).
pub fn timing(name: &str, us: u64) {
    if ENABLED.load(Ordering::Relaxed) {
        let (mut whole, mut frac) = (itoa::Buffer::new(), itoa::Buffer::new());
        let whole = whole.format(us / 1000);
        let frac = &frac.format(1000 + us % 1000)[1..]; // three digits, zero-padded
        with_sender(|s| s.line(&[name, ":", whole, ".", frac, "|ms"]));
    }
}

/// A gauge (`gunicorn.workers`).
pub fn gauge(name: &str, value: u64) {
    if ENABLED.load(Ordering::Relaxed) {
        let mut buf = itoa::Buffer::new();
        let value = buf.format(value);
        with_sender(|s| s.line(&[name, ":", value, "|g"]));
    }
}

/// A histogram sample (`gunicorn.backlog`, which Gunicorn sends as one).
pub fn histogram(name: &str, value: u64) {
    if ENABLED.load(Ordering::Relaxed) {
        let mut buf = itoa::Buffer::new();
        let value = buf.format(value);
        with_sender(|s| s.line(&[name, ":", value, "|h"]));
    }
}

/// Sends what is waiting if the last send is `FLUSH_INTERVAL` old at `now`; called
/// when a loop ends a turn, with the time it read anyway.
#[inline]
pub fn flush(now: Instant) {
    if ENABLED.load(Ordering::Relaxed) {
        flush_if_due(now);
    }
}

#[inline(never)]
fn flush_if_due(now: Instant) {
    with_sender(|s| {
        if (!s.pending.is_empty() || s.requests > 0)
            && now.saturating_duration_since(s.last_send) >= FLUSH_INTERVAL
        {
            s.flush();
        }
    });
}

/// A reload in the master: what is waiting goes to the old address, then the sender is
/// the one `cfg` says (`start`).
pub fn restart(cfg: &Observability) {
    flush_now();
    start(cfg);
}

/// Sends what is waiting now (a process about to exit).
pub fn flush_now() {
    if ENABLED.load(Ordering::Relaxed) {
        with_sender(Sender::flush);
    }
}

fn with_sender(f: impl FnOnce(&mut Sender)) {
    if let Some(s) = lock().as_mut() {
        f(s);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<Sender>> {
    SENDER.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sender {
    /// `prefix` is `PREFIX.` or empty, `tags` is `|#tags` or empty.
    fn new(socket: Socket, prefix: String, tags: String) -> Sender {
        Sender {
            socket,
            duration_head: format!("{prefix}gunicorn.request.duration:"),
            duration_tail: format!("|ms{tags}\n"),
            requests: 0,
            status_counts: vec![0; STATUS_CODES],
            prefix,
            tags,
            pending: String::with_capacity(DATAGRAM_BYTES),
            last_send: Instant::now(),
        }
    }

    /// A response: its duration (`ms`.`frac` milliseconds) as a line, one request and
    /// one of its status code in the counters.
    fn response(&mut self, ms: &str, frac: &str, status: u16) {
        let mark = self.pending.len();
        self.pending.push_str(&self.duration_head);
        self.pending.push_str(ms);
        self.pending.push('.');
        self.pending.push_str(frac);
        self.pending.push_str(&self.duration_tail);
        self.overflow(mark);
        self.requests += 1;
        match usize::from(status).checked_sub(100) {
            Some(i) if i < STATUS_CODES => self.status_counts[i] += 1,
            _ => self.counter_line(status, 1),
        }
    }

    /// The summed counters' lines, then everything waiting, sent.
    fn flush(&mut self) {
        if self.requests > 0 {
            let requests = std::mem::take(&mut self.requests);
            let mut n = itoa::Buffer::new();
            self.line(&["gunicorn.requests:", n.format(requests), "|c|@1.0"]);
            for i in 0..STATUS_CODES {
                let count = std::mem::take(&mut self.status_counts[i]);
                if count > 0 {
                    // `i` < 500: the code fits.
                    self.counter_line(100 + i as u16, count);
                }
            }
        }
        self.send();
    }

    /// `gunicorn.request.status.<status>:<count>|c|@1.0`.
    fn counter_line(&mut self, status: u16, count: u64) {
        let (mut code, mut n) = (itoa::Buffer::new(), itoa::Buffer::new());
        self.line(&[
            "gunicorn.request.status.",
            code.format(status),
            ":",
            n.format(count),
            "|c|@1.0",
        ]);
    }

    /// Appends `PREFIX` + `parts` + `TAGS` and a newline.
    fn line(&mut self, parts: &[&str]) {
        let mark = self.pending.len();
        self.pending.push_str(&self.prefix);
        for p in parts {
            self.pending.push_str(p);
        }
        self.pending.push_str(&self.tags);
        self.pending.push('\n');
        self.overflow(mark);
    }

    /// When the lines from `mark` on do not fit: sends what came before and keeps them
    /// for the next datagram (lines longer than a datagram go alone).
    fn overflow(&mut self, mark: usize) {
        if self.pending.len() > DATAGRAM_BYTES {
            let lines = self.pending.split_off(mark);
            self.send();
            self.pending = lines;
            if self.pending.len() > DATAGRAM_BYTES {
                self.send();
            }
        }
    }

    fn send(&mut self) {
        let packet = self.pending.trim_end_matches('\n').as_bytes();
        if !packet.is_empty() {
            // Best effort: a full socket buffer, an unreachable server, no listener on
            // the Unix path: the packet is lost.
            let _ = match &self.socket {
                Socket::Udp(u) => u.send(packet),
                Socket::Unix(u) => u.send(packet),
            };
        }
        self.pending.clear();
        self.last_send = Instant::now();
    }
}

fn open(host: &StatsdHost) -> std::io::Result<Socket> {
    match host {
        StatsdHost::Udp(addr) => {
            let target = addr
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
            let local: std::net::SocketAddr = if target.is_ipv6() {
                "[::]:0".parse().expect("literal")
            } else {
                "0.0.0.0:0".parse().expect("literal")
            };
            let socket = UdpSocket::bind(local)?;
            socket.connect(target)?;
            socket.set_nonblocking(true)?;
            Ok(Socket::Udp(socket))
        }
        StatsdHost::Unix(path) => {
            let socket = UnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            // Connected when the server is there; else each send is tried by path.
            if let Err(e) = socket.connect(path) {
                tracing::debug!("statsd: {} not there yet: {e}", path.display());
            }
            Ok(Socket::Unix(socket))
        }
    }
}

/// Gunicorn's rule: a non-empty prefix ends in exactly one `.`.
fn normalise_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('.');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_timer_lines_and_summed_counters() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut s = Sender::new(Socket::Unix(a), "p.".into(), "|#env:test".into());
        s.response("12", "007", 404);
        s.response("0", "250", 404);
        s.response("1", "000", 999);
        s.response("3", "100", 200);
        s.flush();
        let mut buf = [0u8; 4096];
        let n = b.recv(&mut buf).unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&buf[..n])
            .unwrap()
            .split('\n')
            .collect();
        assert_eq!(
            lines,
            [
                "p.gunicorn.request.duration:12.007|ms|#env:test",
                "p.gunicorn.request.duration:0.250|ms|#env:test",
                "p.gunicorn.request.duration:1.000|ms|#env:test",
                "p.gunicorn.request.status.999:1|c|@1.0|#env:test",
                "p.gunicorn.request.duration:3.100|ms|#env:test",
                "p.gunicorn.requests:4|c|@1.0|#env:test",
                "p.gunicorn.request.status.200:1|c|@1.0|#env:test",
                "p.gunicorn.request.status.404:2|c|@1.0|#env:test",
            ]
        );
        // Sent counters start again from nothing.
        s.flush();
        b.set_nonblocking(true).unwrap();
        assert!(b.recv(&mut buf).is_err(), "nothing more was sent");
    }

    #[test]
    fn a_prefix_gets_one_dot() {
        assert_eq!(normalise_prefix(""), "");
        assert_eq!(normalise_prefix("app"), "app.");
        assert_eq!(normalise_prefix("app..."), "app.");
    }

    #[test]
    fn lines_are_gathered_into_datagrams_that_fit() {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut s = Sender::new(Socket::Unix(a), "p.".into(), "|#env:test".into());
        for i in 0..100u64 {
            let mut buf = itoa::Buffer::new();
            s.line(&["gunicorn.request.status.", buf.format(i), ":1|c|@1.0"]);
        }
        s.send();
        let mut buf = [0u8; 65536];
        let mut lines = 0;
        while let Ok(n) = b.recv(&mut buf) {
            assert!(n <= DATAGRAM_BYTES, "{n}");
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            for line in text.split('\n') {
                assert!(line.starts_with("p.gunicorn.request.status."), "{line}");
                assert!(line.ends_with(":1|c|@1.0|#env:test"), "{line}");
                lines += 1;
            }
        }
        assert_eq!(lines, 100);
    }
}
