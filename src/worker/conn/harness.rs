//! Driving a `Conn` without a worker around it: a socketpair, a `Shared` with default
//! settings and no Python, and `Exec::Pool`, which stops at each complete request
//! (where the application would take over): an HTTP/1 request at `Drive::Dispatch`,
//! an HTTP/2 stream as a `StreamJob` taken after `drive` (`answer_streams` stands in
//! for the pool thread). Used by the unit tests and by the connection fuzz target
//! (`fuzz/fuzz_targets/connection.rs`).
//!
//! The transport is an in-process socketpair, not an in-memory one: `Transport` is a
//! file descriptor, and a second, memory-backed kind would be a branch on every read
//! and write of the hot path. The socketpair makes the same syscalls as production,
//! with no process and no network.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use super::h2_stream::{answer_error, stream_request};
use super::{Conn, Drive, Exec, State};
use crate::config::AllowIps;
use crate::http::body::Body;
use crate::http::head::HeadLimits;
use crate::http::proxy::ProxyMode;
use crate::net::{Local, Peer};
use crate::scoreboard::{Peers, Scoreboard};
use crate::worker::abort::Lanes;
use crate::worker::{Settings, Shared};

/// Worker state with the default limits, a scoreboard of its own and no Python.
pub fn shared() -> Shared {
    let board = Scoreboard::new().expect("map the scoreboard");
    Shared {
        settings: Settings {
            limits: HeadLimits::default(),
            keepalive: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            sweep_every: Duration::from_secs(1),
            max_connections: 1000,
            max_requests: 0,
            forwarded_allow_ips: AllowIps::List(Vec::new()),
            forwarder_headers: Default::default(),
            proxy_mode: ProxyMode::Off,
            proxy_allow_from: AllowIps::List(Vec::new()),
            uwsgi: None,
            reload: None,
            error_logfile: "-".into(),
            secure_scheme_headers: Vec::new(),
            tls: None,
            http2_cleartext: false,
            http2: Default::default(),
            measure_loop_idle: false,
            uvicorn_records: false,
        },
        lanes: Lanes::new(1, board.slot(0)),
        slot: board.slot(0),
        peers: Peers::new(board, 0),
        access_log: None,
        keep_response_heads: false,
        served: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
    }
}

/// A connection and the client's end of its socket.
pub fn conn() -> (Conn, UnixStream) {
    let (server, client) = UnixStream::pair().expect("socketpair");
    server.set_nonblocking(true).expect("non-blocking");
    let sock = socket2::Socket::from(OwnedFd::from(server));
    let conn = Conn::new(
        crate::net::transport::Transport::new(sock),
        Peer::default(),
        None,
        Arc::new(Local::default()),
        Duration::from_secs(30),
    );
    (conn, client)
}

/// Stands in for the application: the request is answered with nothing and the
/// connection goes back to reading, as after a finished response.
pub fn answered(c: &mut Conn) {
    c.pending_body = None;
    c.in_request = false;
    c.served += 1;
    c.state = State::Head;
}

/// An HTTP/2 stream as the application would have been given it (read by the unit
/// tests; the fuzz target only counts them).
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct Dispatched {
    /// The HTTP/1 head made from the stream's (`http::h2::request_head`).
    pub head: String,
    /// The scheme decision (`Exchange::begin`).
    pub https: bool,
    pub body: Vec<u8>,
}

/// Stands in for the pool threads of an HTTP/2 connection: each stream `drive` handed
/// out is begun as a pool thread begins it (its head made, the scheme decided,
/// counted in flight), answered `200 OK` — or with the error the product gives a
/// refused stream — and handed back. The answers go out at the next `drive`. Returns
/// the streams that reached the application.
pub fn answer_streams(c: &mut Conn, ctx: &Shared) -> Vec<Dispatched> {
    let mut dispatched = Vec::new();
    for mut job in c.take_stream_jobs() {
        let st = &mut job.stream;
        if let Some(body) = stream_request(ctx, st, &job.facts) {
            dispatched.push(Dispatched {
                head: String::from_utf8_lossy(&st.ex.head_bytes).into_owned(),
                https: st.ex.https,
                body: match body {
                    Body::Empty => Vec::new(),
                    Body::Memory(b) => b,
                    Body::File(mut f) => {
                        let mut b = Vec::new();
                        f.read_to_end(&mut b).expect("read a spilled body");
                        b
                    }
                },
            });
            answer_error(st, 200, "OK");
        }
        if c.return_stream(Box::new(job)).is_err() {
            panic!("a stream handed out by this connection was refused back");
        }
    }
    dispatched
}

/// What a stream of client bytes made of the connection.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Complete requests (HTTP/1) or streams (HTTP/2) handed to the application.
    pub dispatched: usize,
    /// The connection was closed (by the client's end of stream or an error).
    pub closed: bool,
    /// Bytes the server sent back (error answers, `100 Continue`).
    pub answered: Vec<u8>,
}

/// Sends `stream` to a connection in pieces cut at `cuts` (offsets, any order), driving
/// it after each piece, then closes the client's side. Checks what must hold whatever
/// the bytes: every dispatched head's ranges lie inside its head, the read buffer stays
/// bounded, and nothing panics.
pub fn drive_stream(stream: &[u8], cuts: &[usize]) -> Outcome {
    // One for the process: a fuzzer calls this millions of times, and each scoreboard
    // is a mapping that lives as long as the process.
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    drive(SHARED.get_or_init(shared), stream, cuts)
}

/// `drive_stream` for a worker that takes HTTP/2 with prior knowledge
/// (`--http2-cleartext`): each stream is answered by `answer_streams`.
#[cfg(test)]
pub fn drive_h2_stream(stream: &[u8], cuts: &[usize]) -> Outcome {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    let ctx = SHARED.get_or_init(|| {
        let mut ctx = shared();
        ctx.settings.http2_cleartext = true;
        ctx
    });
    drive(ctx, stream, cuts)
}

/// `drive_stream` for a worker that speaks uwsgi (`--protocol uwsgi`).
pub fn drive_uwsgi_stream(stream: &[u8], cuts: &[usize]) -> Outcome {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    let ctx = SHARED.get_or_init(|| {
        let mut ctx = shared();
        ctx.settings.uwsgi = Some(AllowIps::Any);
        ctx
    });
    drive(ctx, stream, cuts)
}

fn drive(ctx: &Shared, stream: &[u8], cuts: &[usize]) -> Outcome {
    let (mut c, mut client) = conn();
    client.set_nonblocking(true).expect("non-blocking");
    let mut points: Vec<usize> = cuts.iter().map(|&p| p.min(stream.len())).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut out = Outcome::default();
    let mut sent = 0;
    let bound = ctx.settings.limits.max_head_bytes() + 4 * super::READ_CHUNK_BYTES;
    for end in points {
        while sent < end && !out.closed {
            match client.write(&stream[sent..end]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => out.closed = true,
            }
            step(&mut c, ctx, &mut client, &mut out);
            assert!(
                c.read_buf.capacity() <= 2 * bound,
                "the read buffer grew without bound"
            );
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Write);
    for _ in 0..64 {
        if out.closed {
            break;
        }
        step(&mut c, ctx, &mut client, &mut out);
    }
    out
}

fn step(c: &mut Conn, ctx: &Shared, client: &mut UnixStream, out: &mut Outcome) {
    // Bounded: each round either dispatches, or waits, or closes.
    for _ in 0..64 {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.answered.extend_from_slice(&buf[..n]);
        }
        match c.drive(Exec::Pool, ctx) {
            Drive::Dispatch => {
                let head_len = c.ex.head_bytes.len();
                for r in [
                    &c.ex.head.method,
                    &c.ex.head.target,
                    &c.ex.head.path,
                    &c.ex.head.query,
                ] {
                    assert!(
                        r.start <= r.end && r.end <= head_len,
                        "a range outside the head"
                    );
                }
                for (name, value) in &c.ex.head.headers {
                    assert!(name.end <= head_len && value.end <= head_len);
                }
                out.dispatched += 1;
                answered(c);
            }
            Drive::Close => {
                out.closed = true;
                return;
            }
            Drive::Yield => {}
            Drive::WaitRead | Drive::WaitWrite => {
                let streams = answer_streams(c, ctx).len();
                if streams == 0 {
                    return;
                }
                out.dispatched += streams;
            }
        }
    }
}
