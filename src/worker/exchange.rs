//! `Exchange`: one request in flight, whatever carried it (an HTTP/1 connection's
//! request, an HTTP/2 stream) and whichever bridge runs it (WSGI, ASGI): its head,
//! when it started, the scheme decision, whether it is counted in flight, and the
//! `req` Gunicorn's `post_request` hook will be given. Its life is written once here
//! and every driver calls it: `begin` (the scheme decision — disagreeing
//! secure-scheme headers are the same 400 whatever the protocol — then counted in
//! flight), the application call through `worker::bridge`, `post_request` once the
//! response is over (sent, or cut short because the application raised or the client
//! left), `finish` (the counters, the access log, the scoreboard) and `fail` (the
//! application's error line).
//!
//! Knows no HTTP version and no socket: the drivers hand it the peer and how the
//! response ended.

use std::time::Instant;

use pyo3::prelude::*;

use super::{Service, Shared};
use crate::http::head::RequestHead;
use crate::http::scheme::is_https;
use crate::http::HttpError;
use crate::log::AccessRecord;
use crate::net::Peer;

/// `req` (from `pre_request`) and the environ or scope the application saw, kept for
/// the `post_request` hook.
type HookRequest = (Py<PyAny>, Py<PyAny>);

/// One request between its first byte and the end of its response.
pub(super) struct Exchange {
    /// The request head as received (HTTP/1), or made from a stream's
    /// (`http::h2::request_head`).
    pub(super) head_bytes: Vec<u8>,
    pub(super) head: RequestHead,
    /// When its first byte came.
    pub(super) started: Instant,
    /// It came over HTTPS (decided by `begin`).
    pub(super) https: bool,
    /// On the scoreboard as a request in flight (from `begin`, or `count`, to
    /// `finish` or `forget`).
    counted: bool,
    /// Kept for a `post_request` hook once the application was called.
    hook_request: Option<HookRequest>,
    /// The response's header lines when `Shared::keep_response_heads`, for the
    /// access log's `%({name}o)s`.
    pub(super) response_head: Vec<u8>,
}

impl Exchange {
    pub(super) fn new(started: Instant) -> Exchange {
        Exchange {
            head_bytes: Vec::new(),
            head: RequestHead::default(),
            started,
            https: false,
            counted: false,
            hook_request: None,
            response_head: Vec::new(),
        }
    }

    /// The start of the application part: whether the request came over HTTPS (`tls`:
    /// our own; or a trusted proxy's word — disagreeing headers are the `Err`, a 400
    /// for every protocol), a path outside the SCRIPT_NAME a trusted front end
    /// forwarded (the `Err`, a 500, as Gunicorn's ConfigurationProblem), then counted
    /// in flight.
    pub(super) fn begin(&mut self, ctx: &Shared, peer: &Peer, tls: bool) -> Result<(), HttpError> {
        self.https = is_https(
            &self.head_bytes,
            &self.head,
            peer.trusted,
            &ctx.settings.secure_scheme_headers,
        )? || tls;
        if peer.trusted && !self.head.underscored.is_empty() {
            let forwarder = &ctx.settings.forwarder_headers;
            if forwarder.script_name(&self.head_bytes, &self.head).is_err() {
                tracing::warn!("request path outside the SCRIPT_NAME its front end forwarded");
                return Err(HttpError::OutsideScriptName);
            }
        }
        self.count(ctx);
        Ok(())
    }

    /// Counted in flight (and so logged by `finish`) without `begin`: an HTTP/2 stream
    /// whose head is refused is answered and logged like a served one.
    #[inline]
    pub(super) fn count(&mut self, ctx: &Shared) {
        if !self.counted {
            ctx.scoreboard_begin();
            self.counted = true;
        }
    }

    pub(super) fn is_counted(&self) -> bool {
        self.counted
    }

    /// Gunicorn's `pre_request`, before the application; its `req` for `post_request`.
    #[inline]
    pub(super) fn pre_request<'py>(
        &self,
        py: Python<'py>,
        service: &Service,
        peer: &Peer,
    ) -> Option<Bound<'py, PyAny>> {
        service
            .hooks
            .as_ref()
            .and_then(|h| h.begin_request(py, &self.head_bytes, &self.head, &peer.addr))
    }

    /// Keeps what `post_request` will need, when there is such a hook: `req` and the
    /// environ (WSGI) or scope (ASGI) the application was called with.
    #[inline]
    pub(super) fn keep_for_post_request(
        &mut self,
        service: &Service,
        req: Option<Bound<'_, PyAny>>,
        environ: &Bound<'_, PyAny>,
    ) {
        let wanted = service.hooks.as_ref().is_some_and(|h| h.post_request);
        self.hook_request = req
            .filter(|_| wanted)
            .map(|req| (req.unbind(), environ.clone().unbind()));
    }

    /// Gunicorn's `post_request` once the response is over (sent, or cut short), at
    /// most once: `response` gives the status line and the headers (asked only when
    /// the hook waits), `body_bytes` what was produced.
    #[inline]
    pub(super) fn post_request(
        &mut self,
        py: Python<'_>,
        service: &Service,
        response: impl FnOnce() -> (String, Vec<(String, String)>),
        body_bytes: u64,
    ) {
        let (Some(h), Some((req, environ))) = (&service.hooks, self.hook_request.take()) else {
            return;
        };
        let (status, headers) = response();
        if let Some(resp) = h.response_or_log(py, &status, headers, body_bytes) {
            h.call(
                py,
                "post_request",
                vec![req.into_bound(py), environ.into_bound(py), resp],
            );
        }
    }

    /// The end of a request counted in flight: the counters (scoreboard tally,
    /// statsd), the access log and the scoreboard, once. Returns when it ended.
    pub(super) fn finish(
        &mut self,
        ctx: &Shared,
        peer: &Peer,
        status: u16,
        body_bytes: u64,
    ) -> Instant {
        let ended = Instant::now();
        if !std::mem::take(&mut self.counted) {
            return ended;
        }
        ctx.scoreboard_end();
        let elapsed = ended.saturating_duration_since(self.started);
        ctx.count_response(status, elapsed);
        ctx.log_access(&AccessRecord {
            head_bytes: &self.head_bytes,
            head: &self.head,
            peer,
            status,
            body_bytes,
            elapsed,
            response_headers: &self.response_head,
        });
        self.response_head.clear();
        ended
    }

    /// The request is dropped unanswered (its connection went away): the scoreboard
    /// forgets it, nothing is logged.
    #[inline]
    pub(super) fn forget(&mut self, ctx: &Shared) {
        if std::mem::take(&mut self.counted) {
            ctx.scoreboard_end();
        }
    }

    /// The application raised (in the call, or producing its body): Gunicorn's error
    /// line with the traceback. No `post_request` follows. The driver answers 500 if
    /// the head is not out yet, else cuts the response.
    pub(super) fn fail(&mut self, traceback: &str) {
        self.hook_request = None;
        crate::log::request_error(&self.head_bytes, &self.head, traceback);
    }
}

/// An HTTP status line for a code (ASGI gives only the code).
pub(super) fn status_line(status: u16) -> String {
    crate::http::response::StatusLine::new(status)
        .as_str()
        .to_owned()
}
