//! The application side of a connection: calling the application with a complete
//! request, producing its response (`WsgiSource` into an `Http1Response`) and, when
//! the socket has taken it all, the access log and the scoreboard.
//!
//! Production needs the GIL; sending does not. With `--threads 1` both run on the
//! loop's thread, back to back. With `--threads N` a pool thread runs the application
//! and produces up to `HIGH_WATER_BYTES`, then hands the connection back; the loop
//! sends as the socket drains and hands it out again only to produce more. A pool
//! thread never touches the socket, so a client that stops reading holds a buffer,
//! never a Python thread.

use std::io;
use std::time::Instant;

use pyo3::prelude::*;

use super::{Conn, Exec, State, Step, KEPT_OUT_BYTES};
use crate::http::body::Body;
use crate::http::framer::Http1Response;
use crate::http::response::RequestFacts;
use crate::http::scheme::is_https;
use crate::log::AccessRecord;
use crate::net::outbox::Outbox;
use crate::worker::{Application, Service, Shared};
use crate::wsgi::environ::RequestInfo;
use crate::wsgi::response::WsgiSource;
use crate::wsgi::App;

/// Stop producing once this much is waiting for the socket.
pub const HIGH_WATER_BYTES: usize = 64 * 1024;

/// A response on its way: where its body comes from and how it goes on the wire.
pub struct Responding {
    source: WsgiSource,
    http: Http1Response,
    /// The application raised mid-body: what it produced goes out, then the
    /// connection closes, since the body cannot end properly.
    failed: bool,
}

impl Responding {
    /// Abandons the response: `close()` on the application's iterable. With the GIL.
    pub fn dispose(mut self, py: Python<'_>) {
        self.source.close(py);
    }
}

impl Conn {
    /// On a pool thread, with the GIL: runs the dispatched request, or produces more of
    /// the response under way. Never touches the socket. False: close the connection.
    /// `lane` is the pool thread's number (for the time-out records, `abort::Lanes`).
    pub fn serve_dispatched(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        lane: usize,
    ) -> bool {
        let step = match self.pending_body.take() {
            Some(body) => match &service.app {
                Application::Wsgi(app) => self.run_app(py, app, service, ctx, body, lane),
                Application::Asgi(_) => Step::Close,
            },
            None if matches!(self.state, State::Responding(_)) => {
                self.produce_more(py, service, ctx, lane)
            }
            None => Step::Continue,
        };
        !matches!(step, Step::Close)
    }

    /// A response whose `close()` is still owed, taken out of a connection that is
    /// being closed, so that it can be disposed of where the GIL is.
    pub fn take_unfinished(&mut self) -> Option<Box<Responding>> {
        match &self.state {
            State::Responding(r) if r.source.needs_close() => {
                match std::mem::replace(&mut self.state, State::Draining) {
                    State::Responding(r) => Some(r),
                    _ => unreachable!(),
                }
            }
            _ => None,
        }
    }

    pub(super) fn run_app(
        &mut self,
        py: Python<'_>,
        app: &App,
        service: &Service,
        ctx: &Shared,
        body: Body,
        lane: usize,
    ) -> Step {
        self.in_app(ctx, lane, false, |c| {
            c.call_app(py, app, service, ctx, body)
        })
    }

    /// What either bridge needs before it calls the application: whether the request
    /// came over HTTPS (our own TLS, or a trusted proxy's headers; disagreeing ones
    /// are a 400, the `Err` step) and the facts that shape the response head. Counts
    /// the request in flight on the scoreboard.
    pub(super) fn begin_call(&mut self, ctx: &Shared) -> Result<(bool, RequestFacts), Step> {
        let https = is_https(
            &self.head_bytes,
            &self.head,
            self.peer.trusted,
            &ctx.settings.secure_scheme_headers,
        )
        .map_err(|e| self.fail(&e))?
            || self.transport.is_tls();
        if self.peer.trusted && !self.head.underscored.is_empty() {
            let forwarder = &ctx.settings.forwarder_headers;
            if forwarder.script_name(&self.head_bytes, &self.head).is_err() {
                // Gunicorn's ConfigurationProblem: the front end's fault, a 500.
                tracing::warn!("request path outside the SCRIPT_NAME its front end forwarded");
                return Err(self.fail_status(500, "Internal Server Error"));
            }
        }
        ctx.scoreboard_begin();
        let facts = RequestFacts {
            // A uwsgi response is framed as HTTP/1.0's: never chunked (nginx would
            // pass the chunks on as body), closing when it has no length.
            minor_version: if self.head.uwsgi {
                0
            } else {
                self.head.minor_version
            },
            is_head: self.head.is_head_method(&self.head_bytes),
            close: self.head.wants_close
                || ctx.closing()
                || ctx.last_request()
                || ctx.settings.keepalive.is_zero(),
            known_length: None,
        };
        Ok((https, facts))
    }

    /// Runs `f`, which calls into the application, with this request on record in
    /// `lane` for a time-out (`abort::Lanes`).
    fn in_app(
        &mut self,
        ctx: &Shared,
        lane: usize,
        on_wire: bool,
        f: impl FnOnce(&mut Self) -> Step,
    ) -> Step {
        let what = self.head.method.start..self.head.target.end;
        let (fd, since) = (self.fd(), self.request_started);
        ctx.lanes.enter(
            lane,
            fd,
            // The watcher thread cannot speak TLS: for it, a TLS client gets a close.
            on_wire || self.transport.is_tls(),
            since,
            &self.head_bytes[what],
            &self.peer.addr,
        );
        let step = f(self);
        ctx.lanes.leave(lane);
        step
    }

    fn call_app(
        &mut self,
        py: Python<'_>,
        app: &App,
        service: &Service,
        ctx: &Shared,
        body: Body,
    ) -> Step {
        let (https, facts) = match self.begin_call(ctx) {
            Ok(pair) => pair,
            Err(refused) => return refused,
        };
        let remote = self.remote_py.get_or_insert_with(|| {
            (
                pyo3::types::PyString::new(py, &self.peer.addr).unbind(),
                pyo3::types::PyString::new(py, &self.peer.port).unbind(),
            )
        });
        let info = RequestInfo {
            remote,
            head_bytes: &self.head_bytes,
            head: &self.head,
            peer: &self.peer,
            local: &self.local,
            https,
            client_subject: self.transport.peer_subject(),
            forwarder_headers: &ctx.settings.forwarder_headers,
        };
        let hook_req = service
            .hooks
            .as_ref()
            .and_then(|h| h.begin_request(py, &self.head_bytes, &self.head, &self.peer.addr));
        let response = match app.call(py, &info, body) {
            Ok(r) => r,
            Err(e) => {
                self.log_app_error(&crate::python::format_exception(py, &e));
                self.end_request(ctx, 500, 0);
                return self.fail_status(500, "Internal Server Error");
            }
        };
        if let (Some(h), Some(req)) = (&service.hooks, hook_req) {
            if h.post_request {
                self.hook_request = Some((req.unbind(), response.environ.clone_ref(py).into_any()));
            }
        }
        let mut http = Http1Response::new(
            Outbox::with_buffer(std::mem::take(&mut self.spare_out)),
            &facts,
        );
        if ctx.keep_response_heads {
            http.keep_head();
        }
        match WsgiSource::start(py, app, response, facts, &mut http) {
            Ok(source) => {
                self.state = State::Responding(Box::new(Responding {
                    source,
                    http,
                    failed: false,
                }));
                // No new deadline: the first flush follows at once, on this thread or
                // when the pool hands the connection back (out of the sweep's reach
                // meanwhile), and it sets the next one.
                self.produce(py, service)
            }
            Err(e) => {
                self.log_app_error(&e.to_string());
                self.hook_request = None;
                self.end_request(ctx, 500, 0);
                self.fail_status(500, "Internal Server Error")
            }
        }
    }

    /// More of a response whose start is on the wire: the application runs again.
    fn produce_more(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        lane: usize,
    ) -> Step {
        self.in_app(ctx, lane, true, |c| c.produce(py, service))
    }

    /// Pulls the body up to the high-water mark; once it is all produced, `close()`
    /// and the `post_request` hook run (the rest is sending, which needs no Python).
    fn produce(&mut self, py: Python<'_>, service: &Service) -> Step {
        let State::Responding(r) = &mut self.state else {
            unreachable!()
        };
        if let Err(e) = r.source.produce(py, &mut r.http, HIGH_WATER_BYTES) {
            r.source.close(py);
            r.failed = true;
            self.hook_request = None;
            self.log_app_error(&e.to_string());
            return Step::Continue;
        }
        if !r.source.is_done() || !r.source.needs_close() {
            return Step::Continue;
        }
        r.source.close(py);
        if let (Some(h), Some((req, environ))) = (&service.hooks, self.hook_request.take()) {
            let (status, headers) = r.source.head_text(py);
            if let Some(resp) = h.response_or_log(py, &status, headers, r.http.body_bytes()) {
                h.call(
                    py,
                    "post_request",
                    vec![req.into_bound(py), environ.into_bound(py), resp],
                );
            }
        }
        Step::Continue
    }

    fn log_app_error(&self, traceback: &str) {
        crate::log::request_error(&self.head_bytes, &self.head, traceback);
    }

    /// Sends what the response has produced; asks for more (here with the GIL, or
    /// from a pool thread) once the socket has taken it all.
    pub(super) fn step_respond(&mut self, exec: Exec<'_>, ctx: &Shared) -> Step {
        let State::Responding(r) = &mut self.state else {
            unreachable!()
        };
        match r.http.outbox.flush(&mut self.transport) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Waiting for the client, not in the application: the connection's
                // deadline bounds this, not the master's --timeout.
                self.deadline = Instant::now() + ctx.settings.request_timeout;
                return Step::WaitWrite;
            }
            Err(e) => {
                tracing::debug!("client went away mid-response: {e}");
                let status = r.http.status;
                self.end_request(ctx, status, 0);
                return Step::Close;
            }
        }
        if !r.source.is_done() {
            return match exec {
                Exec::Inline(py, service) => self.produce_more(py, service, ctx, 0),
                Exec::Pool => Step::Dispatch,
            };
        }
        if r.failed {
            // The head is on the wire: closing is the only honest signal left.
            let status = r.http.status;
            self.end_request(ctx, status, 0);
            return Step::Close;
        }
        let State::Responding(r) = std::mem::replace(&mut self.state, State::Head) else {
            unreachable!()
        };
        let Responding { mut http, .. } = *r;
        let (status, bytes, close) = (http.status, http.body_bytes(), http.close_after());
        if let Some(head) = http.take_kept_head() {
            self.response_head = head;
        }
        let out = http.outbox.into_buffer();
        if out.capacity() <= KEPT_OUT_BYTES {
            self.spare_out = out;
        }
        let ended = self.end_request(ctx, status, bytes);
        if close {
            return self.shutdown_and_drain();
        }
        self.deadline = ended + ctx.settings.keepalive;
        self.compact();
        self.after_response(ctx)
    }

    /// Counts and logs the request; returns when it ended.
    pub(super) fn end_request(&mut self, ctx: &Shared, status: u16, body_bytes: u64) -> Instant {
        let ended = Instant::now();
        self.served += 1;
        self.in_request = false;
        ctx.scoreboard_end();
        let elapsed = ended.saturating_duration_since(self.request_started);
        ctx.count_response(status, elapsed);
        ctx.log_access(&AccessRecord {
            head_bytes: &self.head_bytes,
            head: &self.head,
            peer: &self.peer,
            status,
            body_bytes,
            elapsed,
            response_headers: &self.response_head,
        });
        self.response_head.clear();
        ended
    }
}
