//! The application side of an HTTP/1 connection: a complete request's `Exchange`
//! begins and its application is called through `worker::bridge` with an
//! `Http1Response` as the sink (`run_request`); a WSGI response is produced into it
//! and sent, and once the socket has taken it all the exchange finishes (the access
//! log, the scoreboard). An ASGI response is sent by `conn::asgi`.
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
use crate::net::outbox::Outbox;
use crate::worker::bridge::{self, Origin, Produced, Running};
use crate::worker::{Service, Shared};
use crate::wsgi::response::WsgiSource;

/// A response on its way: where its body comes from and how it goes on the wire.
pub(super) struct Responding {
    source: WsgiSource,
    http: Http1Response,
    /// The application raised mid-body: what it produced goes out, then the
    /// connection closes, since the body cannot end properly.
    failed: bool,
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
            Some(body) => self.run_request(py, service, ctx, body, lane),
            None if matches!(self.state, State::Responding(_)) => {
                self.produce_more(py, service, ctx, lane)
            }
            None => Step::Continue,
        };
        !matches!(step, Step::Close)
    }

    /// A response source whose `close()` is still owed, taken out of a connection
    /// that is being closed, so that it can be closed where the GIL is.
    pub fn take_unfinished(&mut self) -> Option<WsgiSource> {
        match std::mem::replace(&mut self.state, State::Draining) {
            State::Responding(r) if r.source.needs_close() => Some(r.source),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// A complete request, here or on a pool thread (`lane`): its exchange begins,
    /// the application is called through the bridge, and a WSGI response's first
    /// part is produced. An ASGI WebSocket upgrade goes its own way (`conn::asgi`).
    pub(super) fn run_request(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        body: Body,
        lane: usize,
    ) -> Step {
        // On record in the lane before it counts in flight: whoever sees it in
        // flight (`rgunctl stack`) finds the thread serving it.
        if bridge::holds_thread(service) {
            self.in_app(ctx, lane, false, |c| {
                c.begin_and_call(py, service, ctx, body)
            })
        } else {
            self.begin_and_call(py, service, ctx, body)
        }
    }

    fn begin_and_call(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        body: Body,
    ) -> Step {
        let facts = match self.begin_request(ctx) {
            Ok(facts) => facts,
            Err(refused) => return refused,
        };
        if let Some(step) = self.try_websocket(py, service, ctx, facts) {
            return step;
        }
        self.call(py, service, ctx, body, facts)
    }

    /// The exchange's `begin` (the scheme decision and the forwarded SCRIPT_NAME:
    /// a refusal is the `Err` step; counted in flight) and the facts that shape the
    /// response head.
    fn begin_request(&mut self, ctx: &Shared) -> Result<RequestFacts, Step> {
        let tls = self.transport.is_tls();
        if let Err(e) = self.ex.begin(ctx, &self.peer, tls) {
            return Err(self.fail(&e));
        }
        Ok(RequestFacts {
            // A uwsgi response is framed as HTTP/1.0's: never chunked (nginx would
            // pass the chunks on as body), closing when it has no length.
            minor_version: if self.ex.head.uwsgi {
                0
            } else {
                self.ex.head.minor_version
            },
            is_head: self.ex.head.is_head_method(&self.ex.head_bytes),
            close: self.ex.head.wants_close
                || ctx.closing()
                || ctx.last_request()
                || ctx.settings.keepalive.is_zero(),
            known_length: None,
        })
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
        let what = self.ex.head.method.start..self.ex.head.target.end;
        let (fd, since) = (self.fd(), self.ex.started);
        ctx.lanes.enter(
            lane,
            fd,
            // The watcher thread cannot speak TLS: for it, a TLS client gets a close.
            on_wire || self.transport.is_tls(),
            since,
            &self.ex.head_bytes[what],
            &self.peer.addr,
        );
        let step = f(self);
        ctx.lanes.leave(lane);
        step
    }

    /// The bridge's call with this connection's response sink.
    fn call(
        &mut self,
        py: Python<'_>,
        service: &Service,
        ctx: &Shared,
        body: Body,
        facts: RequestFacts,
    ) -> Step {
        let origin = Origin {
            key: self.key,
            peer: &self.peer,
            local: &self.local,
            client_subject: self.transport.peer_subject(),
            peer_objects: &mut self.peer_objects,
        };
        let outbox = Outbox::with_buffer(std::mem::take(&mut self.spare_out));
        let mut http = Http1Response::new(outbox, &facts);
        match bridge::call(
            py,
            service,
            ctx,
            &mut self.ex,
            origin,
            body,
            &mut http,
            facts,
        ) {
            Some(Running::Wsgi(source)) => {
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
            Some(Running::Asgi(cycle)) => {
                self.state = State::Asgi(cycle);
                Step::Continue
            }
            None => {
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

    /// Pulls the body up to the high-water mark (`bridge::produce`: at its end
    /// `close()` and `post_request`; the rest is sending, which needs no Python).
    fn produce(&mut self, py: Python<'_>, service: &Service) -> Step {
        let State::Responding(r) = &mut self.state else {
            return Step::Continue;
        };
        let produced = bridge::produce(py, service, &mut self.ex, &mut r.source, &mut r.http);
        r.failed |= produced == Produced::Failed;
        Step::Continue
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
        let State::Responding(mut r) = std::mem::replace(&mut self.state, State::Head) else {
            unreachable!()
        };
        let (status, bytes, close) = self.take_back(&mut r.http);
        let ended = self.end_request(ctx, status, bytes);
        self.next_request(ctx, ended, close)
    }

    /// A sent response taken back from its WSGI or ASGI source: its output buffer
    /// kept for the next response (when small), its head for the access log. Returns
    /// its status, body bytes and whether the connection closes after it.
    #[inline]
    pub(super) fn take_back(&mut self, http: &mut Http1Response) -> (u16, u64, bool) {
        let (status, bytes, close) = (http.status, http.body_bytes(), http.close_after());
        if let Some(head) = http.take_kept_head() {
            self.ex.response_head = head;
        }
        let out = http.outbox.take_buffer();
        if out.capacity() <= KEPT_OUT_BYTES {
            self.spare_out = out;
        }
        (status, bytes, close)
    }

    /// After a finished exchange: close, or keep alive for the next request.
    #[inline]
    pub(super) fn next_request(&mut self, ctx: &Shared, ended: Instant, close: bool) -> Step {
        if close {
            return self.shutdown_and_drain();
        }
        self.deadline = ended + ctx.settings.keepalive;
        self.compact();
        self.after_response(ctx)
    }

    /// The exchange's `finish` (counted, logged); returns when it ended.
    #[inline]
    pub(super) fn end_request(&mut self, ctx: &Shared, status: u16, body_bytes: u64) -> Instant {
        self.served += 1;
        self.in_request = false;
        self.ex.finish(ctx, &self.peer, status, body_bytes)
    }
}
