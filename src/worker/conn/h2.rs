//! An HTTP/2 connection: the `h2` crate's server connection, polled from the event
//! loop with no async runtime, over a `net::pipe::Pipe` that this driver fills from
//! the `Transport` and drains into it. Each stream is one exchange: its request is
//! collected whole (as an HTTP/1 body is, so a slow client never holds Python), turned
//! into the HTTP/1 head the WSGI bridge reads (`http::h2::request_head`), run by the
//! application, and its response produced into an `H2Response` up to
//! `HIGH_WATER_BYTES`, then sent as the stream's flow-control window allows. A stream
//! whose client opens no window holds a buffer, never a Python thread.
//!
//! The waker only raises a flag: one `step_h2` polls everything until a pass makes no
//! progress and nothing was woken. With `--threads N` the application part runs on a
//! pool thread (`run_h2_python`), the rest always here; this module never blocks.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use bytes::Bytes;
use h2::server::{Connection, Handshake, SendResponse};
use h2::{RecvStream, SendStream};
use pyo3::prelude::*;

use super::app::HIGH_WATER_BYTES;
use super::{Conn, Exec, State, Step, READ_CHUNK_BYTES};
use crate::http::framer::ResponseSink;
use crate::http::h2::{request_head, H2Response};
use crate::http::head::RequestHead;
use crate::http::response::RequestFacts;
use crate::log::AccessRecord;
use crate::net::pipe::Pipe;
use crate::worker::body::BodyReader;
use crate::worker::{Application, Service, Shared};
use crate::wsgi::environ::{is_https, RequestInfo};
use crate::wsgi::input::Body;
use crate::wsgi::response::WsgiSource;

/// The client connection preface (RFC 9113 3.4) a prior-knowledge client opens with.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams a client may reset before we read them before it is a rapid-reset attack
/// (CVE-2023-44487): the connection then ends with GOAWAY (ENHANCE_YOUR_CALM).
const MAX_PENDING_RESETS: usize = 20;
/// Response bytes `h2` buffers per stream beyond what the window lets out.
const MAX_SEND_BUFFER_BYTES: usize = 64 * 1024;

/// Raised by `h2` when something it waits for may have happened.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

enum Phase {
    /// Reading the client's preface and SETTINGS.
    Handshake(Pin<Box<Handshake<Pipe, Bytes>>>),
    Serving(Box<Connection<Pipe, Bytes>>),
}

/// Numbers HTTP/2 connections, so a stream back from the pool finds its own (a slot
/// key may have been reused meanwhile).
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct H2Conn {
    id: u64,
    pipe: Pipe,
    phase: Phase,
    woken: Arc<Flag>,
    waker: Waker,
    exchanges: Vec<Exchange>,
    /// Streams for pool threads, taken by the event loop after `drive`.
    outgoing: Vec<StreamJob>,
    /// Streams away on pool threads.
    away: usize,
    /// Response sources owed `close()`, which needs the GIL: closed in the next
    /// inline pass, or by a pool thread (`take_unclosed`).
    unclosed: Vec<WsgiSource>,
    /// GOAWAY sent (the worker stops): no new streams, close when the last ends.
    goaway: bool,
    /// The connection is over (closed, GOAWAY done, or a protocol error): close once
    /// the output is sent.
    finished: bool,
}

/// Where one stream's exchange is.
enum Progress {
    /// Receiving the request body.
    Receiving(RecvStream),
    /// The request is complete: the application has not run yet.
    Ready,
    /// The application's iterable is being pulled.
    Producing(Box<WsgiSource>),
    /// All produced: sending what is left.
    Sending,
    /// Over (sent, reset, or the client went away).
    Done,
}

struct Exchange {
    parts: http::request::Parts,
    /// The request body as it comes (spilled to a file past `SPILL_THRESHOLD_BYTES`),
    /// then `None` once handed to the application.
    body: Option<BodyReader>,
    progress: Progress,
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
    response: H2Response,
    head_bytes: Vec<u8>,
    head: RequestHead,
    started: Instant,
    /// When the stream is reset if it has not moved: its body stopped coming, or its
    /// client stopped opening the window (the request deadline).
    deadline: Instant,
    /// On the scoreboard as a request in flight.
    counted: bool,
    /// `req` and environ kept for a `post_request` hook.
    hook_request: Option<(Py<PyAny>, Py<PyAny>)>,
    /// A response source that ended early (reset, client gone), owed its `close()`.
    unclosed: Option<Box<WsgiSource>>,
}

/// What a stream's application call needs to know about its connection.
struct StreamCtx {
    fd: std::os::fd::RawFd,
    peer: crate::net::Peer,
    local: Arc<crate::net::Local>,
    tls: bool,
    client_subject: Option<String>,
}

/// A stream whose application part runs on a pool thread (`--threads N`), so the
/// streams of one connection run concurrently.
pub struct StreamJob {
    conn_id: u64,
    exchange: Exchange,
    facts: StreamCtx,
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
    /// Over: a response source not yet closed is kept for `close()` with the GIL.
    fn done(&mut self) {
        if let Progress::Producing(source) = std::mem::replace(&mut self.progress, Progress::Done) {
            self.unclosed = Some(source);
        }
    }

    fn needs_python(&self) -> bool {
        match &self.progress {
            Progress::Ready => true,
            Progress::Producing(_) => self.response.buffered() < HIGH_WATER_BYTES,
            _ => false,
        }
    }

    /// Receives body data and sends response data as far as `h2` allows. True when
    /// something moved (which also moves the stream's deadline).
    fn advance(&mut self, cx: &mut Context<'_>, timeout: std::time::Duration) -> bool {
        let moved = self.advance_once(cx);
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
        let mut moved = false;
        let all_produced = matches!(self.progress, Progress::Sending);
        if let Some(head) = self.response.head.take() {
            let end = all_produced && self.response.body.is_empty();
            match self.respond.send_response(head, end) {
                Ok(stream) => self.send = Some(stream),
                Err(_) => {
                    self.done();
                    return true;
                }
            }
            moved = true;
            if end {
                self.done();
                return true;
            }
        }
        let Some(stream) = &mut self.send else {
            return moved;
        };
        while !self.response.body.is_empty() {
            stream.reserve_capacity(self.response.body.len());
            match stream.poll_capacity(cx) {
                Poll::Ready(Some(Ok(n))) if n > 0 => {
                    let n = n.min(self.response.body.len());
                    let chunk = Bytes::copy_from_slice(&self.response.body[..n]);
                    self.response.body.drain(..n);
                    let last = all_produced && self.response.body.is_empty();
                    if stream.send_data(chunk, last).is_err() {
                        self.done();
                        return true;
                    }
                    moved = true;
                    if last {
                        self.done();
                        return true;
                    }
                }
                Poll::Ready(Some(Ok(_))) | Poll::Pending => return moved,
                Poll::Ready(Some(Err(_)) | None) => {
                    self.done();
                    return true;
                }
            }
        }
        if all_produced {
            let _ = stream.send_data(Bytes::new(), true);
            self.done();
            moved = true;
        }
        moved
    }
}

impl Conn {
    /// Whether the connection's first bytes are the HTTP/2 preface: `None` while what
    /// has arrived is a prefix of it.
    pub(super) fn opens_with_preface(&self) -> Option<bool> {
        let buf = &self.read_buf[self.read_start..];
        if buf.len() < PREFACE.len() {
            if PREFACE.starts_with(buf) {
                None
            } else {
                Some(false)
            }
        } else {
            Some(buf.starts_with(PREFACE))
        }
    }

    /// Hands the connection to HTTP/2, with the bytes read so far.
    pub(super) fn start_h2(&mut self, ctx: &Shared) -> Step {
        let pipe = Pipe::default();
        pipe.lock()
            .input
            .extend_from_slice(&self.read_buf[self.read_start..]);
        self.read_buf.clear();
        self.read_start = 0;
        let woken = Arc::new(Flag(AtomicBool::new(true)));
        let limits = &ctx.settings.http2;
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(limits.max_concurrent_streams)
            .initial_window_size(limits.initial_window_size)
            .initial_connection_window_size(
                limits
                    .initial_window_size
                    .saturating_mul(4)
                    .clamp(65_535, 2_147_483_647),
            )
            .max_frame_size(limits.max_frame_size)
            .max_header_list_size(limits.max_header_list_size)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_send_buffer_size(MAX_SEND_BUFFER_BYTES);
        let handshake = builder.handshake(pipe.clone());
        self.state = State::Http2(Box::new(H2Conn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            outgoing: Vec::new(),
            away: 0,
            unclosed: Vec::new(),
            pipe,
            phase: Phase::Handshake(Box::pin(handshake)),
            waker: Waker::from(woken.clone()),
            woken,
            exchanges: Vec::new(),
            goaway: false,
            finished: false,
        }));
        self.deadline = Instant::now() + ctx.settings.request_timeout;
        Step::Continue
    }

    /// Polls the connection and its streams until nothing moves; runs ready
    /// applications here (`Exec::Inline`) or asks for a pool thread.
    pub(super) fn step_h2(&mut self, exec: Exec<'_>, ctx: &Shared) -> Step {
        let State::Http2(mut h) = std::mem::replace(&mut self.state, State::Draining) else {
            unreachable!()
        };
        let step = self.h2_passes(&mut h, exec, ctx);
        self.state = State::Http2(h);
        if matches!(step, Step::Close) {
            self.abandon(ctx);
        }
        step
    }

    fn h2_passes(&mut self, h: &mut H2Conn, exec: Exec<'_>, ctx: &Shared) -> Step {
        loop {
            h.woken.0.store(false, Ordering::Relaxed);
            let mut moved = match self.pipe_in(h) {
                Ok(moved) => moved,
                Err(_) => return Step::Close,
            };
            moved |= h.poll_connection(ctx);
            let waker = h.waker.clone();
            let mut cx = Context::from_waker(&waker);
            for ex in &mut h.exchanges {
                moved |= ex.advance(&mut cx, ctx.settings.request_timeout);
            }
            if h.exchanges.iter().any(Exchange::needs_python) {
                let facts = self.stream_ctx();
                match exec {
                    Exec::Inline(py, service) => {
                        for ex in h.exchanges.iter_mut().filter(|e| e.needs_python()) {
                            run_stream(py, service, ctx, ex, &facts, 0);
                        }
                    }
                    Exec::Pool => {
                        let (ready, kept): (Vec<_>, Vec<_>) =
                            h.exchanges.drain(..).partition(Exchange::needs_python);
                        h.exchanges = kept;
                        h.away += ready.len();
                        for exchange in ready {
                            h.outgoing.push(StreamJob {
                                conn_id: h.id,
                                exchange,
                                facts: self.stream_ctx(),
                            });
                        }
                    }
                }
                moved = true;
            }
            moved |= self.end_exchanges(h, ctx);
            if let Exec::Inline(py, _) = exec {
                for mut source in h.unclosed.drain(..) {
                    source.close(py);
                }
            }
            let blocked = match self.pipe_out(h) {
                Ok(blocked) => blocked,
                Err(_) => return Step::Close,
            };
            if moved {
                self.deadline = Instant::now()
                    + if h.exchanges.is_empty() && h.away == 0 {
                        ctx.settings.keepalive.max(ctx.settings.request_timeout)
                    } else {
                        ctx.settings.request_timeout
                    };
            }
            if moved || h.woken.0.load(Ordering::Relaxed) {
                continue;
            }
            self.in_request = !h.exchanges.is_empty() || h.away > 0;
            if h.away > 0 {
                // In the application, not waiting for the client: --timeout bounds it.
                self.deadline = Instant::now() + ctx.settings.request_timeout;
            }
            if let Some(first) = h.exchanges.iter().map(|e| e.deadline).min() {
                self.deadline = self.deadline.min(first);
            }
            return if h.finished && !blocked && h.away == 0 {
                Step::Close
            } else if blocked {
                Step::WaitWrite
            } else {
                Step::Wait
            };
        }
    }

    /// Socket to pipe, up to the pipe's bound. True when bytes (or the end) came.
    fn pipe_in(&mut self, h: &mut H2Conn) -> io::Result<bool> {
        let mut moved = false;
        loop {
            let room = h.pipe.lock().input_room();
            if room == 0 || h.pipe.lock().eof {
                return Ok(moved);
            }
            self.read_buf.clear();
            match self
                .transport
                .read(&mut self.read_buf, room.min(READ_CHUNK_BYTES))
            {
                Ok(0) => {
                    h.pipe.lock().eof = true;
                    return Ok(true);
                }
                Ok(n) => {
                    h.pipe.lock().input.extend_from_slice(&self.read_buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(e) => return Err(e),
            }
        }
    }

    /// Pipe to socket. True when the socket is full and output remains.
    fn pipe_out(&mut self, h: &mut H2Conn) -> io::Result<bool> {
        let mut pipe = h.pipe.lock();
        while !pipe.pending_output().is_empty() {
            match self.transport.write(pipe.pending_output()) {
                Ok(n) => pipe.consume_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        match self.transport.flush_pending() {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn stream_ctx(&self) -> StreamCtx {
        StreamCtx {
            fd: self.fd(),
            peer: self.peer.clone(),
            local: Arc::clone(&self.local),
            tls: self.transport.is_tls(),
            client_subject: self.transport.peer_subject().map(str::to_owned),
        }
    }

    /// The connection's deadline passed: an HTTP/2 connection resets the streams that
    /// are overdue and lives on (true); any other, or one with none overdue (idle
    /// past keep-alive), is closed.
    pub fn expire_streams(&mut self, now: Instant) -> bool {
        let State::Http2(h) = &mut self.state else {
            return false;
        };
        let mut reset = false;
        for ex in h.exchanges.iter_mut().filter(|e| e.deadline <= now) {
            tracing::debug!("HTTP/2 stream stalled past the request deadline: reset");
            match &mut ex.send {
                Some(stream) => stream.send_reset(h2::Reason::CANCEL),
                None => ex.respond.send_reset(h2::Reason::CANCEL),
            }
            ex.done();
            reset = true;
        }
        if reset {
            self.deadline = now + std::time::Duration::from_millis(1);
        }
        reset
    }

    /// Response sources owed `close()`, for a pool thread (taken after `drive`, and
    /// when the connection closes: then every unfinished stream's too).
    pub fn take_unclosed(&mut self) -> Vec<WsgiSource> {
        let State::Http2(h) = &mut self.state else {
            return Vec::new();
        };
        std::mem::take(&mut h.unclosed)
    }

    /// Every response source of a closing connection, owed `close()`.
    pub fn take_all_sources(&mut self) -> Vec<WsgiSource> {
        let State::Http2(h) = &mut self.state else {
            return Vec::new();
        };
        for ex in &mut h.exchanges {
            ex.done();
            h.unclosed.extend(ex.unclosed.take().map(|s| *s));
        }
        std::mem::take(&mut h.unclosed)
    }

    /// Streams for the pool, taken after `drive` (`--threads N`).
    pub fn take_stream_jobs(&mut self) -> Vec<StreamJob> {
        match &mut self.state {
            State::Http2(h) => std::mem::take(&mut h.outgoing),
            _ => Vec::new(),
        }
    }

    /// A stream back from the pool; `Err` gives it back when it is not this
    /// connection's (closed meanwhile, its slot reused).
    pub fn return_stream(&mut self, job: Box<StreamJob>) -> Result<(), Box<StreamJob>> {
        match &mut self.state {
            State::Http2(h) if h.id == job.conn_id => {
                h.away -= 1;
                h.exchanges.push(job.exchange);
                Ok(())
            }
            _ => Err(job),
        }
    }

    /// Logs and counts the exchanges that are over, and forgets them.
    fn end_exchanges(&mut self, h: &mut H2Conn, ctx: &Shared) -> bool {
        let before = h.exchanges.len();
        let mut kept = Vec::with_capacity(before);
        for mut ex in h.exchanges.drain(..) {
            if !matches!(ex.progress, Progress::Done) {
                kept.push(ex);
                continue;
            }
            h.unclosed.extend(ex.unclosed.take().map(|s| *s));
            if ex.counted {
                let elapsed = ex.started.elapsed();
                self.served += 1;
                ctx.scoreboard_end();
                ctx.count_response(ex.response.status, elapsed);
                ctx.log_access(&AccessRecord {
                    head_bytes: &ex.head_bytes,
                    head: &ex.head,
                    peer: &self.peer,
                    status: ex.response.status,
                    body_bytes: ex.response.body_bytes,
                    elapsed,
                });
            }
        }
        h.exchanges = kept;
        h.exchanges.len() != before
    }

    /// The connection closes with streams unfinished: the scoreboard forgets them.
    pub(super) fn abandon_h2(&self, h: &H2Conn, ctx: &Shared) {
        for _ in h.exchanges.iter().filter(|e| e.counted) {
            ctx.scoreboard_end();
        }
    }
}

impl H2Conn {
    /// Drives the handshake, or accepts new streams (and lets `h2` read and write
    /// frames). True when something happened.
    fn poll_connection(&mut self, ctx: &Shared) -> bool {
        let waker = self.waker.clone();
        let mut cx = Context::from_waker(&waker);
        if let Phase::Handshake(handshake) = &mut self.phase {
            match handshake.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(conn)) => self.phase = Phase::Serving(Box::new(conn)),
                Poll::Ready(Err(e)) => {
                    tracing::debug!("HTTP/2 handshake failed: {e}");
                    self.finished = true;
                    return true;
                }
                Poll::Pending => return false,
            }
        }
        let Phase::Serving(conn) = &mut self.phase else {
            return true;
        };
        if ctx.stopping() && !self.goaway {
            conn.graceful_shutdown();
            self.goaway = true;
        }
        let mut moved = false;
        while !self.finished {
            match conn.poll_accept(&mut cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    let (parts, recv) = request.into_parts();
                    self.exchanges.push(Exchange {
                        parts,
                        body: Some(BodyReader::framed()),
                        progress: Progress::Receiving(recv),
                        respond,
                        send: None,
                        response: H2Response::default(),
                        head_bytes: Vec::new(),
                        head: RequestHead::default(),
                        started: Instant::now(),
                        deadline: Instant::now() + ctx.settings.request_timeout,
                        counted: false,
                        hook_request: None,
                        unclosed: None,
                    });
                    moved = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!("HTTP/2 connection error: {e}");
                    self.finished = true;
                    moved = true;
                }
                Poll::Ready(None) => {
                    self.finished = true;
                    moved = true;
                }
                Poll::Pending => break,
            }
        }
        moved
    }
}

/// With the GIL: runs a ready stream's application, or produces more of its response.
fn run_stream(
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
    produce(py, service, ex, &what);
    ctx.lanes.leave(lane);
}

fn call_stream_app(
    py: Python<'_>,
    service: &Service,
    ctx: &Shared,
    ex: &mut Exchange,
    facts: &StreamCtx,
) {
    ctx.scoreboard_begin();
    ex.counted = true;
    let Application::Wsgi(app) = &service.app else {
        return answer_error(ex, 500, "Internal Server Error");
    };
    let received = ex.body.as_ref().map_or(0, BodyReader::received);
    if let Err(e) = request_head(
        &ex.parts,
        received,
        &ctx.settings.limits,
        &mut ex.head_bytes,
        &mut ex.head,
    ) {
        tracing::debug!("HTTP/2 request refused: {e}");
        return answer_error(ex, 400, "Bad Request");
    }
    let https = facts.tls
        || is_https(
            &ex.head_bytes,
            &ex.head,
            facts.peer.trusted,
            &ctx.settings.secure_scheme_headers,
        )
        .unwrap_or(false);
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
    };
    let body = match ex.body.take().map(BodyReader::finish) {
        _ if received == 0 => Body::Empty,
        Some(Ok(body)) => body,
        Some(Err(e)) => {
            tracing::error!("{e}");
            return answer_error(ex, 500, "Internal Server Error");
        }
        None => Body::Empty,
    };
    let is_head = ex.head.is_head_method(&ex.head_bytes);
    let request = RequestFacts {
        minor_version: 1,
        is_head,
        close: false,
        known_length: None,
    };
    ex.response = H2Response::new(is_head);
    // Gunicorn's order: pre_request before the application, post_request once its
    // response is all produced (`produce`).
    let hook_req = match &service.hooks {
        Some(h) if h.pre_request || h.post_request => {
            h.request_or_log(py, &ex.head_bytes, &ex.head, &facts.peer.addr)
        }
        _ => None,
    };
    if let (Some(h), Some(req)) = (&service.hooks, &hook_req) {
        if h.pre_request {
            h.call(py, "pre_request", vec![req.clone()]);
        }
    }
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
            log_app_error(&ex.head_bytes, &ex.head, &detail);
            answer_error(ex, 500, "Internal Server Error");
        }
    }
}

/// Pulls the stream's response up to the high-water mark; closes the iterable at its
/// end. An application that fails mid-body gets the stream reset (the head is sent).
fn produce(py: Python<'_>, service: &Service, ex: &mut Exchange, what: &[u8]) {
    let Progress::Producing(source) = &mut ex.progress else {
        return;
    };
    if let Err(e) = source.produce(py, &mut ex.response, HIGH_WATER_BYTES) {
        source.close(py);
        tracing::error!(
            "Error handling request {}\n{e}",
            String::from_utf8_lossy(what)
        );
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

/// A server-made response: `code` with its reason as a short text body.
fn answer_error(ex: &mut Exchange, code: u16, reason: &str) {
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

fn log_app_error(head_bytes: &[u8], head: &RequestHead, detail: &str) {
    let path = String::from_utf8_lossy(head_bytes.get(head.target.clone()).unwrap_or_default());
    tracing::error!("Error handling request {path}\n{detail}");
}
