//! An HTTP/2 stream served by an ASGI application: the stream's request (collected
//! whole by `h2_stream`, as for WSGI) was called through `worker::bridge` with an
//! `H2Response` sink, now inside the request's `Cycle`; each pass of the connection
//! driver sends what the cycle holds within the stream's window and resumes a
//! `send()` suspended on it (`Stream::advance_asgi`). A client reset, or the
//! connection ending, is the application's `http.disconnect` (`Stream::done`), and
//! the request's `post_request` follows (`Stream::post_request_gone`).
//!
//! The application's task runs in the worker's asyncio loop between the event loop's
//! turns, like an HTTP/1 request's, so the streams of one connection run
//! concurrently. Everything here runs on the loop's thread with the GIL; nothing
//! here reads or writes the socket.

use std::task::Context;
use std::time::Instant;

use pyo3::prelude::*;

use super::asgi::APP_WAIT;
use super::h2_stream::{send_within_window, Progress, Stream, StreamEnd};
use crate::asgi::cycle::SEND_HIGH_WATER_BYTES;
use crate::worker::bridge;
use crate::worker::Service;

impl Stream {
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
                bridge::asgi_over(py, service, &mut self.ex, &c, status, body_bytes);
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

    /// The stream ended early (reset, the client gone, the application failed
    /// mid-body): its `post_request`, with what the response was so far.
    pub(super) fn post_request_gone(&mut self, py: Python<'_>, service: &Service) {
        let Some(cycle) = self.gone.take() else {
            return;
        };
        let (status, bytes) = (self.response.status, self.response.body_bytes);
        bridge::asgi_over(py, service, &mut self.ex, &cycle.borrow(py), status, bytes);
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
        matches!(self.progress, Progress::Asgi(_)).then_some(self.ex.started)
    }
}
