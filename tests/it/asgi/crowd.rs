//! Ten thousand idle WebSockets in one ASGI worker: each costs a socket and a
//! waiting task, never the loop, so honest requests stay within the hostile tests'
//! bound beside them, and the idle sockets still answer afterwards.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::asgi;
use super::websocket::{ws_frame, ws_read, WS_KEY};
use crate::hostile::raise_nofile;
use crate::support::{rss_bytes, wait_until, Server};

const IDLE: usize = 10_000;
/// The bound the hostile tests hold honest requests to beside slow clients.
const HONEST_LIMIT: Duration = Duration::from_secs(3);

/// Opens a WebSocket with one read for the 101 (the application sends nothing more
/// until spoken to), so ten thousand handshakes take seconds, not minutes.
fn ws_open_quick(s: &Server) -> std::net::TcpStream {
    let mut c = s.connect();
    write!(
        c,
        "GET /ws/echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed during the handshake");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c
}

/// An honest request on a fresh connection; how long its answer took.
fn honest(s: &Server) -> Duration {
    let started = Instant::now();
    assert_eq!(s.get("/").text(), "Hello, ASGI!");
    started.elapsed()
}

#[test]
fn ten_thousand_idle_websockets_do_not_delay_honest_requests() {
    let limit = raise_nofile();
    assert!(
        limit >= IDLE as u64 + 500,
        "RLIMIT_NOFILE hard limit is {limit}: too low for {IDLE} WebSockets (raise it with ulimit -Hn)"
    );
    // rgun inherits the raised limit (each end holds its own 10,000 descriptors); an
    // open WebSocket is a connection in flight, hence --worker-connections.
    let s = asgi("asgi_app:app")
        .args(["--worker-connections", &(IDLE + 100).to_string()])
        .start();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut sockets = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {i} WebSockets opened in 120 s"
        );
        sockets.push(ws_open_quick(&s));
        if i % 1000 == 999 {
            let took = honest(&s);
            assert!(took < HONEST_LIMIT, "beside {} WebSockets: {took:?}", i + 1);
            worst = worst.max(took);
        }
    }
    let opened_in = started.elapsed();
    for _ in 0..5 {
        let took = honest(&s);
        assert!(
            took < HONEST_LIMIT,
            "beside {IDLE} idle WebSockets: {took:?}"
        );
        worst = worst.max(took);
    }
    // Idle is not dead: the first and the last still echo.
    for c in [0, IDLE - 1] {
        sockets[c]
            .write_all(&ws_frame(true, 0x1, format!("still {c}").as_bytes()))
            .unwrap();
        assert_eq!(
            ws_read(&mut sockets[c]),
            (0x1, format!("still {c}").into_bytes())
        );
    }
    let worker = s.worker_pids()[0];
    println!(
        "{IDLE} idle WebSockets: opened in {opened_in:?}; worst honest request {worst:?}; worker RSS {} MiB",
        rss_bytes(worker) / (1024 * 1024)
    );
    // Once the crowd has left (ten thousand disconnects to deliver to the
    // application: a burst of work, bounded but not what this test times), the worker
    // is healthy.
    drop(sockets);
    let mut last = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            last = s.status();
            last["result"]["workers"][0]["connections"]
                .as_u64()
                .is_some_and(|n| n <= 1)
        }),
        "the worker still holds the crowd: {last}"
    );
    let took = honest(&s);
    assert!(took < HONEST_LIMIT, "after the crowd left: {took:?}");
}
