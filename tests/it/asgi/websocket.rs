//! WebSockets under `-k asgi`: the handshake, messages both ways, fragments, pings,
//! close codes both ways, rejection and denial responses, bad frames (never reaching
//! the app), permessage-deflate, a graceful stop's 1001, a stalled reader, a thousand
//! sockets, and FastAPI's WebSocket endpoint.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::fastapi::fastapi;
use super::{asgi, counters, server};
use crate::support::{wait_until, Server};

pub(super) const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Opens a WebSocket; returns the stream and the response head.
pub(super) fn ws_open(s: &Server, path: &str, extra: &str) -> (std::net::TcpStream, String) {
    let mut c = s.connect();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (c, String::from_utf8(head).unwrap())
}

/// A masked client frame.
pub(super) fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one server frame: (opcode, payload). Server frames are final, unmasked and
/// (here) uncompressed.
pub(super) fn ws_read(c: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    let (first, payload) = ws_read_raw(c);
    assert_eq!(first & 0x70, 0, "no reserved bits");
    (first & 0x0F, payload)
}

/// Reads one server frame: (its first byte, payload).
fn ws_read_raw(c: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    c.read_exact(&mut h).unwrap();
    assert_eq!(h[0] & 0x80, 0x80, "server frames are final");
    assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            c.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            c.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    c.read_exact(&mut payload).unwrap();
    (h[0], payload)
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[test]
fn websocket_handshake_echo_fragments_ping_and_close() {
    let s = server();
    let (mut c, head) = ws_open(
        &s,
        "/ws/echo",
        "Sec-WebSocket-Protocol: chat, superchat\r\n",
    );
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(head.contains("Sec-WebSocket-Protocol: chat\r\n"), "{head}");
    assert!(head.contains("x-ws: echo\r\n"), "{head}");
    c.write_all(&ws_frame(true, 0x1, "héllo".as_bytes()))
        .unwrap();
    assert_eq!(ws_read(&mut c), (0x1, "héllo".as_bytes().to_vec()));
    let big = vec![7u8; 100_000];
    c.write_all(&ws_frame(true, 0x2, &big)).unwrap();
    assert_eq!(ws_read(&mut c), (0x2, big));
    // A fragmented message with a ping in the middle: the pong comes first.
    let mut frames = ws_frame(false, 0x1, b"frag");
    frames.extend(ws_frame(true, 0x9, b"ping!"));
    frames.extend(ws_frame(true, 0x0, b"mented"));
    c.write_all(&frames).unwrap();
    assert_eq!(ws_read(&mut c), (0xA, b"ping!".to_vec()));
    assert_eq!(ws_read(&mut c), (0x1, b"fragmented".to_vec()));
    c.write_all(&ws_frame(true, 0x8, &[0x03, 0xe8])).unwrap();
    let (op, payload) = ws_read(&mut c);
    assert_eq!((op, close_code(&payload)), (0x8, 1000));
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(wait_until(Duration::from_secs(5), || counters(&s)
        ["ws_close"]
        == 1000));
    assert!(
        s.access_log().contains("\"GET /ws/echo HTTP/1.1\" 101"),
        "{}",
        s.access_log()
    );
}

#[test]
fn websocket_scope_rejection_and_server_close() {
    let s = server();
    let (mut c, head) = ws_open(&s, "/ws/scope?x=1", "Sec-WebSocket-Protocol: a, b\r\n");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (op, text) = ws_read(&mut c);
    assert_eq!(op, 0x1);
    let scope: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(scope["type"], "websocket");
    assert_eq!(scope["scheme"], "ws");
    assert_eq!(scope["path"], "/ws/scope");
    assert_eq!(scope["query_string"], "x=1");
    assert_eq!(scope["subprotocols"], serde_json::json!(["a", "b"]));
    assert!(scope.get("method").is_none());
    assert_eq!(close_code(&ws_read(&mut c).1), 1000);

    let (_, head) = ws_open(&s, "/ws/reject", "");
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    let (mut denied, head) = ws_open(&s, "/ws/deny", "");
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    assert!(head.contains("www-authenticate: Bearer\r\n"), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    let mut body = Vec::new();
    denied.read_to_end(&mut body).unwrap();
    assert_eq!(body, b"3\r\nno \r\n5\r\ntoken\r\n0\r\n\r\n");

    let (mut c, _) = ws_open(&s, "/ws/close", "");
    assert_eq!(ws_read(&mut c), (0x1, b"bye".to_vec()));
    let (op, payload) = ws_read(&mut c);
    assert_eq!(op, 0x8);
    assert_eq!(close_code(&payload), 4000);
    assert_eq!(&payload[2..], b"done");
    // A plain GET to a WebSocket route is not an upgrade.
    assert_eq!(s.get("/").text(), "Hello, ASGI!");
}

#[test]
fn bad_websocket_frames_close_with_the_rfc_codes_and_never_reach_the_app() {
    let s = asgi("asgi_app:app")
        .args(["--websocket-max-message-size", "1000"])
        .start();
    let unmasked = vec![0x81, 0x02, b'h', b'i'];
    let cases: [(Vec<u8>, u16); 4] = [
        (unmasked, 1002),
        (ws_frame(true, 0x1 | 0x40, b"rsv1"), 1002),
        (ws_frame(true, 0x1, &[0xff, 0xfe]), 1007),
        (ws_frame(true, 0x2, &[0u8; 1001]), 1009),
    ];
    for (frame, code) in cases {
        let (mut c, _) = ws_open(&s, "/ws/echo", "");
        c.write_all(&frame).unwrap();
        let (op, payload) = ws_read(&mut c);
        assert_eq!((op, close_code(&payload)), (0x8, code), "{frame:02x?}");
        assert!(
            wait_until(Duration::from_secs(5), || counters(&s)["ws_close"] == code),
            "the app hears {code}"
        );
    }
    // A message just within the limit is fine.
    let (mut c, _) = ws_open(&s, "/ws/echo", "");
    c.write_all(&ws_frame(true, 0x2, &[1u8; 1000])).unwrap();
    assert_eq!(ws_read(&mut c).1.len(), 1000);
}

#[test]
fn a_thousand_concurrent_websockets_in_one_worker() {
    // Each open WebSocket is a connection in flight: room for them and for others.
    let s = asgi("asgi_app:app")
        .args(["--worker-connections", "2000"])
        .start();
    let mut sockets: Vec<_> = (0..1000).map(|_| ws_open(&s, "/ws/echo", "").0).collect();
    for (i, c) in sockets.iter_mut().enumerate() {
        c.write_all(&ws_frame(true, 0x1, format!("n{i}").as_bytes()))
            .unwrap();
    }
    for (i, c) in sockets.iter_mut().enumerate() {
        assert_eq!(ws_read(c), (0x1, format!("n{i}").into_bytes()));
    }
    let started = Instant::now();
    assert_eq!(s.get("/").text(), "Hello, ASGI!");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn fastapi_websocket_echo() {
    let s = fastapi();
    let (mut c, head) = ws_open(&s, "/ws", "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    for word in ["one", "two"] {
        c.write_all(&ws_frame(true, 0x1, word.as_bytes())).unwrap();
        assert_eq!(ws_read(&mut c), (0x1, word.to_uppercase().into_bytes()));
    }
    c.write_all(&ws_frame(true, 0x8, &[0x0f, 0xa0])).unwrap();
    assert_eq!(close_code(&ws_read(&mut c).1), 4000);
    assert!(wait_until(Duration::from_secs(5), || s
        .get("/events")
        .json()
        .as_array()
        .is_some_and(
            |e| e.contains(&serde_json::json!("ws closed 4000"))
        )));
}

/// A graceful stop does not wait out open WebSockets: they close with 1001 at once.
#[test]
fn a_graceful_stop_closes_open_websockets_with_1001() {
    let mut s = server();
    let (mut c, _) = ws_open(&s, "/ws/echo", "");
    c.write_all(&ws_frame(true, 0x1, b"hi")).unwrap();
    assert_eq!(ws_read(&mut c).1, b"hi");
    let started = Instant::now();
    s.signal(libc::SIGTERM);
    let (op, payload) = ws_read(&mut c);
    assert_eq!((op, close_code(&payload)), (0x8, 1001));
    assert_eq!(&payload[2..], b"server shutting down");
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0));
    crate::support::assert_within(started, Duration::from_secs(5));
}

/// permessage-deflate (RFC 7692), which Uvicorn has and Granian does not: agreed
/// without context takeover, compressed messages both ways.
#[test]
fn websocket_permessage_deflate() {
    use rgun::http::ws_deflate::{deflate, inflate, ACCEPTED};
    let s = server();
    let (mut c, head) = ws_open(
        &s,
        "/ws/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    assert!(
        head.contains(&format!("Sec-WebSocket-Extensions: {ACCEPTED}\r\n")),
        "{head}"
    );
    let text = "compress me, ".repeat(200);
    for _ in 0..2 {
        c.write_all(&ws_frame(true, 0x1 | 0x40, &deflate(text.as_bytes())))
            .unwrap();
        let (first, payload) = ws_read_raw(&mut c);
        assert_eq!(first, 0x80 | 0x40 | 0x1, "a compressed text frame");
        assert!(payload.len() < text.len() / 10, "{} bytes", payload.len());
        assert_eq!(inflate(&payload, 1 << 20).unwrap(), text.as_bytes());
    }
    // Uncompressed messages are fine too, and short answers go out as they are.
    c.write_all(&ws_frame(true, 0x1, b"short")).unwrap();
    assert_eq!(ws_read(&mut c), (0x1, b"short".to_vec()));
    // Without an offer, RSV1 is a protocol error.
    let (mut plain, head) = ws_open(&s, "/ws/echo", "");
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
    plain
        .write_all(&ws_frame(true, 0x1 | 0x40, &deflate(b"x")))
        .unwrap();
    assert_eq!(close_code(&ws_read(&mut plain).1), 1002);
}

/// A WebSocket client that stops reading suspends the application's `send()`.
#[test]
fn a_stalled_websocket_reader_suspends_send() {
    const MESSAGES: usize = 512; // 32 MiB
    let s = server();
    let (mut c, _) = ws_open(&s, "/ws/flood?512", "");
    std::thread::sleep(Duration::from_millis(1500));
    let sent = counters(&s)["ws_sent"].as_u64().unwrap() as usize;
    assert!(
        sent < 200,
        "{sent} of {MESSAGES} messages sent to a reader that stalled"
    );
    for _ in 0..MESSAGES {
        assert_eq!(ws_read(&mut c).1.len(), 65536);
    }
    assert_eq!(ws_read(&mut c).0, 0x8);
    assert_eq!(counters(&s)["ws_sent"].as_u64().unwrap() as usize, MESSAGES);
}

/// WebSockets that dribble partial frames, or sit idle, cost a socket each, never the
/// loop: honest requests stay fast beside them.
#[test]
fn dribbling_and_idle_websockets_do_not_delay_honest_requests() {
    let s = server();
    let frame = ws_frame(true, 0x1, &[b'd'; 1000]);
    let mut dribblers: Vec<_> = (0..30).map(|_| ws_open(&s, "/ws/echo", "").0).collect();
    let _idle: Vec<_> = (0..300).map(|_| ws_open(&s, "/ws/echo", "").0).collect();
    for piece in frame.chunks(50) {
        for c in &mut dribblers {
            c.write_all(piece).unwrap();
        }
        let started = Instant::now();
        assert_eq!(s.get("/").text(), "Hello, ASGI!");
        crate::support::assert_within(started, Duration::from_secs(1));
    }
    for c in &mut dribblers {
        assert_eq!(ws_read(c).1.len(), 1000);
    }
}
