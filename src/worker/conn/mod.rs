//! One client connection: the state machine that reads a request head and body from a
//! non-blocking socket, hands complete requests to the application, sends the response
//! and loops for keep-alive and pipelining.
//!
//! A request reaches Python only when its head and body are complete, so a slow client
//! never holds the interpreter. Every state has a deadline the event loop enforces.

mod app;
mod asgi;
mod closing;
mod h2;
mod h2_asgi;
mod h2_stream;
pub mod harness;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_h2;
mod uwsgi;

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use self::app::Responding;
pub use self::h2_stream::StreamJob;
use super::body::{BodyError, BodyReader};
use super::bridge::PeerObjects;
use super::exchange::Exchange;
use super::{Service, Shared};
use crate::http::body::Body;
use crate::http::proxy::{self, ProxyMode};
use crate::http::scan::HeadScan;
use crate::http::HttpError;
use crate::net::transport::Transport;
use crate::net::{Local, Peer};

/// Blank-line bytes tolerated before a request.
const MAX_BLANK_BYTES: usize = 1024;
/// How much we try to read per recv(2).
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// The largest response buffer kept for the connection's next response. Small
/// responses (most of them) then cost no allocation; a bigger buffer is given back,
/// so an idle keep-alive connection holds at most this much besides its read buffer
/// (a thousand of them after 64 KiB responses would otherwise hold 64 MiB).
const KEPT_OUT_BYTES: usize = 16 * 1024;

enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Receiving the request body.
    Body(BodyReader),
    /// Sending the application's response.
    Responding(Box<Responding>),
    /// An ASGI application runs; its response is in the cycle (`conn::asgi`).
    Asgi(Py<crate::asgi::cycle::Cycle>),
    /// An ASGI WebSocket, from its handshake to its close (`conn::asgi`).
    WebSocket(Box<asgi::WsConn>),
    /// An HTTP/2 connection and its streams (`conn::h2`).
    Http2(Box<h2::H2Conn>),
    /// Sending a server-generated error response, then closing.
    Closing { out: Vec<u8>, pos: usize },
    /// Our side is shut down; discarding input until the client closes.
    Draining,
}

/// What the event loop should do with the connection after `drive`.
#[derive(Debug, PartialEq, Eq)]
pub enum Drive {
    /// Waiting for the client to send.
    WaitRead,
    /// Waiting for room in the socket's send buffer.
    WaitWrite,
    /// Done with it: close and forget.
    Close,
    /// A complete request waits for a pool thread (`Exec::Pool` only).
    Dispatch,
    /// A response is done and more input may be waiting (pipelined bytes, or a read
    /// that filled the buffer): drive again after the other ready connections had a turn.
    Yield,
}

/// Where the application runs.
#[derive(Clone, Copy)]
pub enum Exec<'py> {
    /// On the event loop's thread, which holds the GIL.
    Inline(Python<'py>, &'py Service),
    /// On a `--threads` pool thread: `drive` stops at a complete request.
    Pool,
}

pub struct Conn {
    /// The event loop's key for this connection (an ASGI cycle wakes it by key).
    pub key: usize,
    transport: Transport,
    peer: Peer,
    local: std::sync::Arc<Local>,
    read_buf: Vec<u8>,
    read_start: usize,
    /// The request in flight (or the last one): its head, start, scheme, hook state.
    ex: Exchange,
    /// How far the incoming head has been scanned (from `read_start`).
    scan: HeadScan,
    /// The last response's output buffer, emptied, for the next response: no
    /// allocation and regrowth per request.
    spare_out: Vec<u8>,
    state: State,
    /// When the current state gives up (idle keep-alive, slow head, stalled I/O).
    pub deadline: Instant,
    /// A request is between its first byte and its last response byte.
    pub in_request: bool,
    served: u64,
    /// The body of a request waiting for a pool thread.
    pending_body: Option<Body>,
    /// Registered for writability too (only while a write is blocked: otherwise every
    /// ACK would wake the loop for nothing).
    pub writable_registered: bool,
    /// The socket may hold bytes that no pending epoll event will announce: set by
    /// every event (edge-triggered) and by a recv that filled the buffer, cleared by a
    /// short recv. Without it, after a response we can wait for the next edge instead
    /// of reading again.
    unread: bool,
    /// In the event loop's run queue, waiting for its next turn.
    pub queued: bool,
    /// Blank-line bytes skipped before the current request.
    blank_bytes: usize,
    /// The peer and local address as Python objects, made at the first request.
    peer_objects: PeerObjects,
    /// A PROXY protocol header may still come first (`--proxy-protocol`).
    proxy_pending: Option<ProxyMode>,
}

impl Conn {
    pub fn new(
        transport: Transport,
        peer: Peer,
        proxy_pending: Option<ProxyMode>,
        local: std::sync::Arc<Local>,
        first_byte_timeout: Duration,
    ) -> Conn {
        Conn {
            key: 0,
            transport,
            peer,
            local,
            read_buf: Vec::new(),
            read_start: 0,
            ex: Exchange::new(Instant::now()),
            scan: HeadScan::default(),
            spare_out: Vec::new(),
            state: State::Head,
            deadline: Instant::now() + first_byte_timeout,
            in_request: false,
            served: 0,
            pending_body: None,
            proxy_pending,
            peer_objects: PeerObjects::default(),
            blank_bytes: 0,
            writable_registered: false,
            unread: true,
            queued: false,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.transport.fd()
    }

    /// Between requests with nothing buffered. A keep-alive connection in this state
    /// may be closed at any moment; a fresh one (`served() == 0`) has a first request
    /// on its way, so a draining worker still waits for it.
    pub fn is_http2(&self) -> bool {
        matches!(self.state, State::Http2(_))
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head)
            && !self.in_request
            && self.read_start == self.read_buf.len()
    }

    pub fn served(&self) -> u64 {
        self.served
    }

    /// An epoll event for this socket: it may have input we have not read.
    pub fn note_event(&mut self) {
        self.unread = true;
    }

    /// Runs the state machine until it must wait for the socket or is done.
    pub fn drive(&mut self, exec: Exec<'_>, ctx: &Shared) -> Drive {
        loop {
            let step = match (&mut self.state, exec) {
                (State::Head, _) => self.step_head(exec, ctx),
                (State::Body(reader), _) => {
                    let fed = feed_body(reader, &self.read_buf, &mut self.read_start);
                    self.step_body(exec, ctx, fed)
                }
                (State::Responding(_), _) => self.step_respond(exec, ctx),
                (State::Asgi(cycle), Exec::Inline(py, service)) => {
                    let cycle = cycle.clone_ref(py);
                    self.step_asgi(py, service, ctx, cycle)
                }
                (State::WebSocket(ws), Exec::Inline(py, service)) => {
                    let cycle = ws.cycle.clone_ref(py);
                    self.step_ws(py, service, ctx, cycle)
                }
                (State::Asgi(_) | State::WebSocket(_), Exec::Pool) => {
                    unreachable!("an ASGI worker has no pool")
                }
                (State::Http2(_), _) => self.step_h2(exec, ctx),
                (State::Closing { out, pos }, _) => {
                    match closing::send_rest(&mut self.transport, out, pos) {
                        Some(step) => step,
                        None => self.shutdown_and_drain(),
                    }
                }
                (State::Draining, _) => self.step_draining(),
            };
            match step {
                Step::Continue => {}
                // A TLS handshake answer the socket had no room for waits for room.
                Step::Wait if self.transport.wants_write() => return Drive::WaitWrite,
                Step::Wait => return Drive::WaitRead,
                Step::WaitWrite => return Drive::WaitWrite,
                Step::Close => return Drive::Close,
                Step::Dispatch => return Drive::Dispatch,
                Step::Yield => return Drive::Yield,
            }
        }
    }

    /// The connection is closed with a request unfinished: the scoreboard forgets it;
    /// an ASGI application hears that its client left and its request ends
    /// (`post_request` included: an ASGI worker always has `service`).
    pub fn abandon(&mut self, ctx: &Shared, service: Option<&Service>) {
        match (&mut self.state, service) {
            (State::Asgi(_) | State::WebSocket(_), Some(service)) => {
                self.abandon_asgi(service, ctx)
            }
            (State::Http2(h), _) => Conn::abandon_h2(h, ctx, service),
            _ => self.ex.forget(ctx),
        }
    }

    /// A complete request: run it here, or hand it to a pool thread.
    fn request_ready(&mut self, exec: Exec<'_>, ctx: &Shared, body: Body) -> Step {
        match exec {
            Exec::Inline(py, service) => self.run_request(py, service, ctx, body, 0),
            Exec::Pool => {
                self.pending_body = Some(body);
                Step::Dispatch
            }
        }
    }

    fn step_head(&mut self, exec: Exec<'_>, ctx: &Shared) -> Step {
        // HTTP/2 by ALPN, or with prior knowledge when allowed: either way the client
        // opens with the preface (never on a uwsgi listener).
        let h2 = if self.transport.is_tls() {
            self.transport.negotiated_h2()
        } else {
            ctx.settings.http2_cleartext
        };
        let preface = if h2
            && self.served == 0
            && self.proxy_pending.is_none()
            && self.read_start < self.read_buf.len()
            && ctx.settings.uwsgi.is_none()
        {
            self.opens_with_preface()
        } else {
            Some(false)
        };
        if preface == Some(true) {
            return self.start_h2(ctx);
        }
        if preface.is_none() {
            // Part of the HTTP/2 preface: wait for the rest before parsing HTTP/1.
        } else if self.read_start < self.read_buf.len() && self.proxy_pending.is_some() {
            if let Some(step) = self.take_proxy_header() {
                return step;
            }
        } else if self.read_start < self.read_buf.len() {
            if let Some(step) = self.parse_head(exec, ctx) {
                return step;
            }
        }
        self.read_head(ctx)
    }

    /// The buffered bytes as (the start of) a request head, or a uwsgi packet
    /// (`conn::uwsgi`): a complete one handed on. `None`: more bytes needed.
    fn parse_head(&mut self, exec: Exec<'_>, ctx: &Shared) -> Option<Step> {
        let taken = if ctx.settings.uwsgi.is_some() {
            self.take_packet()
        } else {
            self.take_head(ctx)
        };
        // One call site for both: the HTTP path keeps `on_head` inlined.
        match taken? {
            Ok(()) => Some(self.on_head(exec, ctx)),
            Err(step) => Some(step),
        }
    }

    /// The buffered bytes as (the start of) an HTTP head: blank lines before it
    /// skipped. `Some(Ok)`: a complete head taken; `Some(Err)`: the step instead.
    fn take_head(&mut self, ctx: &Shared) -> Option<Result<(), Step>> {
        // Blank lines before a request are allowed (RFC 9112 2.2) but consumed
        // here, and only so many, or a client could grow the buffer forever.
        let blank = self.read_buf[self.read_start..]
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if blank > 0 {
            self.read_start += blank;
            self.scan = HeadScan::default();
            self.blank_bytes += blank;
            if self.blank_bytes > MAX_BLANK_BYTES {
                return Some(Err(self.fail(&HttpError::Malformed(
                    "too many blank lines before a request",
                ))));
            }
            return Some(Err(Step::Continue));
        }
        let buf = &self.read_buf[self.read_start..];
        let parsed = match self
            .scan
            .parse(buf, &ctx.settings.limits, &mut self.ex.head)
        {
            Err(e) => self.parse_lenient(ctx).ok_or(e).map(Some),
            parsed => parsed,
        };
        match parsed {
            Ok(Some(n)) => {
                self.scan = HeadScan::default();
                self.blank_bytes = 0;
                self.ex.head_bytes.clear();
                self.ex
                    .head_bytes
                    .extend_from_slice(&self.read_buf[self.read_start..self.read_start + n]);
                self.read_start += n;
                Some(Ok(()))
            }
            Ok(None) => None,
            Err(e) => Some(Err(self.fail(&e))),
        }
    }

    /// A head the strict parser refused, parsed again once Gunicorn's lenient switches
    /// (when on) have rewritten it (`http::lenient`). None: still refused.
    #[cold]
    fn parse_lenient(&mut self, ctx: &Shared) -> Option<usize> {
        let limits = &ctx.settings.limits;
        if !limits.lenient.any() {
            return None;
        }
        let buf = &mut self.read_buf[self.read_start..];
        let rewritten = crate::http::lenient::rewrite(buf, &limits.lenient)?;
        let parsed = crate::http::head::parse_head(buf, limits, &mut self.ex.head).ok()??;
        self.ex.head.unconventional_version = rewritten.version;
        Some(parsed)
    }

    /// Reads more of a head; its first byte starts the request's deadline.
    fn read_head(&mut self, ctx: &Shared) -> Step {
        let was_empty = self.read_start == self.read_buf.len();
        match self.fill() {
            Ok(0) => Step::Close,
            Ok(_) => {
                if was_empty {
                    // The first byte of a request: the whole head must now arrive in time.
                    self.in_request = true;
                    self.ex.started = Instant::now();
                    self.deadline = self.ex.started + ctx.settings.request_timeout;
                }
                Step::Continue
            }
            // Draining: a keep-alive connection with nothing more to read is done. (A
            // request already in the kernel's buffer was read above and is served.)
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    && ctx.stopping()
                    && was_empty
                    && self.served > 0 =>
            {
                Step::Close
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Wait,
            Err(_) => Step::Close,
        }
    }

    /// One request per turn: a client that sends its next request the moment it has our
    /// answer (on the other core) would otherwise keep this loop to itself while the
    /// worker's other connections wait — the cause of a fat latency tail under load.
    /// With nothing buffered and the socket drained, the next request's edge wakes us.
    fn after_response(&self, ctx: &Shared) -> Step {
        if ctx.stopping() {
            // Read now: a drained keep-alive connection closes at once (`step_head`).
            Step::Continue
        } else if self.read_start < self.read_buf.len() || self.unread {
            Step::Yield
        } else {
            Step::Wait
        }
    }

    /// Consumes a PROXY header (or notes there is none). None: more bytes needed.
    fn take_proxy_header(&mut self) -> Option<Step> {
        let mode = self.proxy_pending?;
        match proxy::parse(&self.read_buf[self.read_start..], mode) {
            Ok(None) => None,
            Ok(Some((header, n))) => {
                self.proxy_pending = None;
                self.read_start += n;
                self.scan = HeadScan::default();
                if let Some(client) = header.and_then(|h| h.client) {
                    self.peer.addr = client.ip().to_canonical().to_string();
                    self.peer.port = client.port().to_string();
                }
                Some(Step::Continue)
            }
            Err(e) => Some(self.fail(&e)),
        }
    }

    fn on_head(&mut self, exec: Exec<'_>, ctx: &Shared) -> Step {
        if !self.in_request {
            self.in_request = true;
            self.ex.started = Instant::now();
        }
        match BodyReader::new(self.ex.head.framing) {
            None => self.request_ready(exec, ctx, Body::Empty),
            Some(reader) => {
                if self.ex.head.expects_continue
                    && self.ex.head.minor_version >= 1
                    && self.read_start == self.read_buf.len()
                {
                    // Best effort: a full socket buffer here means the client is not
                    // waiting for it anyway.
                    let _ = self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                self.deadline = Instant::now() + ctx.settings.request_timeout;
                self.state = State::Body(reader);
                Step::Continue
            }
        }
    }

    /// `State::Body` after `feed_body`: a complete body goes to the application, an
    /// error is answered, else more is read.
    fn step_body(
        &mut self,
        exec: Exec<'_>,
        ctx: &Shared,
        fed: Result<Option<Body>, BodyError>,
    ) -> Step {
        match fed {
            Ok(Some(body)) => {
                self.state = State::Head;
                return self.request_ready(exec, ctx, body);
            }
            Ok(None) => {}
            Err(BodyError::Http(e)) => return self.fail(&e),
            Err(e @ BodyError::Spill(_)) => {
                tracing::error!("{e}");
                return self.fail_status(500, "Internal Server Error");
            }
        }
        self.compact();
        match self.fill() {
            Ok(0) => Step::Close,
            Ok(_) => {
                self.deadline = Instant::now() + ctx.settings.request_timeout;
                Step::Continue
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Wait,
            Err(_) => Step::Close,
        }
    }

    /// Drops consumed bytes from the front of the read buffer.
    fn compact(&mut self) {
        self.scan = HeadScan::default();
        if self.read_start == self.read_buf.len() {
            self.read_buf.clear();
            self.read_start = 0;
        } else if self.read_start > 0 && self.read_start >= self.read_buf.len() / 2 {
            self.read_buf.drain(..self.read_start);
            self.read_start = 0;
        }
    }

    /// One read into the read buffer's spare capacity.
    fn fill(&mut self) -> io::Result<usize> {
        if self.read_start == self.read_buf.len() {
            self.read_buf.clear();
            self.read_start = 0;
        }
        match self.transport.read(&mut self.read_buf, READ_CHUNK_BYTES) {
            Ok(n) => {
                // A short read emptied the socket: later bytes raise a new edge (unless
                // TLS holds more, or has not yet seen the socket empty).
                self.unread = self.read_buf.len() == self.read_buf.capacity()
                    || self.transport.may_have_more();
                Ok(n)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.unread = false;
                }
                Err(e)
            }
        }
    }
}

/// Feeds the buffered bytes from `start` on to `reader`: `Some` body once it is
/// complete (taken out of the reader), `None` while more is to come.
fn feed_body(
    reader: &mut BodyReader,
    buf: &[u8],
    start: &mut usize,
) -> Result<Option<Body>, BodyError> {
    if *start < buf.len() {
        *start += reader.feed(&buf[*start..])?;
    }
    if reader.is_done() {
        reader.take_body().map(Some)
    } else {
        Ok(None)
    }
}

enum Step {
    Continue,
    Wait,
    WaitWrite,
    Close,
    Dispatch,
    Yield,
}
