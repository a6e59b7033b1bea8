//! `--metrics-bind`, the operations listener: a tiny HTTP/1 server inside the master's
//! poll loop (no thread) that answers `GET /metrics` and the probes `/livez` and
//! `/readyz` (any HTTP/1.x form: HTTP/1.0 without `Host` as HAProxy's `httpchk` sends,
//! `HEAD`, the kubelet's HTTP/1.1), and closes. Each connection has bounded buffers (a
//! request head of at most `MAX_REQUEST_BYTES`, one answer) and `CONN_TIMEOUT` to
//! finish; at most `MAX_CONNECTIONS` at once, further ones are closed at accept. A
//! scraper that stalls or vanishes costs only its own connection.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::BindAddress;

/// Tokens at and above this (and below the control server's) are ours.
pub const TOKEN_BASE: usize = 1 << 39;
const LISTENER_TOKEN: Token = Token(TOKEN_BASE);
/// The longest request head we read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a connection may take to send its request and read the answer.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// After the answer is sent and our side shut: how long the client's leftover bytes
/// are read and discarded, so that closing does not reset the answer away.
const DRAIN: Duration = Duration::from_secs(1);
/// Most simultaneous scrape connections.
const MAX_CONNECTIONS: usize = 32;
/// The text exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a complete request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`, `/livez` or `/readyz` (`head`: HEAD, no body).
    Get {
        page: Page,
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// The pages the operations listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Metrics,
    /// Liveness: the master runs its loop.
    Livez,
    /// Readiness: a worker of the serving generation accepts and the server is not
    /// draining.
    Readyz,
}

/// An answer to a `Route::Get`, rendered by the arbiter.
pub struct Answer {
    /// `true`: 200, else 503 Service Unavailable.
    pub ok: bool,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    /// A probe's answer: one line of text.
    pub fn probe(ok: bool, line: String) -> Answer {
        Answer {
            ok,
            content_type: "text/plain; charset=utf-8",
            body: line + "\n",
        }
    }

    /// The metrics exposition.
    pub fn metrics(text: String) -> Answer {
        Answer {
            ok: true,
            content_type: CONTENT_TYPE,
            body: text,
        }
    }
}

struct Conn {
    socket: Socket,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// Set once the answer is queued: what is read afterwards is discarded.
    answered: bool,
    /// Set once the answer is all sent and our side shut down.
    draining_since: Option<Instant>,
    opened: Instant,
}

pub struct MetricsServer {
    listener: Socket,
    /// `http://127.0.0.1:9100/metrics`, for the log.
    pub display: String,
    unix_path: Option<PathBuf>,
    conns: BTreeMap<usize, Conn>,
    next: usize,
}

impl MetricsServer {
    /// Binds `addr`. TCP sockets get `SO_REUSEPORT` so that a new master (USR2, a
    /// `--preload` reload) can bind beside the old one while both run.
    pub fn bind(
        addr: &BindAddress,
        backlog: i32,
        registry: &Registry,
    ) -> anyhow::Result<MetricsServer> {
        let (listener, display, unix_path) = match addr {
            BindAddress::Tcp(a) => {
                let sa = a
                    .to_socket_addrs()
                    .with_context(|| format!("--metrics-bind: cannot resolve {a}"))?
                    .next()
                    .with_context(|| format!("--metrics-bind: {a} resolves to no address"))?;
                let socket = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.set_reuse_port(true)?;
                socket
                    .bind(&sa.into())
                    .with_context(|| format!("--metrics-bind: cannot bind to {sa}"))?;
                let local = socket.local_addr()?.as_socket().unwrap_or(sa);
                (socket, format!("http://{local}/metrics"), None)
            }
            BindAddress::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if !meta.file_type().is_socket() {
                        bail!(
                            "--metrics-bind: unix:{} exists and is not a socket",
                            path.display()
                        );
                    }
                    std::fs::remove_file(path).with_context(|| {
                        format!("cannot remove stale socket {}", path.display())
                    })?;
                }
                let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
                socket.bind(&SockAddr::unix(path)?).with_context(|| {
                    format!("--metrics-bind: cannot bind to unix:{}", path.display())
                })?;
                (
                    socket,
                    format!("unix:{}", path.display()),
                    Some(path.clone()),
                )
            }
            BindAddress::Fd(fd) => {
                let l = super::super::listeners::adopt_fd(*fd, backlog, format!("fd://{fd}"))?;
                (l.socket, format!("fd://{fd}"), None)
            }
        };
        listener.listen(backlog.min(128))?;
        listener.set_nonblocking(true)?;
        listener.set_cloexec(true)?;
        registry.register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER_TOKEN,
            Interest::READABLE,
        )?;
        Ok(MetricsServer {
            listener,
            display,
            unix_path,
            conns: BTreeMap::new(),
            next: TOKEN_BASE + 1,
        })
    }

    /// Descriptors a forked worker must close.
    pub fn fds(&self) -> Vec<RawFd> {
        std::iter::once(self.listener.as_raw_fd())
            .chain(self.conns.values().map(|c| c.socket.as_raw_fd()))
            .collect()
    }

    /// Handles a poll event for one of our tokens; returns the connections whose
    /// request is complete, with what they ask for (the caller renders and `answer`s).
    pub fn handle_event(&mut self, token: Token, registry: &Registry) -> Vec<(usize, Route)> {
        if token == LISTENER_TOKEN {
            self.accept(registry);
            return Vec::new();
        }
        let id = token.0;
        let Some(conn) = self.conns.get_mut(&id) else {
            return Vec::new();
        };
        let mut complete = Vec::new();
        let alive = if conn.answered {
            conn.flush() && conn.discard()
        } else {
            match conn.read_request() {
                Ok(Some(route)) => {
                    complete.push((id, route));
                    true
                }
                Ok(None) => true,
                Err(()) => false,
            }
        };
        if !alive {
            self.close(id, registry);
        }
        complete
    }

    /// Queues the answer to a complete request (`page`: the arbiter's answer for a
    /// `Route::Get`) and starts sending it; the connection closes once it is sent.
    pub fn answer(&mut self, id: usize, route: Route, page: Option<Answer>, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (status, content_type, body) = match (route, page) {
            (Route::Get { .. }, Some(a)) => {
                let status = if a.ok {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                (status, a.content_type, a.body)
            }
            (Route::MethodNotAllowed, _) => (
                "405 Method Not Allowed",
                "text/plain",
                "only GET and HEAD\n".into(),
            ),
            (Route::BadRequest, _) => ("400 Bad Request", "text/plain", "bad request\n".into()),
            _ => (
                "404 Not Found",
                "text/plain",
                "not found: try /metrics, /livez or /readyz\n".into(),
            ),
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            body.len()
        );
        if route == Route::MethodNotAllowed {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        conn.outbuf.extend_from_slice(head.as_bytes());
        if !matches!(route, Route::Get { head: true, .. }) {
            conn.outbuf.extend_from_slice(body.as_bytes());
        }
        conn.answered = true;
        if !(conn.flush() && conn.discard()) {
            self.close(id, registry);
        }
    }

    /// Closes connections past their time (called every loop turn) and those whose
    /// answer is all sent.
    pub fn sweep(&mut self, registry: &Registry) {
        let now = Instant::now();
        let done: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                now.duration_since(c.opened) > CONN_TIMEOUT
                    || c.draining_since
                        .is_some_and(|t| now.duration_since(t) > DRAIN)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.close(id, registry);
        }
    }

    pub fn remove_socket(&self) {
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let socket = match self.listener.accept() {
                Ok((socket, _)) => socket,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("metrics accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS || socket.set_nonblocking(true).is_err() {
                continue; // dropped: the scraper sees a closed connection
            }
            let id = self.next;
            self.next += 1;
            if registry
                .register(
                    &mut SourceFd(&socket.as_raw_fd()),
                    Token(id),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            self.conns.insert(
                id,
                Conn {
                    socket,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                    answered: false,
                    draining_since: None,
                    opened: Instant::now(),
                },
            );
        }
    }

    fn close(&mut self, id: usize, registry: &Registry) {
        if let Some(c) = self.conns.remove(&id) {
            let _ = registry.deregister(&mut SourceFd(&c.socket.as_raw_fd()));
        }
    }
}

impl Conn {
    /// Reads what arrived; `Some` once the head is complete, `Err` when the client is
    /// gone. A head over the limit is a bad request.
    fn read_request(&mut self) -> Result<Option<Route>, ()> {
        let mut buf = [0u8; 2048];
        loop {
            match (&self.socket).read(&mut buf) {
                Ok(0) => return Err(()),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
            if self.inbuf.len() > MAX_REQUEST_BYTES {
                return Ok(Some(Route::BadRequest));
            }
        }
        Ok(route(&self.inbuf))
    }

    /// Once the answer is sent: shut our side, then read and drop what the client
    /// still sends until it closes (false) or `DRAIN` passes (`sweep`).
    fn discard(&mut self) -> bool {
        if !self.outbuf.is_empty() {
            return true;
        }
        if self.draining_since.is_none() {
            let _ = self.socket.shutdown(std::net::Shutdown::Write);
            self.draining_since = Some(Instant::now());
        }
        let mut buf = [0u8; 2048];
        loop {
            match (&self.socket).read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Writes what is queued; false when the client is gone.
    fn flush(&mut self) -> bool {
        crate::net::flush_nonblocking(&self.socket, &mut self.outbuf)
    }
}

/// What a request head asks for; `None` while it is incomplete.
pub fn route(bytes: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Route::BadRequest),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            let page = match path {
                "/metrics" => Some(Page::Metrics),
                "/livez" => Some(Page::Livez),
                "/readyz" => Some(Page::Readyz),
                _ => None,
            };
            Some(match (req.method.unwrap_or(""), page) {
                ("GET", Some(page)) => Route::Get { page, head: false },
                ("HEAD", Some(page)) => Route::Get { page, head: true },
                ("GET" | "HEAD", None) => Route::NotFound,
                _ => Route::MethodNotAllowed,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Get {
                page: Page::Metrics,
                head: false
            })
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.0\r\n\r\n"),
            Some(Route::Get {
                page: Page::Metrics,
                head: true
            })
        );
        // HAProxy's `option httpchk` (HTTP/1.0, no Host) and the kubelet's probe.
        assert_eq!(
            route(b"OPTIONS / HTTP/1.0\r\n\r\n"),
            Some(Route::MethodNotAllowed)
        );
        assert_eq!(
            route(b"GET /readyz HTTP/1.0\r\n\r\n"),
            Some(Route::Get {
                page: Page::Readyz,
                head: false
            })
        );
        assert_eq!(
            route(
                b"GET /livez HTTP/1.1\r\nHost: 10.0.0.7:9100\r\nUser-Agent: kube-probe/1.30\r\n\
                  Accept: */*\r\nConnection: close\r\n\r\n"
            ),
            Some(Route::Get {
                page: Page::Livez,
                head: false
            })
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::MethodNotAllowed)
        );
        assert_eq!(route(b"\x00\x01 nonsense\r\n\r\n"), Some(Route::BadRequest));
    }
}
