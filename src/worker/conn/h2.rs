//! An HTTP/2 connection: the `h2` crate's server connection, polled from the event
//! loop with no async runtime, over a `net::pipe::Pipe` that this driver fills from
//! the `Transport` and drains into it. Each stream is one exchange: its request is
//! collected whole (as an HTTP/1 body is, so a slow client never holds Python), turned
//! into the HTTP/1 head the WSGI environ and the ASGI scope are read from
//! (`http::h2::request_head`), run by the application, and its response produced into
//! an `H2Response` (WSGI: up to `HIGH_WATER_BYTES`; ASGI: by its `send()`s, `h2_asgi`),
//! then sent as the stream's flow-control window allows. A stream whose client opens
//! no window holds a buffer, never a Python thread, and suspends an ASGI `send()`.
//!
//! The waker only raises a flag: one `step_h2` polls everything until a pass makes no
//! progress and nothing was woken. With `--threads N` the application part runs on a
//! pool thread (`h2_stream::StreamJob`), the rest always here; this module never
//! blocks. One stream's exchange is `h2_stream`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use bytes::Bytes;
use h2::server::{Connection, Handshake};

use super::h2_stream::{run_stream, Progress, Stream, StreamCtx, StreamJob};
use super::{Conn, Exec, State, Step, READ_CHUNK_BYTES};
use crate::net::pipe::Pipe;
use crate::worker::{Service, Shared};
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
    streams: Vec<Stream>,
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
            streams: Vec::new(),
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
            let service = match exec {
                Exec::Inline(_, service) => Some(service),
                Exec::Pool => None,
            };
            self.abandon(ctx, service);
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
            for st in &mut h.streams {
                moved |= st.advance(&mut cx, exec, ctx.settings.request_timeout);
            }
            moved |= self.call_ready_streams(h, exec, ctx);
            moved |= self.end_exchanges(h, exec, ctx);
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
                    + if h.streams.is_empty() && h.away == 0 {
                        ctx.settings.keepalive.max(ctx.settings.request_timeout)
                    } else {
                        ctx.settings.request_timeout
                    };
            }
            if moved || h.woken.0.load(Ordering::Relaxed) {
                continue;
            }
            self.settle(h, exec, ctx);
            return if h.finished && !blocked && h.away == 0 {
                Step::Close
            } else if blocked {
                Step::WaitWrite
            } else {
                Step::Wait
            };
        }
    }

    /// The streams whose application must run (or produce more): here with the GIL,
    /// or handed to the pool one by one. True when there were any.
    fn call_ready_streams(&mut self, h: &mut H2Conn, exec: Exec<'_>, ctx: &Shared) -> bool {
        if !h.streams.iter().any(Stream::needs_python) {
            return false;
        }
        let facts = self.stream_ctx();
        match exec {
            Exec::Inline(py, service) => {
                for st in h.streams.iter_mut().filter(|s| s.needs_python()) {
                    run_stream(py, service, ctx, st, &facts, 0);
                }
            }
            Exec::Pool => {
                let (ready, kept): (Vec<_>, Vec<_>) =
                    h.streams.drain(..).partition(Stream::needs_python);
                h.streams = kept;
                h.away += ready.len();
                for stream in ready {
                    h.outgoing.push(StreamJob {
                        conn_id: h.id,
                        stream,
                        facts: self.stream_ctx(),
                    });
                }
            }
        }
        true
    }

    /// Nothing moved in a pass: the connection's deadline is the streams' earliest (or
    /// `--timeout` while the pool runs some), and each waiting ASGI cycle is armed.
    fn settle(&mut self, h: &H2Conn, exec: Exec<'_>, ctx: &Shared) {
        self.in_request = !h.streams.is_empty() || h.away > 0;
        if h.away > 0 {
            // In the application, not waiting for the client: --timeout bounds it.
            self.deadline = Instant::now() + ctx.settings.request_timeout;
        }
        if let Some(first) = h.streams.iter().map(|e| e.deadline).min() {
            // The streams' own deadlines (an ASGI application's long-poll has a
            // long one), never later than the pool's.
            self.deadline = if h.away > 0 {
                self.deadline.min(first)
            } else {
                first
            };
        }
        if let Exec::Inline(py, _) = exec {
            for st in &h.streams {
                st.arm(py);
            }
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
            key: self.key,
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
        for st in h.streams.iter_mut().filter(|s| s.deadline <= now) {
            tracing::debug!("HTTP/2 stream stalled past the request deadline: reset");
            match &mut st.send {
                Some(stream) => stream.send_reset(h2::Reason::CANCEL),
                None => st.respond.send_reset(h2::Reason::CANCEL),
            }
            st.done();
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
        for st in &mut h.streams {
            st.done();
            h.unclosed.extend(st.unclosed.take().map(|s| *s));
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
                h.streams.push(job.stream);
                Ok(())
            }
            _ => Err(job),
        }
    }

    /// Logs and counts the exchanges that are over, and forgets them.
    fn end_exchanges(&mut self, h: &mut H2Conn, exec: Exec<'_>, ctx: &Shared) -> bool {
        let before = h.streams.len();
        let mut kept = Vec::with_capacity(before);
        for mut st in h.streams.drain(..) {
            if !matches!(st.progress, Progress::Done) {
                kept.push(st);
                continue;
            }
            h.unclosed.extend(st.unclosed.take().map(|s| *s));
            if let Exec::Inline(py, service) = exec {
                st.post_request_gone(py, service);
            }
            if st.ex.is_counted() {
                self.served += 1;
            }
            if let Some(head) = st.response.kept_head.take() {
                st.ex.response_head = head;
            }
            let (status, bytes) = (st.response.status, st.response.body_bytes);
            st.ex.finish(ctx, &self.peer, status, bytes);
        }
        h.streams = kept;
        h.streams.len() != before
    }

    /// The connection closes with streams unfinished: the scoreboard forgets them (once:
    /// they are uncounted), and ASGI applications still running hear `http.disconnect`.
    pub(super) fn abandon_h2(h: &mut H2Conn, ctx: &Shared, service: Option<&Service>) {
        for st in &mut h.streams {
            st.ex.forget(ctx);
            if matches!(st.progress, Progress::Asgi(_)) {
                st.done();
                if let Some(service) = service {
                    pyo3::Python::with_gil(|py| st.post_request_gone(py, service));
                }
            }
        }
    }

    /// When the oldest ASGI application running one of this connection's streams was
    /// called.
    pub(super) fn oldest_asgi_stream(&self) -> Option<Instant> {
        match &self.state {
            State::Http2(h) => h.streams.iter().filter_map(Stream::asgi_started).min(),
            _ => None,
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
        if !self.goaway && ctx.closing() {
            conn.graceful_shutdown();
            self.goaway = true;
        }
        let mut moved = false;
        while !self.finished {
            match conn.poll_accept(&mut cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    let (parts, recv) = request.into_parts();
                    let deadline = Instant::now() + ctx.settings.request_timeout;
                    self.streams
                        .push(Stream::new(parts, recv, respond, deadline));
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
