//! An HTTP/2 stream served by an ASGI application: the stream's request (collected
//! whole by `h2_stream`, as for WSGI) becomes an `http` scope and a `Cycle` whose
//! `send()` frames into an `H2Response` (`call_stream_asgi`); each pass of the
//! connection driver then sends what the cycle holds within the stream's window and
//! resumes a `send()` suspended on it (`Exchange::advance_asgi`). A client reset, or
//! the connection ending, is the application's `http.disconnect`
//! (`Exchange::done`).
//!
//! The application's task runs in the worker's asyncio loop between the event loop's
//! turns, like an HTTP/1 request's, so the streams of one connection run
//! concurrently. Everything here runs on the loop's thread with the GIL; nothing
//! here reads or writes the socket.

use std::task::Context;
use std::time::Instant;

use pyo3::prelude::*;

use super::asgi::APP_WAIT;
use super::h2_stream::{
    answer_error, send_within_window, stream_request, Exchange, Progress, StreamCtx, StreamEnd,
};
use crate::asgi::cycle::SEND_HIGH_WATER_BYTES;
use crate::asgi::scope::ScopeInfo;
use crate::asgi::sink::Sink;
use crate::asgi::AsgiApp;
use crate::http::h2::H2Response;
use crate::http::response::RequestFacts;
use crate::worker::{Service, Shared};

/// Calls the ASGI application for a ready stream: its task starts (and with eager
/// tasks may finish) here; the response is sent by later passes.
pub(super) fn call_stream_asgi(
    py: Python<'_>,
    app: &AsgiApp,
    service: &Service,
    ctx: &Shared,
    ex: &mut Exchange,
    facts: &StreamCtx,
) {
    let Some((https, body)) = stream_request(ctx, ex, facts) else {
        return;
    };
    let info = ScopeInfo {
        head_bytes: &ex.head_bytes,
        head: &ex.head,
        peer: &facts.peer,
        local: &facts.local,
        https,
        forwarder_headers: &ctx.settings.forwarder_headers,
    };
    let is_head = ex.head.is_head_method(&ex.head_bytes);
    let request = RequestFacts {
        minor_version: 1,
        is_head,
        close: false,
        known_length: None,
    };
    // Gunicorn's ASGI order, as over HTTP/1: pre_request before the application,
    // post_request once the response is complete (`advance_asgi`).
    let hook_req = service
        .hooks
        .as_ref()
        .and_then(|h| h.begin_request(py, &ex.head_bytes, &ex.head, &facts.peer.addr));
    // `rgunctl status` shows the oldest request's age (the sweep keeps it so).
    let slot = &ctx.slot;
    if slot
        .request_started_ms
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        slot.request_begin();
    }
    let mut response = H2Response::new(is_head);
    if ctx.keep_response_heads {
        response.keep_head();
    }
    let sink = Sink::Http2(response);
    match app.call(py, &info, body, sink, request, facts.key) {
        Ok((cycle, scope)) => {
            let wanted = service.hooks.as_ref().is_some_and(|h| h.post_request);
            ex.hook_request = hook_req
                .filter(|_| wanted)
                .map(|req| (req.unbind(), scope.into_any().unbind()));
            ex.progress = Progress::Asgi(cycle);
        }
        Err(e) => {
            let traceback = crate::python::format_exception(py, &e);
            crate::log::request_error(&ex.head_bytes, &ex.head, &traceback);
            answer_error(ex, 500, "Internal Server Error");
        }
    }
}

impl Exchange {
    /// An ASGI stream's pass: a client reset becomes `http.disconnect`; what the
    /// application framed is sent within the window, and a `send()` waiting for room
    /// resumes once less than `SEND_HIGH_WATER_BYTES` wait. True when something moved.
    pub(super) fn advance_asgi(
        &mut self,
        py: Python<'_>,
        service: &Service,
        cx: &mut Context<'_>,
    ) -> bool {
        let Progress::Asgi(cycle) = &self.progress else {
            return false;
        };
        let cycle = cycle.clone_ref(py);
        let reset = match &mut self.send {
            Some(stream) => stream.poll_reset(cx).is_ready(),
            None => self.respond.poll_reset(cx).is_ready(),
        };
        if reset {
            tracing::debug!("HTTP/2 stream reset by the client while its application ran");
            self.done();
            return true;
        }
        let mut c = cycle.borrow_mut(py);
        let complete = c.is_complete();
        if !complete && c.progress() == crate::asgi::cycle::Progress::Broken {
            // The application ended (or failed) mid-body: only a reset can say so,
            // after what it did send and the window lets out (the connection writes
            // those frames before the next pass resets the stream).
            let response = c.stream().expect("an HTTP/2 stream's cycle");
            let sent = send_within_window(cx, &mut self.respond, &mut self.send, response, false);
            drop(c);
            match sent.end {
                Some(_) => self.done(),
                None if sent.moved => {}
                None => self.reset(h2::Reason::INTERNAL_ERROR),
            }
            return true;
        }
        let response = c.stream().expect("an HTTP/2 stream's cycle");
        let sent = send_within_window(cx, &mut self.respond, &mut self.send, response, complete);
        let waiting = response.body.len();
        let (status, body_bytes) = (response.status, response.body_bytes);
        if waiting < SEND_HIGH_WATER_BYTES {
            c.drained(py);
        }
        match sent.end {
            Some(StreamEnd::Complete) => {
                self.response.status = status;
                self.response.body_bytes = body_bytes;
                self.response.kept_head = c.stream().and_then(|r| r.kept_head.take());
                c.detach(py);
                if let (Some(h), Some((req, scope))) = (&service.hooks, self.hook_request.take()) {
                    let line = format!("{status} {}", crate::http::response::reason_phrase(status));
                    if let Some(resp) =
                        h.response_or_log(py, &line, c.response_headers(), body_bytes)
                    {
                        h.call(
                            py,
                            "post_request",
                            vec![req.into_bound(py), scope.into_bound(py), resp],
                        );
                    }
                }
                drop(c);
                self.progress = Progress::Done;
            }
            Some(StreamEnd::Failed) => {
                self.response.status = status;
                self.response.body_bytes = body_bytes;
                drop(c);
                self.done();
            }
            None => {
                self.response.status = status;
                self.response.body_bytes = body_bytes;
                let head_waits = c.stream().is_some_and(|r| r.head.is_some());
                if !sent.moved && waiting == 0 && !head_waits {
                    // The application runs and nothing waits for the client's window:
                    // no deadline but the long one (a long-poll is legitimate, as
                    // over HTTP/1).
                    self.deadline = Instant::now() + APP_WAIT;
                }
            }
        }
        sent.moved || sent.end.is_some()
    }

    /// Resets the stream and ends the exchange (the application hears a disconnect).
    fn reset(&mut self, reason: h2::Reason) {
        match &mut self.send {
            Some(stream) => stream.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
        self.done();
    }

    /// The connection waits: the application's next `send()` (or its end) wakes it.
    pub(super) fn arm(&self, py: Python<'_>) {
        if let Progress::Asgi(cycle) = &self.progress {
            cycle.borrow_mut(py).arm();
        }
    }

    /// When the ASGI application running this stream was called (`rgunctl status`).
    pub(super) fn asgi_started(&self) -> Option<Instant> {
        matches!(self.progress, Progress::Asgi(_)).then_some(self.started)
    }
}
