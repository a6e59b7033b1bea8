//! The ASGI side of a connection: calling the application with a complete request
//! (`run_asgi`), sending what its `send()` calls framed, and watching the client while
//! the application runs (`step_asgi`), so that `http.disconnect` reaches it when the
//! client leaves.
//!
//! The response lives in the request's `asgi::cycle::Cycle`, filled by the
//! application's task between the loop's turns; this file is where it meets the
//! socket. While the application runs, the connection has no deadline of its own
//! beyond `APP_WAIT` (long-polls are legitimate; a blocked event loop is the
//! master's business, through the heartbeat); a stalled write still closes after
//! `--timeout`.

use std::io;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::{Conn, State, Step, KEPT_OUT_BYTES};
use crate::asgi::cycle::{Cycle, Progress};
use crate::asgi::scope::ScopeInfo;
use crate::asgi::sink::Sink;
use crate::asgi::websocket::WsCycle;
use crate::asgi::AsgiApp;
use crate::http::body::Body;
use crate::http::framer::Http1Response;
use crate::http::response::RequestFacts;
use crate::http::websocket;
use crate::net::outbox::Outbox;
use crate::worker::{Service, Shared};

/// A WebSocket connection's protocol state beside its application cycle.
pub struct WsConn {
    cycle: Py<WsCycle>,
    decoder: websocket::Decoder,
}

impl WsConn {
    /// The connection closes under it: the application hears a disconnect.
    pub(super) fn abandon(&self) {
        Python::with_gil(|py| self.cycle.borrow_mut(py).detach(py));
    }
}

/// How long a connection waits for an application that neither sends nor ends.
pub(super) const APP_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Pipelined input buffered while the application runs, at most.
const WATCH_LIMIT_BYTES: usize = 64 * 1024;

impl Conn {
    pub(super) fn run_asgi(
        &mut self,
        py: Python<'_>,
        app: &AsgiApp,
        service: &Service,
        ctx: &Shared,
        body: Body,
    ) -> Step {
        let (https, facts) = match self.begin_call(ctx) {
            Ok(pair) => pair,
            Err(refused) => return refused,
        };
        // Gunicorn's ASGI worker calls pre_request before the application, and
        // post_request once its response is over (`end_asgi`).
        let hook_req = service
            .hooks
            .as_ref()
            .and_then(|h| h.begin_request(py, &self.head_bytes, &self.head, &self.peer.addr));
        let keep = |scope: &Bound<'_, pyo3::types::PyDict>| {
            let wanted = service.hooks.as_ref().is_some_and(|h| h.post_request);
            hook_req
                .as_ref()
                .filter(|_| wanted)
                .map(|req| (req.clone().unbind(), scope.clone().into_any().unbind()))
        };
        let info = ScopeInfo {
            head_bytes: &self.head_bytes,
            head: &self.head,
            peer: &self.peer,
            local: &self.local,
            https,
            forwarder_headers: &ctx.settings.forwarder_headers,
        };
        let outbox = Outbox::with_buffer(std::mem::take(&mut self.spare_out));
        if let Some(upgrade) = websocket::upgrade_request(&self.head, &self.head_bytes) {
            let facts = RequestFacts {
                close: true,
                ..facts
            };
            return match app.call_websocket(py, &info, upgrade, outbox, facts, self.key) {
                Ok((cycle, scope)) => {
                    self.hook_request = keep(&scope);
                    self.state = State::WebSocket(Box::new(WsConn {
                        cycle,
                        decoder: websocket::Decoder::new(app.ws_max_message_bytes),
                    }));
                    Step::Continue
                }
                Err(e) => {
                    tracing::error!(
                        "Error handling WebSocket {}\n{}",
                        String::from_utf8_lossy(&self.head_bytes[self.head.target.clone()]),
                        crate::python::format_exception(py, &e)
                    );
                    self.end_request(ctx, 500, 0);
                    self.fail_status(500, "Internal Server Error")
                }
            };
        }
        // `rgunctl status` shows a request's age; the sweep keeps it on the oldest
        // (`EventLoop::publish_oldest_asgi_request`).
        let slot = &ctx.slot;
        if slot
            .request_started_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            slot.request_begin();
        }
        let mut http = Http1Response::new(outbox, &facts);
        if ctx.keep_response_heads {
            http.keep_head();
        }
        let sink = Sink::Http1(http);
        match app.call(py, &info, body, sink, facts, self.key) {
            Ok((cycle, scope)) => {
                self.hook_request = keep(&scope);
                self.state = State::Asgi(cycle);
                Step::Continue
            }
            Err(e) => {
                let traceback = crate::python::format_exception(py, &e);
                crate::log::request_error(&self.head_bytes, &self.head, &traceback);
                self.end_request(ctx, 500, 0);
                self.fail_status(500, "Internal Server Error")
            }
        }
    }

    /// Sends what the application framed; once the response is complete, finishes the
    /// request like any other; until then, watches for the client leaving.
    pub(super) fn step_asgi(&mut self, py: Python<'_>, service: &Service, ctx: &Shared) -> Step {
        let State::Asgi(cycle) = &self.state else {
            unreachable!()
        };
        let cycle = cycle.clone_ref(py);
        let mut c = cycle.borrow_mut(py);
        match c.http().outbox.flush(&mut self.transport) {
            Ok(()) => c.drained(py),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.deadline = Instant::now() + ctx.settings.request_timeout;
                return Step::WaitWrite;
            }
            Err(e) => {
                tracing::debug!("client went away mid-response: {e}");
                c.client_gone(py);
                let (status, headers) = (c.http().status, self.hook_headers(&c));
                drop(c);
                self.end_asgi(py, service, ctx, (status, headers, 0));
                return Step::Close;
            }
        }
        let progress = c.progress();
        if progress == Progress::Running {
            c.arm();
            drop(c);
            self.deadline = Instant::now() + APP_WAIT;
            return self.watch_client(py, &cycle, service, ctx);
        }
        let headers = self.hook_headers(&c);
        let mut http = c.finish(py);
        drop(c);
        self.state = State::Head;
        let (status, bytes, close) = (http.status, http.body_bytes(), http.close_after());
        if let Some(head) = http.take_kept_head() {
            self.response_head = head;
        }
        let out = http.outbox.into_buffer();
        if out.capacity() <= KEPT_OUT_BYTES {
            self.spare_out = out;
        }
        let ended = self.end_asgi(py, service, ctx, (status, headers, bytes));
        if close || progress == Progress::Broken {
            return self.shutdown_and_drain();
        }
        self.deadline = ended + ctx.settings.keepalive;
        self.compact();
        self.after_response(ctx)
    }

    /// While the application runs: read what the client sends (pipelined requests,
    /// up to a bound) so that its leaving is noticed and `http.disconnect` delivered.
    fn watch_client(
        &mut self,
        py: Python<'_>,
        cycle: &Py<Cycle>,
        service: &Service,
        ctx: &Shared,
    ) -> Step {
        if !self.unread || self.read_buf.len() - self.read_start >= WATCH_LIMIT_BYTES {
            return Step::Wait;
        }
        match self.fill() {
            Ok(n) if n > 0 => Step::Continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Wait,
            _ => {
                let mut c = cycle.borrow_mut(py);
                c.client_gone(py);
                let (status, headers) = (c.http().status, self.hook_headers(&c));
                drop(c);
                self.end_asgi(py, service, ctx, (status, headers, 0));
                Step::Close
            }
        }
    }

    /// The response's headers for a pending `post_request` hook (none to make otherwise).
    fn hook_headers(&self, cycle: &Cycle) -> Vec<(String, String)> {
        match self.hook_request {
            Some(_) => cycle.response_headers(),
            None => Vec::new(),
        }
    }

    /// An ASGI request is over: its `post_request` hook (with the scope as the
    /// environ), then the access log and the scoreboard. `response`: status,
    /// headers, body bytes sent.
    fn end_asgi(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        response: (u16, Vec<(String, String)>, u64),
    ) -> Instant {
        let (status, headers, bytes) = response;
        if let (Some(h), Some((req, scope))) = (&service.hooks, self.hook_request.take()) {
            let line = format!("{status} {}", crate::http::response::reason_phrase(status));
            if let Some(resp) = h.response_or_log(py, &line, headers, bytes) {
                h.call(
                    py,
                    "post_request",
                    vec![req.into_bound(py), scope.into_bound(py), resp],
                );
            }
        }
        self.end_request(ctx, status, bytes)
    }

    /// A WebSocket: sends the frames the application (and the connection's own answers
    /// to pings and closes) queued, reads and decodes the client's frames, and closes
    /// once a close frame (or the handshake's refusal) is out.
    pub(super) fn step_ws(&mut self, py: Python<'_>, service: &Service, ctx: &Shared) -> Step {
        let State::WebSocket(ws) = &self.state else {
            unreachable!()
        };
        let cycle = ws.cycle.clone_ref(py);
        let mut c = cycle.borrow_mut(py);
        match c.outbox().flush(&mut self.transport) {
            Ok(()) => c.drained(py),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.deadline = Instant::now() + ctx.settings.request_timeout;
                return Step::WaitWrite;
            }
            Err(_) => {
                drop(c);
                self.end_ws(py, service, ctx, &cycle);
                return Step::Close;
            }
        }
        if c.is_closed() {
            drop(c);
            self.end_ws(py, service, ctx, &cycle);
            return self.shutdown_and_drain();
        }
        if ctx.stopping() && c.is_open() {
            c.fail(py, 1001, "server shutting down");
            return Step::Continue;
        }
        self.deadline = Instant::now() + APP_WAIT;
        let pending = self.read_buf.len() - self.read_start;
        let room = if c.is_open() {
            c.wants_input()
        } else {
            pending < WATCH_LIMIT_BYTES
        };
        if !room || !self.unread {
            c.arm();
            return Step::Wait;
        }
        drop(c);
        match self.fill() {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                cycle.borrow_mut(py).arm();
                return Step::Wait;
            }
            _ => {
                self.end_ws(py, service, ctx, &cycle);
                return Step::Close;
            }
        }
        self.decode_ws(py, &cycle);
        self.compact();
        Step::Continue
    }

    /// The WebSocket is over (closed, or its client gone): detached from the
    /// connection, counted, logged, `post_request`.
    fn end_ws(&mut self, py: Python<'_>, service: &Service, ctx: &Shared, cycle: &Py<WsCycle>) {
        let mut c = cycle.borrow_mut(py);
        c.detach(py);
        let status = c.status;
        drop(c);
        self.end_asgi(py, service, ctx, (status, Vec::new(), 0));
    }

    /// The client's frames read so far, decoded into messages for the application
    /// while it takes them; a bad frame closes with its code.
    fn decode_ws(&mut self, py: Python<'_>, cycle: &Py<WsCycle>) {
        let mut c = cycle.borrow_mut(py);
        if !c.is_open() {
            // The client must wait for the handshake's answer: keep what it sent.
            return;
        }
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        ws.decoder.set_deflate(c.deflate());
        loop {
            match ws.decoder.decode(&self.read_buf[self.read_start..]) {
                Ok((message, n)) => {
                    self.read_start += n;
                    let Some(message) = message else { break };
                    if let Err(e) = c.from_client(py, message) {
                        tracing::error!("WebSocket message lost: {e}");
                    }
                    if c.is_closed() || !c.wants_input() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!("closing a WebSocket: {e}");
                    c.fail(py, e.close_code(), "");
                    break;
                }
            }
        }
    }

    /// When the HTTP request the application is running began (not for WebSockets; an
    /// HTTP/2 connection's oldest ASGI stream).
    pub fn asgi_request_started(&self) -> Option<Instant> {
        match self.state {
            State::Asgi(_) => Some(self.request_started),
            State::Http2(_) => self.oldest_asgi_stream(),
            _ => None,
        }
    }

    /// An open WebSocket (a graceful stop closes it with 1001).
    pub fn is_websocket(&self) -> bool {
        matches!(self.state, State::WebSocket(_))
    }

    /// The connection closes with the application still running: it learns the
    /// client left.
    pub(super) fn abandon_asgi(cycle: &Py<Cycle>) {
        Python::with_gil(|py| cycle.borrow_mut(py).client_gone(py));
    }
}
