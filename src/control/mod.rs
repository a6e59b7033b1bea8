//! The control socket server, inside the master's poll loop (no threads): accepts
//! local clients, checks their uid, splits newline-delimited JSON into requests for the
//! arbiter, and writes the answers back, possibly much later (a `reload` with `wait`).
//!
//! Framing and validation are `rgunctl::protocol`'s; what each command does is the
//! arbiter's (`master::control`). A bad line gets an error and the connection stays
//! usable; a client that vanishes costs nothing. A client whose first byte is zero
//! speaks Gunicorn's length-prefixed protocol instead (`gunicornc`, see `gunicorn.rs`).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use rgunctl::protocol::{error_line, parse_request, Command, ErrorBody, ErrorCode, MAX_LINE_BYTES};
use serde_json::Value;

mod gunicorn;

/// Tokens at and above this belong to the control server.
pub const TOKEN_BASE: usize = 1 << 40;
const LISTENER_TOKEN: Token = Token(TOKEN_BASE);
/// Unsent answers a client may leave queued before it is dropped.
const MAX_PENDING_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// Most simultaneous control connections; more are refused at accept.
const MAX_CONNECTIONS: usize = 512;
/// Events a `watch` subscriber may leave unread; beyond, events are dropped for it
/// (and counted in an `events_lost` event once it has caught up).
const MAX_WATCH_BUFFER_BYTES: usize = 256 * 1024;

/// Identifies one client connection, for answers sent later.
pub type ConnId = usize;

/// A client connection a master re-executing in place leaves open for its new image.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct HandedConn {
    pub fd: RawFd,
    dialect: Dialect,
    /// A Gunicorn client's requests still awaiting their answers, in order.
    gunicorn_pending: gunicorn::Pending,
    /// A request line partly read, and answer bytes not yet sent.
    pub inbuf: Vec<u8>,
    pub outbuf: Vec<u8>,
    /// The request ids of the reloads it waits for.
    pub waiting: Vec<Value>,
    /// `scale --wait` requests it waits for: (request id, the target before).
    pub scale_waiting: Vec<(Value, usize)>,
}

/// A descriptor the old image left open, owned from now on (and closed on the next
/// `execve`).
fn take_fd(fd: RawFd) -> std::os::fd::OwnedFd {
    // SAFETY: the old image left `fd` open for us alone, and nothing else owns it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    owned
}

/// A request ready for the arbiter.
pub struct Request {
    pub conn: ConnId,
    pub id: Value,
    pub command: Command,
    /// The peer's uid, for history ("ctl uid 1000").
    pub uid: u32,
}

/// Which protocol a client speaks, known from its first byte.
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dialect {
    Unknown,
    /// rgun's JSON lines.
    Lines,
    /// Gunicorn's length-prefixed JSON.
    Gunicorn,
}

struct Conn {
    stream: UnixStream,
    dialect: Dialect,
    /// Gunicorn requests handed to the arbiter, waiting for its answers.
    pending: gunicorn::Pending,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    uid: u32,
    allowed: bool,
    /// Dropping the rest of a line that was too long.
    skipping: bool,
    /// Subscribed with `watch`.
    watching: bool,
    /// Events dropped since the subscriber fell behind.
    lost: u64,
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// A symbolic link to `path` where Gunicorn's `gunicornc` looks by default.
    alias: Option<PathBuf>,
    conns: BTreeMap<ConnId, Conn>,
    next: ConnId,
    daemon_uid: u32,
}

impl ControlServer {
    /// Binds the socket with `mode`. A stale socket file is replaced; a live one (another
    /// daemon answering) is an error.
    pub fn bind(path: &Path, mode: u32, registry: &Registry) -> anyhow::Result<ControlServer> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another daemon is answering on the control socket {}: stop it, or choose another path with --control-socket",
                    path.display()
                );
            }
            std::fs::remove_file(path).with_context(|| {
                format!("cannot remove stale control socket {}", path.display())
            })?;
        }
        Self::bind_at(path, path, mode, registry)
    }

    /// A new master (after USR2) takes the socket over from the
    /// old one: bound beside it, then renamed over it, so clients never find no socket.
    pub fn take_over(path: &Path, mode: u32, registry: &Registry) -> anyhow::Result<ControlServer> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".new-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        Self::bind_at(&tmp, path, mode, registry)
    }

    fn bind_at(
        bind_path: &Path,
        path: &Path,
        mode: u32,
        registry: &Registry,
    ) -> anyhow::Result<ControlServer> {
        // SAFETY: umask only changes this process's file-creation mask; the master is
        // single-threaded, so no other thread creates files meanwhile.
        let old = unsafe { libc::umask(0o177) };
        let bound = std::os::unix::net::UnixListener::bind(bind_path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let std_listener = bound
            .with_context(|| format!("cannot create control socket {}", bind_path.display()))?;
        std::fs::set_permissions(bind_path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set mode {mode:o} on {}", bind_path.display()))?;
        if bind_path != path {
            std::fs::rename(bind_path, path)
                .with_context(|| format!("cannot move the control socket to {}", path.display()))?;
        }
        std_listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(std_listener);
        registry.register(&mut listener, LISTENER_TOKEN, Interest::READABLE)?;
        Ok(ControlServer {
            listener,
            path: path.to_owned(),
            alias: None,
            conns: BTreeMap::new(),
            next: TOKEN_BASE + 1,
            daemon_uid: nix::unistd::geteuid().as_raw(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where Gunicorn's `gunicornc` finds this socket too, if it was linked there.
    pub fn alias(&self) -> Option<&Path> {
        self.alias.as_deref()
    }

    /// The listening descriptor (a master re-executing in place keeps it open).
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Every client connection but `watch` subscribers (which a new image could not
    /// resume: they are closed, and their client sees the stream end), for a master
    /// re-executing in place, with what it read and has not sent.
    pub fn handover(&self) -> Vec<(ConnId, HandedConn)> {
        self.conns
            .iter()
            .filter(|(_, c)| !c.watching)
            .map(|(&id, c)| {
                let handed = HandedConn {
                    fd: c.stream.as_raw_fd(),
                    dialect: c.dialect,
                    gunicorn_pending: c.pending.clone(),
                    inbuf: c.inbuf.clone(),
                    outbuf: c.outbuf.clone(),
                    waiting: Vec::new(),
                    scale_waiting: Vec::new(),
                };
                (id, handed)
            })
            .collect()
    }

    /// In a master re-executed in place: the socket and the client connections the old
    /// image left open (`handover`). Returns the server and each connection's id, in
    /// order.
    pub fn adopt(
        listener_fd: RawFd,
        path: &Path,
        conns: &[HandedConn],
        registry: &Registry,
    ) -> anyhow::Result<(ControlServer, Vec<ConnId>)> {
        let std_listener = std::os::unix::net::UnixListener::from(take_fd(listener_fd));
        std_listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(std_listener);
        registry.register(&mut listener, LISTENER_TOKEN, Interest::READABLE)?;
        // The link for gunicornc the old image made, if it made one, is this image's.
        let alias = rgunctl::socket_path::gunicorn_default_socket()
            .filter(|alias| std::fs::read_link(alias).is_ok_and(|target| target == path));
        let mut server = ControlServer {
            listener,
            path: path.to_owned(),
            alias,
            conns: BTreeMap::new(),
            next: TOKEN_BASE + 1,
            daemon_uid: nix::unistd::geteuid().as_raw(),
        };
        let mut ids = Vec::new();
        for handed in conns {
            let std_stream = std::os::unix::net::UnixStream::from(take_fd(handed.fd));
            std_stream.set_nonblocking(true)?;
            let id = server.add_conn(UnixStream::from_std(std_stream), registry);
            if let Some(c) = server.conns.get_mut(&id) {
                c.dialect = handed.dialect;
                c.pending.clone_from(&handed.gunicorn_pending);
                c.inbuf.clone_from(&handed.inbuf);
                c.outbuf.clone_from(&handed.outbuf);
            }
            ids.push(id);
        }
        Ok((server, ids))
    }

    /// Descriptors a forked worker must close.
    pub fn fds(&self) -> Vec<RawFd> {
        std::iter::once(self.listener.as_raw_fd())
            .chain(self.conns.values().map(|c| c.stream.as_raw_fd()))
            .collect()
    }

    /// Handles a poll event for one of our tokens; returns the complete requests.
    pub fn handle_event(&mut self, token: Token, registry: &Registry) -> Vec<Request> {
        if token == LISTENER_TOKEN {
            self.accept(registry);
            return Vec::new();
        }
        let mut requests = Vec::new();
        let id = token.0;
        let Some(conn) = self.conns.get_mut(&id) else {
            return requests;
        };
        let alive = conn.flush() && conn.read_requests(id, &mut requests);
        if !alive {
            self.drop_conn(id, registry);
        }
        requests
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let (stream, _) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("control accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                continue; // dropped: the client sees a closed connection
            }
            self.add_conn(stream, registry);
        }
    }

    /// Registers a client connection; its id (a connection that cannot be registered
    /// is dropped: the client sees it close).
    fn add_conn(&mut self, mut stream: UnixStream, registry: &Registry) -> ConnId {
        let uid = peer_uid(&stream).unwrap_or(u32::MAX);
        let allowed = uid == 0 || uid == self.daemon_uid;
        let id = self.next;
        self.next += 1;
        if registry
            .register(
                &mut stream,
                Token(id),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_ok()
        {
            self.conns.insert(
                id,
                Conn {
                    stream,
                    dialect: Dialect::Unknown,
                    pending: gunicorn::Pending::new(),
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                    uid,
                    allowed,
                    skipping: false,
                    watching: false,
                    lost: 0,
                },
            );
        }
        id
    }

    /// Queues a response line for a connection (if it is still there) and tries to send.
    pub fn send(&mut self, conn: ConnId, line: &str, registry: &Registry) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.dialect == Dialect::Gunicorn {
            c.answer_gunicorn(line);
        } else {
            c.outbuf.extend_from_slice(line.as_bytes());
        }
        if !c.flush() {
            self.drop_conn(conn, registry);
        }
    }

    /// Makes a connection a `watch` subscriber: it gets every `broadcast` line.
    pub fn subscribe(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.watching = true;
        }
    }

    pub fn has_watchers(&self) -> bool {
        self.conns.values().any(|c| c.watching)
    }

    /// Sends an event line to every subscriber. One that has left more than
    /// `MAX_WATCH_BUFFER_BYTES` unread misses events (counted) instead of growing its
    /// buffer: a slow watcher costs the master its own bounded buffer, nothing more.
    pub fn broadcast(&mut self, line: &str, registry: &Registry) {
        let mut gone = Vec::new();
        for (id, c) in self.conns.iter_mut().filter(|(_, c)| c.watching) {
            if c.outbuf.len() + line.len() > MAX_WATCH_BUFFER_BYTES {
                c.lost += 1;
                continue;
            }
            if c.lost > 0 && c.outbuf.len() < MAX_WATCH_BUFFER_BYTES / 2 {
                let lost = serde_json::json!({"event": "events_lost", "count": c.lost});
                c.outbuf.extend_from_slice(format!("{lost}\n").as_bytes());
                c.lost = 0;
            }
            c.outbuf.extend_from_slice(line.as_bytes());
            if !c.flush() {
                gone.push(*id);
            }
        }
        for id in gone {
            self.drop_conn(id, registry);
        }
    }

    fn drop_conn(&mut self, id: ConnId, registry: &Registry) {
        if let Some(mut c) = self.conns.remove(&id) {
            let _ = registry.deregister(&mut c.stream);
        }
    }

    pub fn remove_socket(&self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(alias) = &self.alias {
            if std::fs::read_link(alias).is_ok_and(|target| target == self.path) {
                let _ = std::fs::remove_file(alias);
            }
        }
    }

    /// Links `alias` to this socket, unless a live socket (another server's) is there;
    /// a stale file or link is replaced. Its directory is created (0700) if missing.
    pub fn link_alias(&mut self, alias: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if std::fs::symlink_metadata(alias).is_ok() {
            if std::os::unix::net::UnixStream::connect(alias).is_ok() {
                bail!("another server answers on {}", alias.display());
            }
            std::fs::remove_file(alias)
                .with_context(|| format!("cannot remove stale {}", alias.display()))?;
        }
        if let Some(dir) = alias.parent().filter(|d| !d.exists()) {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::os::unix::fs::symlink(&self.path, alias)
            .with_context(|| format!("cannot link {} to the control socket", alias.display()))?;
        self.alias = Some(alias.to_owned());
        Ok(())
    }
}

impl Conn {
    /// Writes what is queued; false when the client is gone.
    fn flush(&mut self) -> bool {
        crate::net::flush_nonblocking(&mut self.stream, &mut self.outbuf)
    }

    /// Turns what arrived into requests, in the protocol the client's first byte
    /// chose. False when the stream cannot be followed any further.
    fn take_input(&mut self, id: ConnId, out: &mut Vec<Request>) -> bool {
        if self.dialect == Dialect::Unknown {
            match self.inbuf.first() {
                None => return true,
                Some(&b) if rgunctl::gunicorn::opens_message(b) => self.dialect = Dialect::Gunicorn,
                Some(_) => self.dialect = Dialect::Lines,
            }
        }
        if self.dialect == Dialect::Gunicorn {
            return self.take_messages(id, out);
        }
        self.take_lines(id, out);
        true
    }

    /// Turns the complete lines in `inbuf` into requests (errors are answered here).
    fn take_lines(&mut self, id: ConnId, out: &mut Vec<Request>) {
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &self.inbuf[start..]) {
            let line = &self.inbuf[start..start + nl];
            start += nl + 1;
            if std::mem::take(&mut self.skipping) {
                continue; // the tail of an over-long line, already answered
            }
            let line = trim_cr(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if line.len() > MAX_LINE_BYTES {
                self.reply_error(
                    &Value::Null,
                    ErrorCode::BadRequest,
                    &format!("request line over {MAX_LINE_BYTES} bytes"),
                );
                continue;
            }
            match parse_request(line) {
                _ if !self.allowed => {
                    let id = parse_request(line)
                        .map(|(id, _)| id)
                        .unwrap_or_else(|(id, _)| id);
                    self.reply_error(
                        &id,
                        ErrorCode::Forbidden,
                        &format!("uid {} may not control this daemon", self.uid),
                    );
                }
                Ok((req_id, command)) => out.push(Request {
                    conn: id,
                    id: req_id,
                    command,
                    uid: self.uid,
                }),
                Err((req_id, error)) => self.reply(&req_id, &error),
            }
        }
        self.inbuf.drain(..start);
        if self.inbuf.len() > MAX_LINE_BYTES && !self.skipping {
            self.reply_error(
                &Value::Null,
                ErrorCode::BadRequest,
                &format!("request line over {MAX_LINE_BYTES} bytes"),
            );
            self.inbuf.clear();
            self.skipping = true;
        } else if self.skipping {
            self.inbuf.clear();
        }
    }

    /// Reads what arrived and turns complete lines into requests (errors are answered
    /// here). False when the client is gone.
    fn read_requests(&mut self, id: ConnId, out: &mut Vec<Request>) -> bool {
        let mut buf = [0u8; 8192];
        let mut eof = false;
        let queued = out.len();
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
            // Edge-triggered: read until the socket is empty, handling complete lines
            // as they come so the buffer stays small.
            if self.inbuf.len() > 4 * MAX_LINE_BYTES && !self.take_input(id, out) {
                let _ = self.flush();
                return false;
            }
        }
        if !self.take_input(id, out) {
            let _ = self.flush();
            return false;
        }
        if self.outbuf.len() > MAX_PENDING_REPLY_BYTES {
            return false; // a client that sends but never reads its answers
        }
        // A client that half-closed still gets its answers (even deferred ones), and a
        // watcher its events (`echo '{"cmd":"watch"}' | socat ...` half-closes at
        // once); one that closed with nothing left to answer is dropped.
        let flushed = self.flush();
        flushed && !(eof && out.len() == queued && self.outbuf.is_empty() && !self.watching)
    }

    fn reply_error(&mut self, id: &Value, code: ErrorCode, message: &str) {
        self.reply(id, &ErrorBody::new(code, message));
    }

    fn reply(&mut self, id: &Value, error: &ErrorBody) {
        self.outbuf
            .extend_from_slice(error_line(id, error).as_bytes());
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    // SAFETY: the descriptor is a connected Unix socket owned by `stream` for the
    // duration of the borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}
