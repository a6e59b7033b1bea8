//! One HTTP/2 stream (`conn::h2` drives the connection): its request body as it
//! comes, then its `Exchange` begun and the application called through
//! `worker::bridge` (`run_stream`, with the GIL: inline, or on a pool thread as a
//! `StreamJob`), its response produced into an `H2Response` (a WSGI iterable here, an
//! ASGI cycle's `send()`s through `h2_asgi`) and sent within the stream's window
//! (`Stream::advance`, `send_within_window`). Nothing here reads or writes the
//! socket.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use pyo3::prelude::*;

use super::Exec;
use crate::asgi::cycle::Cycle;
use crate::http::body::Body;
use crate::http::framer::ResponseSink;
use crate::http::h2::{request_head, H2Response};
use crate::http::response::RequestFacts;
use crate::worker::body::BodyReader;
use crate::worker::bridge::{self, Origin, PeerObjects, Produced, Running, HIGH_WATER_BYTES};
use crate::worker::exchange::Exchange;
use crate::worker::{Service, Shared};
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

/// One stream: its part of the HTTP/2 connection beside the request's `Exchange`.
pub(super) struct Stream {
    /// The request in flight: its head (made from `parts`), start, scheme, hooks.
    pub(super) ex: Exchange,
    pub(super) parts: http::request::Parts,
    /// The request body as it comes (spilled to a file past `SPILL_THRESHOLD_BYTES`),
    /// then `None` once handed to the application.
    pub(super) body: Option<BodyReader>,
    pub(super) progress: Progress,
    pub(super) respond: SendResponse<Bytes>,
    pub(super) send: Option<SendStream<Bytes>>,
    pub(super) response: H2Response,
    /// When the stream is reset if it has not moved: its body stopped coming, or its
    /// client stopped opening the window (the request deadline).
    pub(super) deadline: Instant,
    /// A response source that ended early (reset, client gone), owed its `close()`.
    pub(super) unclosed: Option<Box<WsgiSource>>,
    /// An ASGI application whose stream ended early (reset, client gone, the
    /// application failed mid-body), owed its `post_request` (`post_request_gone`).
    pub(super) gone: Option<Py<Cycle>>,
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
    pub(super) stream: Stream,
    pub(super) facts: StreamCtx,
}

impl StreamJob {
    /// On a pool thread, with the GIL: runs the application or produces more.
    pub fn run(&mut self, py: Python<'_>, service: &Service, ctx: &Shared, lane: usize) {
        run_stream(py, service, ctx, &mut self.stream, &self.facts, lane);
    }

    /// Its connection is gone: the scoreboard forgets the request. Returns a
    /// response source owed its `close()`.
    pub fn abandon(self, ctx: &Shared) -> Option<WsgiSource> {
        let mut st = self.stream;
        st.ex.forget(ctx);
        match st.progress {
            Progress::Producing(source) => Some(*source),
            _ => None,
        }
    }
}

impl Stream {
    /// A stream `h2` accepted, its body still to come.
    pub(super) fn new(
        parts: http::request::Parts,
        recv: RecvStream,
        respond: SendResponse<Bytes>,
        deadline: Instant,
    ) -> Stream {
        Stream {
            ex: Exchange::new(Instant::now()),
            parts,
            body: Some(BodyReader::framed()),
            progress: Progress::Receiving(recv),
            respond,
            send: None,
            response: H2Response::default(),
            deadline,
            unclosed: None,
            gone: None,
        }
    }

    /// Over: a response source not yet closed is kept for `close()` with the GIL; an
    /// ASGI application still running hears `http.disconnect` (an ASGI worker's loop
    /// thread holds the GIL, so taking it here costs nothing).
    pub(super) fn done(&mut self) {
        match std::mem::replace(&mut self.progress, Progress::Done) {
            Progress::Producing(source) => self.unclosed = Some(source),
            Progress::Asgi(cycle) => {
                Python::with_gil(|py| cycle.borrow_mut(py).client_gone(py));
                self.gone = Some(cycle);
            }
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
                        // On to the reset check: a client's RST_STREAM read with the
                        // end of its request still keeps it from the application.
                        moved = true;
                        break;
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

/// With the GIL: calls a ready stream's application, or produces more of its WSGI
/// response (on record in `lane` while a WSGI call holds the thread).
pub(super) fn run_stream(
    py: Python<'_>,
    service: &Service,
    ctx: &Shared,
    st: &mut Stream,
    facts: &StreamCtx,
    lane: usize,
) {
    let holds = bridge::holds_thread(service);
    if holds {
        let what = st.ex.head.method.start..st.ex.head.target.end;
        let what = st.ex.head_bytes.get(what).unwrap_or_default().to_vec();
        ctx.lanes
            .enter(lane, facts.fd, true, st.ex.started, &what, &facts.peer.addr);
    }
    if matches!(st.progress, Progress::Ready) {
        call_stream(py, service, ctx, st, facts);
    }
    produce(py, service, st);
    if holds {
        ctx.lanes.leave(lane);
    }
}

/// The stream's exchange begins and its application is called through the bridge
/// with the stream's `H2Response` as the sink.
fn call_stream(
    py: Python<'_>,
    service: &Service,
    ctx: &Shared,
    st: &mut Stream,
    facts: &StreamCtx,
) {
    let Some(body) = stream_request(ctx, st, facts) else {
        return;
    };
    let is_head = st.ex.head.is_head_method(&st.ex.head_bytes);
    let request = RequestFacts {
        minor_version: 1,
        is_head,
        close: false,
        known_length: None,
    };
    let mut peer_objects = PeerObjects::default();
    let origin = Origin {
        key: facts.key,
        peer: &facts.peer,
        local: &facts.local,
        client_subject: facts.client_subject.as_deref(),
        peer_objects: &mut peer_objects,
    };
    st.response = H2Response::new(is_head);
    match bridge::call(
        py,
        service,
        ctx,
        &mut st.ex,
        origin,
        body,
        &mut st.response,
        request,
    ) {
        Some(Running::Wsgi(source)) => st.progress = Progress::Producing(Box::new(source)),
        Some(Running::Asgi(cycle)) => st.progress = Progress::Asgi(cycle),
        None => answer_error(st, 500, "Internal Server Error"),
    }
}

/// Pulls the stream's WSGI response up to the high-water mark (`bridge::produce`).
/// An application that fails mid-body gets the stream reset (the head is sent).
fn produce(py: Python<'_>, service: &Service, st: &mut Stream) {
    let Progress::Producing(source) = &mut st.progress else {
        return;
    };
    match bridge::produce(py, service, &mut st.ex, source, &mut st.response) {
        Produced::More => {}
        Produced::Done => st.progress = Progress::Sending,
        Produced::Failed => {
            if let Some(stream) = &mut st.send {
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
            }
            st.progress = Progress::Done;
        }
    }
}

/// A ready stream's request: its HTTP/1 head made and parsed (`st.ex.head`), the
/// exchange begun (the scheme decision; counted in flight), and its body. `None`
/// when it was refused (the stream then answers 400, or 500).
pub(super) fn stream_request(ctx: &Shared, st: &mut Stream, facts: &StreamCtx) -> Option<Body> {
    let received = st.body.as_ref().map_or(0, BodyReader::received);
    let ex = &mut st.ex;
    if let Err(e) = request_head(
        &st.parts,
        received,
        &ctx.settings.limits,
        &mut ex.head_bytes,
        &mut ex.head,
    ) {
        tracing::debug!("HTTP/2 request refused: {e}");
        // Counted and logged: the head `h2` accepted is not one of ours.
        ex.count(ctx);
        answer_error(st, 400, "Bad Request");
        return None;
    }
    if let Err(e) = ex.begin(ctx, &facts.peer, facts.tls) {
        tracing::debug!("HTTP/2 request refused: {e}");
        let (code, reason) = e.status();
        answer_error(st, code, reason);
        return None;
    }
    match st.body.take().map(|mut reader| reader.take_body()) {
        _ if received == 0 => Some(Body::Empty),
        Some(Ok(body)) => Some(body),
        Some(Err(e)) => {
            tracing::error!("{e}");
            answer_error(st, 500, "Internal Server Error");
            None
        }
        None => Some(Body::Empty),
    }
}

/// A server-made response: `code` with its reason as a short text body.
pub(super) fn answer_error(st: &mut Stream, code: u16, reason: &str) {
    let facts = RequestFacts {
        minor_version: 1,
        is_head: false,
        close: false,
        known_length: None,
    };
    let status = format!("{code} {reason}");
    let headers: [(&[u8], &[u8]); 1] = [(b"content-type", b"text/plain")];
    st.response = H2Response::new(false);
    let _ = st.response.head(&status, headers.into_iter(), facts);
    st.response.data(reason.as_bytes());
    st.response.end();
    st.progress = Progress::Sending;
}
