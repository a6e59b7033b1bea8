//! Calling the application with a complete request and sending its response: the
//! environ and `wsgi.input` in, `Responding` pumped as the socket drains, the access
//! log and the scoreboard when the response is done. On a `--threads` pool thread the
//! same steps run with the GIL released while the socket is full.

use std::os::fd::RawFd;
use std::time::Instant;

use pyo3::prelude::*;

use super::{Conn, State, Step, KEPT_OUT_BYTES};
use crate::http::response::RequestFacts;
use crate::log::AccessRecord;
use crate::worker::respond::{close_result, Pump, RespondError, Responding};
use crate::worker::Shared;
use crate::wsgi::environ::{is_https, RequestInfo};
use crate::wsgi::input::Body;

impl Conn {
    /// On a pool thread: runs the dispatched request and sends its response, waiting
    /// for the socket with the GIL released. Returns false to close the connection.
    pub fn serve_dispatched(&mut self, py: Python<'_>, ctx: &Shared) -> bool {
        let body = self.pending_body.take().unwrap_or_default();
        if let Step::Close = self.run_app(py, ctx, body) {
            return false;
        }
        loop {
            if !matches!(self.state, State::Responding(_)) {
                return true;
            }
            match self.step_respond(py, ctx) {
                // Finished (the state is Head again) or more to send.
                Step::Continue | Step::Wait | Step::Yield => {}
                Step::Close => return false,
                Step::WaitWrite | Step::Dispatch => {
                    let fd = self.fd();
                    let timeout_ms = ctx.settings.request_timeout.as_millis() as i32;
                    if !py.allow_threads(|| wait_writable(fd, timeout_ms)) {
                        tracing::debug!("client {} stopped reading; closing", self.peer.addr);
                        return false;
                    }
                }
            }
        }
    }

    pub(super) fn run_app(&mut self, py: Python<'_>, ctx: &Shared, body: Body) -> Step {
        let https = match is_https(
            &self.head_bytes,
            &self.head,
            self.peer.trusted,
            &ctx.settings.secure_scheme_headers,
        ) {
            Ok(h) => h,
            Err(e) => return self.fail(&e),
        };
        ctx.scoreboard_begin();
        let facts = RequestFacts {
            minor_version: self.head.minor_version,
            is_head: self.head.is_head_method(&self.head_bytes),
            close: self.head.wants_close
                || ctx.stopping()
                || ctx.last_request()
                || ctx.settings.keepalive.is_zero(),
            known_length: None,
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
        };
        let hook_req = match &ctx.hooks {
            Some(h) if h.pre_request || h.post_request => {
                h.request_or_log(py, &self.head_bytes, &self.head, &self.peer.addr)
            }
            _ => None,
        };
        if let (Some(h), Some(req)) = (&ctx.hooks, &hook_req) {
            if h.pre_request {
                h.call(py, "pre_request", vec![req.clone()]);
            }
        }
        let response = match ctx.app.call(py, &info, body) {
            Ok(r) => r,
            Err(e) => {
                self.log_app_error(&crate::python::format_exception(py, &e));
                self.end_request(ctx, 500, 0);
                return self.fail_status(500, "Internal Server Error");
            }
        };
        if let (Some(h), Some(req)) = (&ctx.hooks, hook_req) {
            if h.post_request {
                self.hook_request = Some((req.unbind(), response.environ.clone_ref(py).into_any()));
            }
        }
        let out = std::mem::take(&mut self.spare_out);
        match Responding::start(py, &ctx.app, response, facts, out) {
            Ok(r) => {
                self.state = State::Responding(Box::new(r));
                self.deadline = Instant::now() + ctx.settings.request_timeout;
                Step::Continue
            }
            Err((e, result)) => {
                close_result(py, result);
                self.log_app_error(&e.to_string());
                self.end_request(ctx, 500, 0);
                self.fail_status(500, "Internal Server Error")
            }
        }
    }

    fn log_app_error(&self, detail: &str) {
        let path = String::from_utf8_lossy(&self.head_bytes[self.head.target.clone()]);
        tracing::error!("Error handling request {path}\n{detail}");
    }

    pub(super) fn step_respond(&mut self, py: Python<'_>, ctx: &Shared) -> Step {
        let fd = self.fd();
        let State::Responding(r) = &mut self.state else {
            unreachable!()
        };
        match r.pump(py, fd) {
            Ok(Pump::Blocked) => {
                // Waiting for the client, not stuck in the application: the master's
                // --timeout must not count this (the connection deadline does).
                ctx.slot.request_begin();
                self.deadline = Instant::now() + ctx.settings.request_timeout;
                Step::WaitWrite
            }
            Ok(Pump::Finished) => {
                r.close(py);
                if let (Some(h), Some((req, environ))) = (&ctx.hooks, self.hook_request.take()) {
                    let (status, headers) = r.head_text(py);
                    if let Some(resp) = h.response_or_log(py, &status, headers, r.body_bytes) {
                        h.call(
                            py,
                            "post_request",
                            vec![req.into_bound(py), environ.into_bound(py), resp],
                        );
                    }
                }
                let (status, bytes, close) = (r.status, r.body_bytes, r.close_after);
                if r.out.capacity() <= KEPT_OUT_BYTES {
                    r.out.clear();
                    self.spare_out = std::mem::take(&mut r.out);
                }
                self.end_request(ctx, status, bytes);
                if close {
                    return self.shutdown_and_drain();
                }
                self.state = State::Head;
                self.deadline = Instant::now() + ctx.settings.keepalive;
                self.compact();
                self.after_response(ctx)
            }
            Err(e) => {
                r.close(py);
                let status = r.status;
                match e {
                    RespondError::Io(_) => tracing::debug!("client went away mid-response: {e}"),
                    other => self.log_app_error(&other.to_string()),
                }
                // The head may be on the wire: closing is the only honest signal left.
                self.end_request(ctx, status, 0);
                Step::Close
            }
        }
    }

    fn end_request(&mut self, ctx: &Shared, status: u16, body_bytes: u64) {
        self.served += 1;
        self.in_request = false;
        ctx.scoreboard_end();
        ctx.log_access(&AccessRecord {
            head_bytes: &self.head_bytes,
            head: &self.head,
            peer: &self.peer,
            status,
            body_bytes,
            elapsed: self.request_started.elapsed(),
        });
    }
}

/// poll(2) for writability; false on time-out or error.
fn wait_writable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) == 0
}
