//! The ASGI side of an HTTP/1 connection: sending what the application's `send()`
//! calls framed (the call itself is `worker::bridge`'s, from `conn::app`), watching
//! the client while the application runs (`step_asgi`), so that `http.disconnect`
//! reaches it when the client leaves, and the request's end (`end_asgi`, also when
//! the connection is abandoned); and WebSockets, from the upgrade request
//! (`try_websocket`) to the close.
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

use super::{Conn, State, Step};
use crate::asgi::cycle::{Cycle, Progress};
use crate::asgi::websocket::WsCycle;
use crate::http::request::RequestInfo;
use crate::http::response::RequestFacts;
use crate::http::websocket;
use crate::net::outbox::Outbox;
use crate::worker::bridge;
use crate::worker::exchange::status_line;
use crate::worker::{Application, Service, Shared};

/// A WebSocket connection's protocol state beside its application cycle.
pub struct WsConn {
    pub(super) cycle: Py<WsCycle>,
    decoder: websocket::Decoder,
}

/// How long a connection waits for an application that neither sends nor ends.
pub(super) const APP_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Pipelined input buffered while the application runs, at most.
const WATCH_LIMIT_BYTES: usize = 64 * 1024;

impl Conn {
    /// An ASGI worker's WebSocket upgrade request: its application is called with a
    /// `websocket` scope and the connection becomes a WebSocket. `None`: not one.
    pub(super) fn try_websocket(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        facts: RequestFacts,
    ) -> Option<Step> {
        let Application::Asgi(app) = &service.app else {
            return None;
        };
        let upgrade = websocket::upgrade_request(&self.ex.head, &self.ex.head_bytes)?;
        // Gunicorn's ASGI order: pre_request before the application, post_request
        // once the WebSocket is over (`end_ws`).
        let hook_req = self.ex.pre_request(py, service, &self.peer);
        let info = RequestInfo {
            head_bytes: &self.ex.head_bytes,
            head: &self.ex.head,
            peer: &self.peer,
            local: &self.local,
            https: self.ex.https,
            client_subject: None,
            forwarder_headers: &ctx.settings.forwarder_headers,
        };
        let outbox = Outbox::with_buffer(std::mem::take(&mut self.spare_out));
        let facts = RequestFacts {
            close: true,
            ..facts
        };
        Some(
            match app.call_websocket(py, &info, upgrade, outbox, facts, self.key) {
                Ok((cycle, scope)) => {
                    self.ex
                        .keep_for_post_request(service, hook_req, scope.as_any());
                    self.state = State::WebSocket(Box::new(WsConn {
                        cycle,
                        decoder: websocket::Decoder::new(app.ws_max_message_bytes),
                    }));
                    Step::Continue
                }
                Err(e) => {
                    tracing::error!(
                        "Error handling WebSocket {}\n{}",
                        String::from_utf8_lossy(&self.ex.head_bytes[self.ex.head.target.clone()]),
                        crate::python::format_exception(py, &e)
                    );
                    self.end_request(ctx, 500, 0);
                    self.fail_status(500, "Internal Server Error")
                }
            },
        )
    }

    /// Sends what the application framed; once the response is complete, finishes the
    /// request like any other; until then, watches for the client leaving.
    /// `cycle`: the one `State::Asgi` holds.
    pub(super) fn step_asgi(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        cycle: Py<Cycle>,
    ) -> Step {
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
                let status = c.http().status;
                self.end_asgi(py, service, ctx, &c, (status, 0));
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
        let mut http = c.finish(py);
        self.state = State::Head;
        let (status, bytes, close) = self.take_back(&mut http);
        let ended = self.end_asgi(py, service, ctx, &c, (status, bytes));
        drop(c);
        self.next_request(ctx, ended, close || progress == Progress::Broken)
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
                let status = c.http().status;
                self.end_asgi(py, service, ctx, &c, (status, 0));
                Step::Close
            }
        }
    }

    /// An ASGI request is over (complete, or cut short): its `post_request` hook
    /// (`bridge::asgi_over`), then the exchange's `finish`. `response`: status, body
    /// bytes sent.
    fn end_asgi(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        cycle: &Cycle,
        response: (u16, u64),
    ) -> Instant {
        let (status, bytes) = response;
        bridge::asgi_over(py, service, &mut self.ex, cycle, status, bytes);
        self.end_request(ctx, status, bytes)
    }

    /// A WebSocket: sends the frames the application (and the connection's own answers
    /// to pings and closes) queued, reads and decodes the client's frames, and closes
    /// once a close frame (or the handshake's refusal) is out.
    /// `cycle`: the one `State::WebSocket` holds.
    pub(super) fn step_ws(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        cycle: Py<WsCycle>,
    ) -> Step {
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
        self.ex
            .post_request(py, service, || (status_line(status), Vec::new()), 0);
        self.end_request(ctx, status, 0);
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
            State::Asgi(_) => Some(self.ex.started),
            State::Http2(_) => self.oldest_asgi_stream(),
            _ => None,
        }
    }

    /// An open WebSocket (a graceful stop closes it with 1001).
    pub fn is_websocket(&self) -> bool {
        matches!(self.state, State::WebSocket(_))
    }

    /// The connection closes with the application still running: it learns the
    /// client left, and the request ends as any other (`post_request`, the access
    /// log, the scoreboard).
    pub(super) fn abandon_asgi(&mut self, service: &Service, ctx: &Shared) {
        Python::with_gil(|py| match &self.state {
            State::Asgi(cycle) => {
                let cycle = cycle.clone_ref(py);
                let mut c = cycle.borrow_mut(py);
                c.client_gone(py);
                let status = c.http().status;
                self.end_asgi(py, service, ctx, &c, (status, 0));
            }
            State::WebSocket(ws) => {
                let cycle = ws.cycle.clone_ref(py);
                self.end_ws(py, service, ctx, &cycle);
            }
            _ => {}
        });
    }
}
