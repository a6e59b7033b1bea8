//! The HTTP/2 driver (`conn::h2`, `conn::h2_stream`, `net::pipe`) over the harness's
//! socketpair, without Python: the client is raw frames written here (its header
//! blocks are HPACK literals, encoded by `hpack_field`), and `harness::answer_streams`
//! stands in for the pool threads that would run each stream's application. What
//! these pin down: which streams reach the application and with what head, bodies
//! cut anywhere, the connection's answer to a broken client, resets and GOAWAY.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::h2::PREFACE;
use super::harness::{answer_streams, conn, drive_h2_stream, shared, Dispatched};
use super::{Conn, Drive, Exec};
use crate::worker::Shared;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
const CANCEL: u32 = 0x8;

/// One frame: 9 bytes of header (length, type, flags, stream), then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1) after the bits in `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal field without indexing, with a literal name (RFC 7541 6.2.2), neither
/// string Huffman-coded: the one representation this client needs.
fn hpack_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    for s in [name, value] {
        hpack_int(out, 0x00, 7, s.len());
        out.extend_from_slice(s.as_bytes());
    }
}

/// A HEADERS frame with the whole block (END_HEADERS); `end` ends the stream too.
fn headers(stream: u32, fields: &[(&str, &str)], end: bool) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        hpack_field(&mut block, name, value);
    }
    let flags = END_HEADERS | if end { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block)
}

/// The pseudo-headers of a request to `http://example.com{path}`, then `extra`.
fn request<'a>(
    method: &'a str,
    path: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", "example.com"),
    ];
    fields.extend_from_slice(extra);
    fields
}

fn data(stream: u32, bytes: &[u8], end: bool) -> Vec<u8> {
    frame(DATA, if end { END_STREAM } else { 0 }, stream, bytes)
}

fn u32_frame(kind: u8, stream: u32, value: u32) -> Vec<u8> {
    frame(kind, 0, stream, &value.to_be_bytes())
}

/// The preface and an empty SETTINGS: what every client opens with.
fn opening() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// A frame the server sent.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// A response HEADERS frame's `:status`: h2 sends the statuses of HPACK's static
    /// table (RFC 7541 Appendix A) as their index, the first field of the block.
    fn status(&self) -> u16 {
        assert_eq!(self.kind, HEADERS, "{self:?}");
        match self.payload[0] {
            0x88 => 200,
            0x8c => 400,
            0x8e => 500,
            b => panic!("a status outside HPACK's static table: {b:#x}"),
        }
    }

    fn code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// The frames in `bytes`, a whole number of them.
fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 9, "a frame cut short");
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) & 0x7fff_ffff;
        frames.push(Frame {
            kind: bytes[3],
            flags: bytes[4],
            stream,
            payload: bytes[9..9 + len].to_vec(),
        });
        bytes = &bytes[9 + len..];
    }
    frames
}

/// A connection, its client, and what the application was given so far.
struct Client {
    c: Conn,
    sock: UnixStream,
    ctx: Shared,
    dispatched: Vec<Dispatched>,
}

impl Client {
    fn new(ctx: Shared) -> Client {
        let (c, sock) = conn();
        sock.set_nonblocking(true).unwrap();
        Client {
            c,
            sock,
            ctx,
            dispatched: Vec::new(),
        }
    }

    /// A client of a worker that takes HTTP/2 with prior knowledge.
    fn h2c() -> Client {
        let mut ctx = shared();
        ctx.settings.http2_cleartext = true;
        Client::new(ctx)
    }

    /// Sends `bytes`, then drives the connection as the event loop would: the
    /// streams it hands out are answered and driven again.
    fn send(&mut self, bytes: &[u8]) -> Drive {
        self.sock.write_all(bytes).unwrap();
        self.drive()
    }

    fn drive(&mut self) -> Drive {
        loop {
            let d = self.c.drive(Exec::Pool, &self.ctx);
            let answered = answer_streams(&mut self.c, &self.ctx);
            if answered.is_empty() || d == Drive::Close {
                return d;
            }
            self.dispatched.extend(answered);
        }
    }

    /// The frames the server sent since the last call.
    fn frames(&mut self) -> Vec<Frame> {
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        parse_frames(&got)
    }

    /// The frames of `stream` the server sent since the last call.
    fn stream_frames(&mut self, stream: u32) -> Vec<Frame> {
        let mut frames = self.frames();
        frames.retain(|f| f.stream == stream);
        frames
    }
}

/// A stream's response: its status and its body, which must end the stream.
fn response(frames: &[Frame]) -> (u16, Vec<u8>) {
    let status = frames.first().expect("a response").status();
    let mut body = Vec::new();
    for f in &frames[1..] {
        assert_eq!(f.kind, DATA, "{f:?}");
        body.extend_from_slice(&f.payload);
    }
    let last = frames.last().unwrap();
    assert!(last.flags & END_STREAM != 0, "the stream never ended");
    (status, body)
}

fn host_line(d: &Dispatched) -> bool {
    d.head.contains("\r\nhost: example.com\r\n")
}

#[test]
fn a_get_stream_reaches_the_application_with_its_head_and_is_answered() {
    let mut cl = Client::h2c();
    let mut bytes = opening();
    bytes.extend(headers(
        1,
        &request("GET", "/a?b=1", &[("accept", "x/y")]),
        true,
    ));
    assert_eq!(cl.send(&bytes), Drive::WaitRead);
    let [d] = &cl.dispatched[..] else {
        panic!("{:?}", cl.dispatched)
    };
    assert!(d.head.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{}", d.head);
    assert!(host_line(d), ":authority becomes Host: {}", d.head);
    assert!(d.head.contains("\r\naccept: x/y\r\n"), "{}", d.head);
    assert!(!d.https, "cleartext with no trusted proxy is http");
    assert!(d.body.is_empty());
    let frames = cl.frames();
    assert_eq!(frames[0].kind, SETTINGS, "the server's SETTINGS come first");
    let stream: Vec<Frame> = frames.into_iter().filter(|f| f.stream == 1).collect();
    assert_eq!(response(&stream), (200, b"OK".to_vec()));
    assert_eq!(cl.c.served(), 1);
    assert!(!cl.c.in_request, "no stream left in flight");
}

#[test]
fn two_concurrent_streams_each_come_out_when_their_body_ends() {
    let mut cl = Client::h2c();
    let mut bytes = opening();
    bytes.extend(headers(1, &request("POST", "/one", &[]), false));
    bytes.extend(headers(3, &request("POST", "/three", &[]), false));
    cl.send(&bytes);
    assert!(cl.dispatched.is_empty(), "no body has ended yet");
    assert!(cl.c.in_request);
    // The later stream ends first and is served while the first is still open.
    cl.send(&data(3, b"three", true));
    assert_eq!(cl.dispatched.len(), 1);
    assert!(cl.dispatched[0].head.starts_with("POST /three "));
    assert_eq!(response(&cl.stream_frames(3)).0, 200);
    cl.send(&[data(1, b"on", false), data(1, b"e", true)].concat());
    let bodies: Vec<(&str, &[u8])> = cl
        .dispatched
        .iter()
        .map(|d| (d.head.split(' ').nth(1).unwrap(), &d.body[..]))
        .collect();
    assert_eq!(
        bodies,
        vec![("/three", &b"three"[..]), ("/one", &b"one"[..])]
    );
    assert!(cl.dispatched[1].head.contains("\r\ncontent-length: 3\r\n"));
    assert_eq!(response(&cl.stream_frames(1)).0, 200);
}

#[test]
fn a_body_in_data_frames_cut_at_every_byte_arrives_whole_once() {
    let mut ctx = Some(shared());
    let mut head = opening();
    head.extend(headers(1, &request("PUT", "/up", &[]), false));
    let body = [
        data(1, b"hel", false),
        data(1, b"lo", false),
        data(1, b"", true),
    ]
    .concat();
    for cut in 0..body.len() {
        let mut cl = Client::new(ctx.take().unwrap());
        cl.ctx.settings.http2_cleartext = true;
        cl.send(&head);
        cl.send(&body[..cut]);
        assert!(cl.dispatched.is_empty(), "cut at {cut}");
        cl.send(&body[cut..]);
        let [d] = &cl.dispatched[..] else {
            panic!("cut at {cut}: {:?}", cl.dispatched)
        };
        assert_eq!(d.body, b"hello", "cut at {cut}");
        assert!(d.head.contains("\r\ncontent-length: 5\r\n"), "cut at {cut}");
        ctx = Some(cl.ctx);
    }
}

#[test]
fn the_fuzz_harness_serves_streams_whose_bytes_are_cut_anywhere() {
    let mut stream = opening();
    stream.extend(headers(1, &request("GET", "/", &[]), true));
    stream.extend(headers(3, &request("POST", "/b", &[]), false));
    stream.extend(data(3, b"body", true));
    for cut in 0..stream.len() {
        let out = drive_h2_stream(&stream, &[cut]);
        assert_eq!(out.dispatched, 2, "cut at {cut}");
        assert!(out.closed, "cut at {cut}");
        let answered = parse_frames(&out.answered);
        let statuses: Vec<(u32, u16)> = answered
            .iter()
            .filter(|f| f.kind == HEADERS)
            .map(|f| (f.stream, f.status()))
            .collect();
        assert_eq!(statuses, vec![(1, 200), (3, 200)], "cut at {cut}");
    }
}

#[test]
fn a_broken_preface_is_http1_and_gets_an_error_answer_never_a_dispatch() {
    // The preface's first line with a wrong second half: HTTP/1's parser has it.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec();
    bytes.extend(headers(1, &request("GET", "/", &[]), true));
    let out = drive_h2_stream(&bytes, &[]);
    assert_eq!(out.dispatched, 0);
    assert!(out.closed);
    let text = String::from_utf8_lossy(&out.answered);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
}

/// The error code of the one GOAWAY a connection sent for `frames` after the opening,
/// which must close it with no stream dispatched (a stream follows them).
fn goaway_for(frames: &[u8]) -> u32 {
    let mut cl = Client::h2c();
    let mut bytes = opening();
    bytes.extend_from_slice(frames);
    bytes.extend(headers(1, &request("GET", "/", &[]), true));
    assert_eq!(cl.send(&bytes), Drive::Close);
    assert!(cl.dispatched.is_empty());
    let mut goaway: Vec<Frame> = cl.frames();
    goaway.retain(|f| f.kind == GOAWAY);
    assert_eq!(goaway.len(), 1, "{goaway:?}");
    goaway[0].code()
}

#[test]
fn a_malformed_frame_gets_goaway_and_a_close_without_dispatch() {
    // A SETTINGS payload must be a multiple of six bytes (RFC 9113 6.5; h2 calls
    // it a PROTOCOL_ERROR).
    let settings = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 1]);
    assert_eq!(goaway_for(&settings), PROTOCOL_ERROR);
    // HEADERS on stream 0, which no request can use.
    let headers_0 = headers(0, &request("GET", "/", &[]), true);
    assert_eq!(goaway_for(&headers_0), PROTOCOL_ERROR);
}

#[test]
fn disagreeing_scheme_headers_from_a_trusted_proxy_get_400_over_h2c() {
    let mut cl = Client::h2c();
    cl.ctx.settings.secure_scheme_headers = vec![
        ("x-forwarded-proto".into(), "https".into()),
        ("x-forwarded-ssl".into(), "on".into()),
    ];
    cl.c.peer.trusted = true;
    let mut bytes = opening();
    let disagree = [("x-forwarded-proto", "https"), ("x-forwarded-ssl", "off")];
    bytes.extend(headers(1, &request("GET", "/mixed", &disagree), true));
    let agree = [("x-forwarded-proto", "https"), ("x-forwarded-ssl", "on")];
    bytes.extend(headers(3, &request("GET", "/secure", &agree), true));
    bytes.extend(headers(5, &request("GET", "/plain", &[]), true));
    cl.send(&bytes);
    let seen: Vec<(&str, bool)> = cl
        .dispatched
        .iter()
        .map(|d| (d.head.split(' ').nth(1).unwrap(), d.https))
        .collect();
    assert_eq!(seen, vec![("/secure", true), ("/plain", false)]);
    let frames = cl.frames();
    let on = |id: u32| -> Vec<&Frame> { frames.iter().filter(|f| f.stream == id).collect() };
    assert_eq!(on(1)[0].status(), 400);
    assert_eq!(on(3)[0].status(), 200);
    // Refused before the application, as over HTTP/1: not counted, not logged.
    assert_eq!(cl.c.served(), 2);
}

#[test]
fn a_complete_stream_reset_in_the_same_read_is_never_dispatched() {
    // Rapid reset (CVE-2023-44487): the whole request and its RST_STREAM in one read.
    let mut cl = Client::h2c();
    let mut bytes = opening();
    bytes.extend(headers(1, &request("GET", "/rapid", &[]), true));
    bytes.extend(u32_frame(RST_STREAM, 1, CANCEL));
    cl.send(&bytes);
    assert!(cl.dispatched.is_empty(), "{:?}", cl.dispatched);
    cl.send(&headers(3, &request("GET", "/next", &[]), true));
    assert_eq!(cl.dispatched.len(), 1);
    assert!(cl.dispatched[0].head.starts_with("GET /next "));
}

#[test]
fn a_stream_reset_by_the_client_before_its_body_ends_is_never_dispatched() {
    let mut cl = Client::h2c();
    let mut bytes = opening();
    bytes.extend(headers(1, &request("POST", "/cancelled", &[]), false));
    bytes.extend(data(1, b"part", false));
    cl.send(&bytes);
    assert!(cl.c.in_request);
    cl.send(&u32_frame(RST_STREAM, 1, CANCEL));
    assert!(cl.dispatched.is_empty());
    assert!(!cl.c.in_request, "the reset stream is forgotten");
    // The connection lives on for the next stream; stream 1 got no answer.
    cl.send(&headers(3, &request("GET", "/next", &[]), true));
    assert_eq!(cl.dispatched.len(), 1);
    assert!(cl.dispatched[0].head.starts_with("GET /next "));
    let frames = cl.frames();
    assert!(frames.iter().all(|f| f.stream != 1), "{frames:?}");
    assert_eq!(cl.c.served(), 1);
}

#[test]
fn a_response_held_by_a_closed_window_goes_out_with_window_update() {
    let mut cl = Client::h2c();
    let mut bytes = PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream data until the client says so.
    bytes.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    bytes.extend(headers(1, &request("GET", "/", &[]), true));
    cl.send(&bytes);
    assert_eq!(cl.dispatched.len(), 1);
    let held = cl.stream_frames(1);
    assert_eq!(held.len(), 1, "the head only: {held:?}");
    assert_eq!(held[0].status(), 200);
    assert!(cl.c.in_request, "the response is still in flight");
    cl.send(&u32_frame(WINDOW_UPDATE, 1, 1));
    let first = cl.stream_frames(1);
    assert_eq!((first.len(), &first[0].payload[..]), (1, &b"O"[..]));
    cl.send(&u32_frame(WINDOW_UPDATE, 1, 10));
    let rest = cl.stream_frames(1);
    assert_eq!(rest.last().unwrap().flags & END_STREAM, END_STREAM);
    let body: Vec<u8> = rest.iter().flat_map(|f| f.payload.clone()).collect();
    assert_eq!(body, b"K");
    assert!(!cl.c.in_request);
}

#[test]
fn a_client_goaway_lets_its_streams_finish_then_closes() {
    let mut cl = Client::h2c();
    let mut bytes = opening();
    bytes.extend(headers(1, &request("GET", "/last", &[]), true));
    bytes.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
    let d = cl.send(&bytes);
    assert_eq!(cl.dispatched.len(), 1);
    assert_eq!(response(&cl.stream_frames(1)).0, 200);
    let d = if d == Drive::Close { d } else { cl.send(&[]) };
    assert_eq!(d, Drive::Close);
}
