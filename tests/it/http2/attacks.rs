//! The HTTP/2 attacks, each answered without harm to an honest client: rapid reset
//! (CVE-2023-44487), CONTINUATION flood (CVE-2024-27316), an HPACK bomb, a PING flood
//! and a SETTINGS flood. The hostile frames are written raw. Rapid reset and a body
//! that never comes are tried against an ASGI worker too, and so is an extended
//! CONNECT (RFC 8441), which is refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{fetch, h2c_server, h2c_server_of, with_h2, Kind, PREFACE};
use crate::support::Server;

/// One frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// A literal header field without indexing (RFC 7541 6.2.2), short lengths only.
fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name);
    push_length(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

/// An HPACK string length with a 7-bit prefix (no Huffman).
fn push_length(out: &mut Vec<u8>, n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    let mut rest = n - 127;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// `:method GET`, `:scheme http`, `:path` (static table), `:authority` literal.
fn request_block(path: &[u8]) -> Vec<u8> {
    let mut out = vec![0x82, 0x86];
    out.extend(literal(b":path", path));
    out.extend(literal(b":authority", b"127.0.0.1"));
    out
}

/// A raw connection that has sent the preface and an empty SETTINGS frame.
fn raw(server: &Server) -> TcpStream {
    let mut s = server.connect();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    s
}

/// Writes `frames` until the server stops taking them, then reads until it closes;
/// true when it closed (or reset) the connection within `limit`.
fn closes_while_flooded(
    mut s: TcpStream,
    mut next: impl FnMut() -> Vec<u8>,
    limit: Duration,
) -> bool {
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let start = Instant::now();
    while start.elapsed() < limit {
        if s.write_all(&next()).is_err() {
            return true;
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
        if start.elapsed() > limit * 2 {
            return false;
        }
    }
}

fn honest_client_is_served(server: &Server) {
    let status = with_h2(server.port, |mut send| async move {
        fetch(&mut send, "GET", "/echo", &[], b"").await.0
    });
    assert_eq!(status, 201, "{}", server.log());
    assert_eq!(server.get("/echo").status, 201);
}

#[test]
fn a_continuation_flood_ends_the_connection_and_honest_clients_are_served() {
    let server = h2c_server(&[]);
    let mut s = raw(&server);
    s.write_all(&frame(HEADERS, END_STREAM, 1, &request_block(b"/echo")))
        .unwrap();
    let field = literal(b"x-flood", &[b'a'; 1000]);
    let closed = closes_while_flooded(
        s,
        || frame(CONTINUATION, 0, 1, &field),
        Duration::from_secs(5),
    );
    assert!(
        closed,
        "the flood was taken for 5 s without the connection ending"
    );
    assert!(!server.access_log().contains("x-flood"));
    honest_client_is_served(&server);
}

#[test]
fn an_hpack_bomb_never_reaches_the_app_and_honest_clients_are_served() {
    // One 4000-byte value into the dynamic table, then 16,000 one-byte references to
    // it: 64 MB of headers from 16 KB on the wire.
    let server = h2c_server(&[]);
    let mut s = raw(&server);
    let mut block = request_block(b"/echo?bomb");
    block.extend([0x40, 3]);
    block.extend_from_slice(b"x-b");
    push_length(&mut block, 4000);
    block.extend(std::iter::repeat_n(b'b', 4000));
    let refs: Vec<u8> = std::iter::repeat_n(0xbe, 12_000).collect();
    s.write_all(&frame(HEADERS, END_STREAM, 1, &block)).unwrap();
    // The block's rest in CONTINUATION frames within the default 16 KB frame size.
    let chunks: Vec<&[u8]> = refs.chunks(4000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let flags = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        let _ = s.write_all(&frame(CONTINUATION, flags, 1, chunk));
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !server.access_log().contains("bomb"),
        "the app saw the bomb: {}",
        server.access_log()
    );
    honest_client_is_served(&server);
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    // PINGs from a client that reads none of the answers: rgun stops reading once its
    // answers back up (bounded buffers), so the flood costs bounded memory.
    let server = h2c_server(&[]);
    let s = raw(&server);
    let ping = frame(PING, 0, 0, &[7u8; 8]).repeat(1000);
    let _ = closes_while_flooded(s, || ping.clone(), Duration::from_secs(3));
    honest_client_is_served(&server);
}

#[test]
fn a_settings_flood_is_bounded_and_honest_clients_are_served() {
    let server = h2c_server(&[]);
    let s = raw(&server);
    let settings = frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]).repeat(1000);
    let _ = closes_while_flooded(s, || settings.clone(), Duration::from_secs(3));
    honest_client_is_served(&server);
}

#[test]
fn rapid_reset_streams_never_reach_the_app_and_honest_clients_are_served() {
    rapid_reset(Kind::Wsgi);
}

#[test]
fn rapid_reset_streams_never_reach_an_asgi_app() {
    rapid_reset(Kind::Asgi);
}

fn rapid_reset(kind: Kind) {
    let server = h2c_server_of(kind, &[]);
    let port = server.port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        for _ in 0..2000 {
            let Ok(ready) = send.clone().ready().await else {
                break;
            };
            send = ready;
            let req = http::Request::post("http://127.0.0.1/echo?reset")
                .body(())
                .unwrap();
            // A body is announced and never sent: the stream is reset before it is
            // complete, so no application call is owed for it.
            match send.send_request(req, false) {
                Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(_) => break,
            }
        }
        drop(send);
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    });
    std::thread::sleep(Duration::from_millis(200));
    let ran = server.access_log().matches("reset").count();
    eprintln!("{kind:?}: reset streams that reached the app: {ran}");
    assert!(ran <= 100, "{kind:?}: reset streams ran the app: {ran}");
    honest_client_is_served(&server);
}

#[test]
fn a_stream_that_never_sends_its_body_is_reset_at_the_request_deadline() {
    never_sent_body(Kind::Wsgi);
}

#[test]
fn an_asgi_stream_that_never_sends_its_body_is_reset_at_the_request_deadline() {
    never_sent_body(Kind::Asgi);
}

fn never_sent_body(kind: Kind) {
    let server = h2c_server_of(kind, &["--timeout", "2"]);
    let port = server.port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ended = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let req = http::Request::post("http://127.0.0.1/echo?stalled")
            .body(())
            .unwrap();
        let (response, _body_never_sent) = send.send_request(req, false).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(15), response).await;
        // The connection lives on for its other streams.
        let after = fetch(&mut send, "GET", "/echo", &[], b"").await.0;
        (ended, after)
    });
    let (ended, after) = ended;
    let ended = ended.expect("the stalled stream was ended within 15 s");
    assert!(ended.is_err(), "no response for a body that never came");
    assert_eq!(after, 201, "the same connection serves on");
    assert!(!server.access_log().contains("stalled"));
    honest_client_is_served(&server);
}

#[test]
fn an_extended_connect_is_refused_and_never_reaches_the_app() {
    extended_connect_refused(Kind::Wsgi);
}

#[test]
fn an_extended_connect_to_an_asgi_worker_is_refused() {
    extended_connect_refused(Kind::Asgi);
}

/// RFC 8441's WebSocket over HTTP/2 (`:protocol`) is not offered: the stream is reset
/// (or the connection ended), no response head comes, the application never runs.
fn extended_connect_refused(kind: Kind) {
    let server = h2c_server_of(kind, &[]);
    let mut s = raw(&server);
    let mut block = literal(b":method", b"CONNECT");
    block.extend(literal(b":protocol", b"websocket"));
    block.push(0x86);
    block.extend(literal(b":path", b"/echo?extended-connect"));
    block.extend(literal(b":authority", b"127.0.0.1"));
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &block))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = Vec::new();
    let mut header = [0u8; 9];
    let refused = loop {
        if s.read_exact(&mut header).is_err() {
            break true;
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        seen.push((header[3], stream));
        match (header[3], stream) {
            (1, 1) => break false,
            (RST_STREAM, 1) | (GOAWAY, _) => break true,
            _ => {}
        }
    };
    assert!(refused, "{kind:?}: frames seen (type, stream): {seen:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !server.access_log().contains("extended-connect"),
        "{kind:?}: the app saw it: {}",
        server.access_log()
    );
    honest_client_is_served(&server);
}
