//! One HTTP/2 stream's exchange (`conn::h2` drives the connection): its request body
//! as it comes, the application call (`run_stream`, with the GIL: a WSGI one inline
//! or on a pool thread as a `StreamJob`, an ASGI one through `h2_asgi`), its response
//! produced into an `H2Response` and sent within the stream's window
//! (`Exchange::advance`, `send_within_window`). Nothing here reads or writes the
//! socket.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use pyo3::prelude::*;

use super::app::HIGH_WATER_BYTES;
use super::Exec;
use crate::asgi::cycle::Cycle;
use crate::http::body::Body;
use crate::http::framer::ResponseSink;
use crate::http::h2::{request_head, H2Response};
use crate::http::head::RequestHead;
use crate::http::response::RequestFacts;
use crate::http::scheme::is_https;
use crate::worker::body::BodyReader;
use crate::worker::{Application, Service, Shared};
use crate::wsgi::environ::RequestInfo;
use crate::wsgi::response::WsgiSource;

/// Where one stream's exchange is.
pub(super) enum Progress {
    /// Receiving the request body.
    Receiving(RecvStream),
    /// The request is complete: the application has not run yet.
    Ready,
    /// The application's iterable is being pulled.
    Producing(Box<WsgiSource>),
    /// All produced: sending what is left.
    Sending,
    /// An ASGI application runs the stream: its response is framed into the cycle's
    /// `H2Response` and sent from there (`h2_asgi`).
    Asgi(Py<Cycle>),
    /// Over (sent, reset, or the client went away).
    Done,
}

pub(super) struct Exchange {
    pub(super) parts: http::request::Parts,
    /// The request body as it comes (spilled to a file past `SPILL_THRESHOLD_BYTES`),
    /// then `None` once handed to the application.
    pub(super) body: Option<BodyReader>,
    pub(super) progress: Progress,
    pub(super) respond: SendResponse<Bytes>,
    pub(super) send: Option<SendStream<Bytes>>,
    pub(super) response: H2Response,
    pub(super) head_bytes: Vec<u8>,
    pub(super) head: RequestHead,
    pub(super) started: Instant,
    /// When the stream is reset if it has not moved: its body stopped coming, or its
    /// client stopped opening the window (the request deadline).
    pub(super) deadline: Instant,
    /// On the scoreboard as a request in flight.
    pub(super) counted: bool,
    /// `req` and environ kept for a `post_request` hook.
    pub(super) hook_request: Option<(Py<PyAny>, Py<PyAny>)>,
    /// A response source that ended early (reset, client gone), owed its `close()`.
    pub(super) unclosed: Option<Box<WsgiSource>>,
}

/// What a stream's application call needs to know about its connection.
pub(super) struct StreamCtx {
    /// The connection's key (an ASGI cycle wakes it by key).
    pub(super) key: usize,
    pub(super) fd: std::os::fd::RawFd,
    pub(super) peer: crate::net::Peer,
    pub(super) local: Arc<crate::net::Local>,
    pub(super) tls: bool,
    pub(super) client_subject: Option<String>,
}

/// A stream whose application part runs on a pool thread (`--threads N`), so the
/// streams of one connection run concurrently.
pub struct StreamJob {
    pub(super) conn_id: u64,
    pub(super) exchange: Exchange,
    pub(super) facts: StreamCtx,
}

impl StreamJob {
    /// On a pool thread, with the GIL: runs the application or produces more.
    pub fn run(&mut self, py: Python<'_>, service: &Service, ctx: &Shared, lane: usize) {
        run_stream(py, service, ctx, &mut self.exchange, &self.facts, lane);
    }

    /// Its connection is gone: the scoreboard forgets the request.
    pub fn abandon(self, py: Python<'_>, ctx: &Shared) {
        let mut ex = self.exchange;
        if let Progress::Producing(source) = &mut ex.progress {
            source.close(py);
        }
        if ex.counted {
            ctx.scoreboard_end();
        }
    }
}

impl Exchange {
    /// Over: a response source not yet closed is kept for `close()` with the GIL; an
    /// ASGI application still running hears `http.disconnect` (an ASGI worker's loop
    /// thread holds the GIL, so taking it here costs nothing).
    pub(super) fn done(&mut self) {
        match std::mem::replace(&mut self.progress, Progress::Done) {
            Progress::Producing(source) => self.unclosed = Some(source),
            Progress::Asgi(cycle) => Python::with_gil(|py| cycle.borrow_mut(py).client_gone(py)),
            _ => {}
        }
    }

    pub(super) fn needs_python(&self) -> bool {
        match &self.progress {
            Progress::Ready => true,
            Progress::Producing(_) => self.response.buffered() < HIGH_WATER_BYTES,
            _ => false,
        }
    }

    /// Receives body data and sends response data as far as `h2` allows (an ASGI
    /// stream's with the GIL, which `Exec::Inline` has). True when something moved
    /// (which also moves the stream's deadline).
    pub(super) fn advance(
        &mut self,
        cx: &mut Context<'_>,
        exec: Exec<'_>,
        timeout: std::time::Duration,
    ) -> bool {
        let moved = match (&self.progress, exec) {
            (Progress::Asgi(_), Exec::Inline(py, service)) => self.advance_asgi(py, service, cx),
            _ => self.advance_once(cx),
        };
        if moved {
            self.deadline = Instant::now() + timeout;
        }
        moved
    }

    fn advance_once(&mut self, cx: &mut Context<'_>) -> bool {
        let mut moved = false;
        if let Progress::Receiving(recv) = &mut self.progress {
            loop {
                match recv.poll_data(cx) {
                    Poll::Ready(Some(Ok(chunk))) => {
                        // Collected whole, so the window reopens at once.
                        let _ = recv.flow_control().release_capacity(chunk.len());
                        let stored = self.body.as_mut().map(|b| b.feed(&chunk));
                        if let Some(Err(e)) = stored {
                            tracing::error!("{e}");
                            answer_error(self, 500, "Internal Server Error");
                            return true;
                        }
                        moved = true;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!("HTTP/2 stream ended before its body: {e}");
                        self.done();
                        return true;
                    }
                    Poll::Ready(None) => {
                        if let Some(body) = &mut self.body {
                            body.end();
                        }
                        self.progress = Progress::Ready;
                        return true;
                    }
                    Poll::Pending => return moved,
                }
            }
        }
        if matches!(self.progress, Progress::Ready) {
            // Reset by the client before it ran (rapid reset, CVE-2023-44487): the
            // application is never called for it.
            if self.respond.poll_reset(cx).is_ready() {
                self.done();
                return true;
            }
        }
        if matches!(self.progress, Progress::Producing(_) | Progress::Sending) {
            moved |= self.send(cx);
        }
        moved
    }

    /// Sends the head, then body data within the stream's window.
    fn send(&mut self, cx: &mut Context<'_>) -> bool {
        let all_produced = matches!(self.progress, Progress::Sending);
        let sent = send_within_window(
            cx,
            &mut self.respond,
            &mut self.send,
            &mut self.response,
            all_produced,
        );
        if sent.end.is_some() {
            self.done();
        }
        sent.moved
    }
}

/// How a stream's response ended (`Sent::end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamEnd {
    /// All of it sent, the stream ended.
    Complete,
    /// The stream is gone (reset, the connection failing): nothing more can be sent.
    Failed,
}

/// What one `send_within_window` did.
pub(super) struct Sent {
    pub(super) moved: bool,
    pub(super) end: Option<StreamEnd>,
}

/// Sends `response`'s head, then its body bytes as far as the stream's window allows;
/// the stream ends with the last byte once `all_produced`. Shared by the WSGI and
/// the ASGI streams (the ASGI one's `H2Response` lives in its `Cycle`).
pub(super) fn send_within_window(
    cx: &mut Context<'_>,
    respond: &mut SendResponse<Bytes>,
    send: &mut Option<SendStream<Bytes>>,
    response: &mut H2Response,
    all_produced: bool,
) -> Sent {
    let ended = |moved, end| Sent {
        moved,
        end: Some(end),
    };
    let mut moved = false;
    if let Some(head) = response.head.take() {
        let end = all_produced && response.body.is_empty();
        match respond.send_response(head, end) {
            Ok(stream) => *send = Some(stream),
            Err(_) => return ended(true, StreamEnd::Failed),
        }
        if end {
            return ended(true, StreamEnd::Complete);
        }
        moved = true;
    }
    let Some(stream) = send else {
        return Sent { moved, end: None };
    };
    while !response.body.is_empty() {
        stream.reserve_capacity(response.body.len());
        match stream.poll_capacity(cx) {
            Poll::Ready(Some(Ok(n))) if n > 0 => {
                let n = n.min(response.body.len());
                let chunk = Bytes::copy_from_slice(&response.body[..n]);
                response.body.drain(..n);
                let last = all_produced && response.body.is_empty();
                if stream.send_data(chunk, last).is_err() {
                    return ended(true, StreamEnd::Failed);
                }
                moved = true;
                if last {
                    return ended(true, StreamEnd::Complete);
                }
            }
            Poll::Ready(Some(Ok(_))) | Poll::Pending => return Sent { moved, end: None },
            Poll::Ready(Some(Err(_)) | None) => return ended(true, StreamEnd::Failed),
        }
    }
    if all_produced {
        let _ = stream.send_data(Bytes::new(), true);
        return ended(true, StreamEnd::Complete);
    }
    Sent { moved, end: None }
}

/// With the GIL: runs a ready stream's WSGI application, or produces more of its
/// response.
pub(super) fn run_stream(
    py: Python<'_>,
    service: &Service,
    ctx: &Shared,
    ex: &mut Exchange,
    facts: &StreamCtx,
    lane: usize,
) {
    let what = ex.head.method.start..ex.head.target.end;
    let what = ex.head_bytes.get(what).unwrap_or_default().to_vec();
    ctx.lanes
        .enter(lane, facts.fd, true, ex.started, &what, &facts.peer.addr);
    if matches!(ex.progress, Progress::Ready) {
        call_stream_app(py, service, ctx, ex, facts);
    }
    produce(py, service, ex);
    ctx.lanes.leave(lane);
}

fn call_stream_app(
    py: Python<'_>,
    service: &Service,
    ctx: &Shared,
    ex: &mut Exchange,
    facts: &StreamCtx,
) {
    let Application::Wsgi(app) = &service.app else {
        return answer_error(ex, 500, "Internal Server Error");
    };
    let Some((https, body)) = stream_request(ctx, ex, facts) else {
        return;
    };
    let remote = (
        pyo3::types::PyString::new(py, &facts.peer.addr).unbind(),
        pyo3::types::PyString::new(py, &facts.peer.port).unbind(),
    );
    let info = RequestInfo {
        remote: &remote,
        head_bytes: &ex.head_bytes,
        head: &ex.head,
        peer: &facts.peer,
        local: &facts.local,
        https,
        client_subject: facts.client_subject.as_deref(),
        forwarder_headers: &ctx.settings.forwarder_headers,
    };
    let is_head = ex.head.is_head_method(&ex.head_bytes);
    let request = RequestFacts {
        minor_version: 1,
        is_head,
        close: false,
        known_length: None,
    };
    ex.response = H2Response::new(is_head);
    if ctx.keep_response_heads {
        ex.response.keep_head();
    }
    // Gunicorn's order: pre_request before the application, post_request once its
    // response is all produced (`produce`).
    let hook_req = service
        .hooks
        .as_ref()
        .and_then(|h| h.begin_request(py, &ex.head_bytes, &ex.head, &facts.peer.addr));
    let started = app
        .call(py, &info, body)
        .map_err(|e| crate::python::format_exception(py, &e));
    if let (Ok(response), Some(h), Some(req)) = (&started, &service.hooks, hook_req) {
        if h.post_request {
            ex.hook_request = Some((req.unbind(), response.environ.clone_ref(py).into_any()));
        }
    }
    let source = started.and_then(|response| {
        WsgiSource::start(py, app, response, request, &mut ex.response).map_err(|e| e.to_string())
    });
    match source {
        Ok(source) => ex.progress = Progress::Producing(Box::new(source)),
        Err(detail) => {
            crate::log::request_error(&ex.head_bytes, &ex.head, &detail);
            answer_error(ex, 500, "Internal Server Error");
        }
    }
}

/// Pulls the stream's response up to the high-water mark; closes the iterable at its
/// end. An application that fails mid-body gets the stream reset (the head is sent).
fn produce(py: Python<'_>, service: &Service, ex: &mut Exchange) {
    let Progress::Producing(source) = &mut ex.progress else {
        return;
    };
    if let Err(e) = source.produce(py, &mut ex.response, HIGH_WATER_BYTES) {
        source.close(py);
        crate::log::request_error(&ex.head_bytes, &ex.head, &e.to_string());
        if let Some(stream) = &mut ex.send {
            stream.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        ex.hook_request = None;
        ex.progress = Progress::Done;
        return;
    }
    if source.is_done() {
        source.close(py);
        if let (Some(h), Some((req, environ))) = (&service.hooks, ex.hook_request.take()) {
            let (status, headers) = source.head_text(py);
            if let Some(resp) = h.response_or_log(py, &status, headers, ex.response.body_bytes) {
                h.call(
                    py,
                    "post_request",
                    vec![req.into_bound(py), environ.into_bound(py), resp],
                );
            }
        }
        ex.progress = Progress::Sending;
    }
}

/// A ready stream's request for its application, WSGI or ASGI: on the scoreboard,
/// its HTTP/1 head made and parsed (`ex.head`), whether it came over HTTPS, and its
/// body. `None` when it was refused (the stream then answers 400, or 500).
pub(super) fn stream_request(
    ctx: &Shared,
    ex: &mut Exchange,
    facts: &StreamCtx,
) -> Option<(bool, Body)> {
    ctx.scoreboard_begin();
    ex.counted = true;
    let received = ex.body.as_ref().map_or(0, BodyReader::received);
    if let Err(e) = request_head(
        &ex.parts,
        received,
        &ctx.settings.limits,
        &mut ex.head_bytes,
        &mut ex.head,
    ) {
        tracing::debug!("HTTP/2 request refused: {e}");
        answer_error(ex, 400, "Bad Request");
        return None;
    }
    let https = facts.tls
        || is_https(
            &ex.head_bytes,
            &ex.head,
            facts.peer.trusted,
            &ctx.settings.secure_scheme_headers,
        )
        .unwrap_or(false);
    let body = match ex.body.take().map(BodyReader::finish) {
        _ if received == 0 => Body::Empty,
        Some(Ok(body)) => body,
        Some(Err(e)) => {
            tracing::error!("{e}");
            answer_error(ex, 500, "Internal Server Error");
            return None;
        }
        None => Body::Empty,
    };
    Some((https, body))
}

/// A server-made response: `code` with its reason as a short text body.
pub(super) fn answer_error(ex: &mut Exchange, code: u16, reason: &str) {
    let facts = RequestFacts {
        minor_version: 1,
        is_head: false,
        close: false,
        known_length: None,
    };
    let status = format!("{code} {reason}");
    let headers: [(&[u8], &[u8]); 1] = [(b"content-type", b"text/plain")];
    ex.response = H2Response::new(false);
    let _ = ex.response.head(&status, headers.into_iter(), facts);
    ex.response.data(reason.as_bytes());
    ex.response.end();
    ex.progress = Progress::Sending;
}
