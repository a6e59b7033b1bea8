//! ASGI 3 workers against `tests/apps/asgi_app.py`: `-k` names, the refusal of an ASGI
//! app under the WSGI worker, the HTTP scope, request bodies through `receive()`,
//! `http.disconnect`, streaming under backpressure, application errors, the lifespan
//! protocol, and `--timeout` watching the loop's heartbeat.

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

use crate::support::{read_response, rss_bytes, wait_until, Server, ServerBuilder};

fn asgi(app: &str) -> ServerBuilder {
    ServerBuilder::new(app).args(["-k", "asgi"])
}

fn server() -> Server {
    asgi("asgi_app:app").start()
}

fn counters(s: &Server) -> serde_json::Value {
    s.get("/counters").json()
}

#[test]
fn every_asgi_worker_name_serves_an_asgi_app() {
    for class in [
        "asgi",
        "uvicorn.workers.UvicornWorker",
        "uvicorn_worker.UvicornWorker",
        "uvicorn.workers.UvicornH11Worker",
    ] {
        let s = ServerBuilder::new("asgi_app:app")
            .args(["-k", class])
            .start();
        let r = s.get("/");
        assert_eq!(r.status, 200, "-k {class}");
        assert_eq!(r.text(), "Hello, ASGI!", "-k {class}");
        assert!(s.log().contains("Using worker: rgun asgi"), "{}", s.log());
    }
}

#[test]
fn an_asgi_app_without_k_asgi_is_refused_at_import_with_the_fix() {
    for app in ["asgi_app:app", "asgi_app:instance"] {
        let mut s = ServerBuilder::new(app).no_wait().start();
        assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(4), "{app}");
        let log = s.log();
        assert!(
            log.contains(&format!(
                "{app} is an ASGI application: run it with -k asgi"
            )),
            "{log}"
        );
    }
}

#[test]
fn the_scope_is_complete_and_typed() {
    let s = server();
    let r = s.request(
        b"GET /sc%6fpe?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\nX-Dup: a\r\nX-Dup: b\r\nX-Mixed-Case: V\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let e = r.json();
    assert_eq!(e["type"], "http");
    assert_eq!(
        e["asgi"],
        serde_json::json!({"version": "3.0", "spec_version": "2.4"})
    );
    assert_eq!(e["http_version"], "1.1");
    assert_eq!(e["method"], "GET");
    assert_eq!(e["scheme"], "http");
    assert_eq!(e["path"], "/scope");
    assert_eq!(e["raw_path"], "/sc%6fpe");
    assert_eq!(e["query_string"], "x=1&y=%20");
    assert_eq!(e["root_path"], "");
    let headers = e["headers"].as_array().unwrap();
    assert!(headers.contains(&serde_json::json!(["host", "example.com:8080"])));
    assert!(headers.contains(&serde_json::json!(["x-dup", "a"])));
    assert!(headers.contains(&serde_json::json!(["x-dup", "b"])));
    assert!(headers.contains(&serde_json::json!(["x-mixed-case", "V"])));
    assert_eq!(e["client"][0], "127.0.0.1");
    assert!(e["client"][1].as_u64().is_some_and(|p| p > 0));
    assert_eq!(e["server"], serde_json::json!(["127.0.0.1", s.port]));
    assert_eq!(
        e["types"],
        serde_json::json!({"raw_path": "bytes", "query_string": "bytes", "header_pair": "bytes", "client": "tuple", "server_port": "int"})
    );
}

#[test]
fn root_path_prefixes_path_and_raw_path() {
    let s = asgi("asgi_app:app").args(["--root-path", "/api"]).start();
    let e = s.get("/scope").json();
    assert_eq!(e["root_path"], "/api");
    assert_eq!(e["path"], "/api/scope");
    assert_eq!(e["raw_path"], "/api/scope");
}

/// `secure_scheme_headers` as for WSGI: honoured from a trusted peer (loopback is in
/// the default `--forwarded-allow-ips`), ignored from others.
#[test]
fn forwarded_scheme_follows_the_wsgi_trust_rules() {
    let trusted = server();
    let https =
        b"GET /scope HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
    assert_eq!(trusted.request(https).json()["scheme"], "https");
    let untrusted = asgi("asgi_app:app")
        .args(["--forwarded-allow-ips", "10.9.9.9"])
        .start();
    assert_eq!(untrusted.request(https).json()["scheme"], "http");
    let contradictory = trusted.request(
        b"GET /scope HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(contradictory.status, 400);
}

#[test]
fn http10_keepalive_pipelining_and_head() {
    let s = server();
    let mut c = s.connect();
    c.write_all(
        b"GET /scope HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(c);
    let first = read_response(&mut r, false).unwrap();
    assert_eq!(first.json()["http_version"], "1.0");
    assert!(
        first.header("content-length").is_some(),
        "HTTP/1.0 keep-alive needs a length"
    );
    let second = read_response(&mut r, false).unwrap();
    assert_eq!(second.text(), "Hello, ASGI!");
    // As for WSGI: a HEAD response keeps an application's Content-Length and sends
    // no body; this one declared none.
    let head = read_response(&mut r, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), None);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "a HEAD response has no body: {rest:?}");
}

#[test]
fn request_bodies_arrive_through_receive() {
    let s = server();
    let small = s.request(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(small.body, b"hello");
    assert_eq!(small.header("x-messages"), Some("1"));
    let chunked = s.request(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    );
    assert_eq!(chunked.body, b"abcde");
    // Past the spill threshold (1 MiB) the body is read from the file in pieces, each
    // a bounded http.request message with more_body.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut raw = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    )
    .into_bytes();
    raw.extend_from_slice(&big);
    let r = s.request(&raw);
    assert_eq!(r.status, 200);
    assert!(
        r.body == big,
        "echoed body differs ({} bytes)",
        r.body.len()
    );
    let messages: usize = r.header("x-messages").unwrap().parse().unwrap();
    assert!(messages > 40, "{messages} messages for 3 MB");
}

#[test]
fn a_client_that_leaves_is_an_http_disconnect() {
    let s = server();
    let mut c = s.connect();
    c.write_all(b"GET /wait-disconnect HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || counters(&s)
        ["waiting"]
        == 1));
    assert_eq!(counters(&s)["disconnects"], 0);
    drop(c);
    assert!(
        wait_until(Duration::from_secs(10), || counters(&s)["disconnects"] == 1),
        "{}",
        s.log()
    );
    assert!(
        !s.log().contains("without starting response"),
        "{}",
        s.log()
    );
}

/// A client that stops reading a long stream suspends the application's `send()`:
/// the worker holds socket buffers and one high-water mark, never the stream, and
/// keeps serving others meanwhile.
#[test]
fn a_stalled_reader_suspends_send_instead_of_buffering_the_stream() {
    const CHUNKS: usize = 1024; // 64 MiB
    let s = server();
    let worker = s.worker_pids()[0];
    let before = rss_bytes(worker);
    let mut c = s.connect();
    c.write_all(
        format!("GET /stream?{CHUNKS} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut first = [0u8; 1];
    c.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let sent = counters(&s)["chunks_sent"].as_u64().unwrap() as usize;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "others wait while a reader stalls"
    );
    // Loopback socket buffers take a few MiB; the rest must wait in the app.
    assert!(
        sent < 256,
        "{sent} of {CHUNKS} chunks sent to a reader that stalled"
    );
    let grown = rss_bytes(worker).saturating_sub(before);
    assert!(grown < 24 << 20, "worker grew {grown} bytes");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    let body_bytes = CHUNKS * 65536;
    assert!(rest.len() > body_bytes, "{} bytes", rest.len());
    assert!(rest.ends_with(b"\r\n0\r\n\r\n"), "the stream ends properly");
    assert_eq!(
        counters(&s)["chunks_sent"].as_u64().unwrap() as usize,
        CHUNKS
    );
}

#[test]
fn application_errors_are_a_500_before_the_response_and_a_cut_after() {
    let s = server();
    let r = s.get("/raise-before");
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "Internal Server Error");
    assert_eq!(r.header("connection"), Some("close"));
    s.wait_for_log(
        "RuntimeError: boom before the response",
        Duration::from_secs(5),
    );
    let log = s.log();
    assert!(
        log.contains("Exception in ASGI application\nTraceback"),
        "{log}"
    );

    let cut = s.exchange(b"GET /raise-after HTTP/1.1\r\nHost: a\r\n\r\n");
    let text = String::from_utf8_lossy(&cut);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("partial"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a failed stream must not end properly: {text:?}"
    );
    s.wait_for_log("RuntimeError: boom mid-response", Duration::from_secs(5));

    assert_eq!(s.get("/no-response").status, 500);
    s.wait_for_log(
        "ASGI callable returned without starting response.",
        Duration::from_secs(5),
    );
    let injected = s.exchange(b"GET /bad-header HTTP/1.1\r\nHost: a\r\n\r\n");
    let text = String::from_utf8_lossy(&injected);
    assert!(text.starts_with("HTTP/1.1 500 "), "{text}");
    assert!(!text.contains("Injected"), "{text}");
    let retried = s.exchange(b"GET /bad-header-retried HTTP/1.1\r\nHost: a\r\n\r\n");
    let text = String::from_utf8_lossy(&retried);
    assert!(text.starts_with("HTTP/1.1 500 "), "{text}");
    assert!(!text.contains("never"), "{text}");
    s.wait_for_log("the response head was refused", Duration::from_secs(5));
    // The worker is fine afterwards.
    assert_eq!(s.get("/").text(), "Hello, ASGI!");
}

#[test]
fn waiting_applications_run_concurrently_in_one_worker() {
    let s = server();
    let started = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let mut c = s.connect();
            c.write_all(b"GET /sleep HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    for c in clients {
        let r = read_response(&mut BufReader::new(c), false).unwrap();
        assert_eq!(r.text(), "slept");
    }
    // 20 x 50 ms one after the other would be a second.
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn pathsend_sends_the_file() {
    let s = server();
    let r = s.get("/pathsend");
    let file = std::fs::read(crate::support::apps_dir().join("asgi_app.py")).unwrap();
    assert_eq!(
        r.header("content-length"),
        Some(file.len().to_string().as_str())
    );
    assert!(r.body == file);
}

#[test]
fn lifespan_state_reaches_every_request_scope() {
    let s = server();
    let worker = s.worker_pids()[0];
    let e = s.get("/scope").json();
    assert_eq!(e["state"]["started_by"], worker);
    assert!(
        s.log().contains("Application startup complete."),
        "{}",
        s.log()
    );
}

#[test]
fn lifespan_off_never_runs_it() {
    let s = asgi("asgi_app:app")
        .args(["--asgi-lifespan", "off"])
        .start();
    assert_eq!(s.get("/scope").json()["state"], serde_json::json!({}));
    assert!(
        !s.log().contains("Waiting for application startup"),
        "{}",
        s.log()
    );
}

#[test]
fn a_failed_lifespan_startup_stops_start_up_with_its_message() {
    let mut s = asgi("asgi_app:failing_startup").no_wait().start();
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(4));
    let log = s.log();
    assert!(
        log.contains("Application startup failed. Exiting."),
        "{log}"
    );
    assert!(log.contains("database unreachable"), "{log}");
}

#[test]
fn an_app_without_lifespan_is_served_in_auto_mode_and_refused_in_on_mode() {
    let s = asgi("asgi_app:no_lifespan").start();
    assert_eq!(s.get("/").text(), "no lifespan here");
    assert!(
        s.log()
            .contains("ASGI 'lifespan' protocol appears unsupported."),
        "{}",
        s.log()
    );
    let mut on = asgi("asgi_app:no_lifespan")
        .args(["--asgi-lifespan", "on"])
        .no_wait()
        .start();
    assert_eq!(on.wait_exit(Duration::from_secs(20)), Some(4));
    let log = on.log();
    assert!(
        log.contains("Application startup failed. Exiting."),
        "{log}"
    );
    assert!(log.contains("ValueError: only http is supported"), "{log}");
}

#[test]
fn lifespan_shutdown_runs_on_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("shutdown");
    let mut s = asgi("asgi_app:app")
        .env("ASGI_SHUTDOWN_FILE", marker.to_str().unwrap())
        .start();
    let worker = s.worker_pids()[0];
    assert_eq!(s.get("/").status, 200);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0));
    let text = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(text, format!("shutdown {worker}\n"), "{}", s.log());
}

/// A long-poll is not a hung worker; a blocked event loop is.
#[test]
fn timeout_watches_the_loop_heartbeat_not_the_request_age() {
    let s = asgi("asgi_app:app").args(["--timeout", "2"]).start();
    let worker = s.worker_pids()[0];
    let mut c = s.connect();
    c.write_all(b"GET /wait-disconnect HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(s.get("/").text(), "Hello, ASGI!");
    assert_eq!(s.worker_pids(), vec![worker], "{}", s.log());
    assert!(!s.log().contains("WORKER TIMEOUT"), "{}", s.log());
    drop(c);
    let mut blocked = s.connect();
    blocked
        .write_all(b"GET /block?30 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    s.wait_for_log(
        &format!("WORKER TIMEOUT (pid:{worker})"),
        Duration::from_secs(15),
    );
}

/// Gunicorn 27's setting names in a configuration file.
#[test]
fn worker_class_root_path_and_lifespan_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = crate::support::write_file(
        dir.path(),
        "gunicorn.conf.py",
        "worker_class = 'uvicorn.workers.UvicornWorker'\nroot_path = '/mounted'\nasgi_lifespan = 'off'\n",
    );
    let s = ServerBuilder::new("asgi_app:app")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    let e = s.get("/scope").json();
    assert_eq!(e["root_path"], "/mounted");
    assert_eq!(e["state"], serde_json::json!({}));
}

/// The core's periodic work runs from an asyncio timer: an idle keep-alive connection
/// closes at --keep-alive with no event to wake the loop.
#[test]
fn idle_keepalive_connections_close_on_the_loop_timer() {
    let s = asgi("asgi_app:app").args(["--keep-alive", "1"]).start();
    let mut c = s.connect();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut r = BufReader::new(c);
    assert_eq!(read_response(&mut r, false).unwrap().text(), "Hello, ASGI!");
    let idle = Instant::now();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
}

/// Slow clients cost a socket, never the event loop: honest requests stay fast while
/// dozens of connections dribble heads and bodies.
#[test]
fn slow_clients_do_not_delay_honest_requests() {
    let s = server();
    let mut slow = Vec::new();
    for i in 0..40 {
        let mut c = s.connect();
        if i % 2 == 0 {
            c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                .unwrap();
        } else {
            c.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nabc")
                .unwrap();
        }
        slow.push(c);
    }
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(s.get("/").text(), "Hello, ASGI!");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        for c in &mut slow {
            let _ = c.write_all(b"x");
        }
    }
}

/// ASGI 2.4: once the client has left, `send()` raises an `OSError` subclass (what
/// Starlette's streaming responses rely on), and that is not logged as an app error.
#[test]
fn send_after_the_client_left_raises_oserror() {
    let s = server();
    let mut c = s.connect();
    c.write_all(b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut some = [0u8; 4096];
    c.read_exact(&mut some).unwrap();
    drop(c);
    assert!(
        wait_until(Duration::from_secs(10), || counters(&s)["send_oserror"]
            == "ClientDisconnected"),
        "{}",
        s.log()
    );
    assert_eq!(s.get("/").text(), "Hello, ASGI!");
    assert!(
        !s.log().contains("Exception in ASGI application"),
        "{}",
        s.log()
    );
}

fn fastapi() -> Server {
    assert!(
        crate::support::venv().is_some(),
        "the FastAPI tests need ./.venv: run ./scripts/venv first"
    );
    asgi("fastapi_app:app").start()
}

#[test]
fn fastapi_routes_validation_and_bodies() {
    let s = fastapi();
    let r = s.get("/items/42?q=caf%C3%A9");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"item_id": 42, "q": "café"}));
    let invalid = s.get("/items/not-a-number");
    assert_eq!(invalid.status, 422);
    assert_eq!(
        invalid.json()["detail"][0]["loc"],
        serde_json::json!(["path", "item_id"])
    );
    let mut raw =
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n"
            .to_vec();
    raw.extend(std::iter::repeat_n(b'z', 2_000_000));
    let echoed = s.request(&raw).json();
    assert_eq!(
        echoed,
        serde_json::json!({"length": 2000000, "head": "zzzzzzzz"})
    );
    assert_eq!(s.get("/missing").status, 404);
}

#[test]
fn fastapi_lifespan_state_streaming_background_and_sync_endpoints() {
    let mut s = fastapi();
    assert_eq!(
        s.get("/state").json(),
        serde_json::json!({"db": "connected"})
    );
    let streamed = s.get("/stream");
    assert_eq!(streamed.header("transfer-encoding"), Some("chunked"));
    assert_eq!(streamed.text(), "chunk0\nchunk1\nchunk2\nchunk3\nchunk4\n");
    assert_eq!(
        s.get("/background").json(),
        serde_json::json!({"scheduled": true})
    );
    assert!(wait_until(Duration::from_secs(5), || s
        .get("/events")
        .json()
        .as_array()
        .is_some_and(
            |e| e.contains(&serde_json::json!("background ran"))
        )));
    // A def endpoint runs on anyio's thread pool, which wakes the loop from there.
    for _ in 0..20 {
        assert_eq!(
            s.get("/sync").json(),
            serde_json::json!({"main_thread": false})
        );
    }
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        !s.log().contains("Exception in ASGI application"),
        "{}",
        s.log()
    );
}

#[test]
fn asgi_loop_chooses_the_event_loop() {
    // The test venv has no uvloop: auto falls back to asyncio, uvloop is refused.
    let auto = server();
    assert_eq!(auto.get("/scope").json()["loop"], "asyncio.unix_events");
    let asyncio = asgi("asgi_app:app")
        .args(["--asgi-loop", "asyncio"])
        .start();
    assert_eq!(asyncio.get("/scope").json()["loop"], "asyncio.unix_events");
    let mut uvloop = asgi("asgi_app:app")
        .args(["--asgi-loop", "uvloop"])
        .no_wait()
        .start();
    assert_eq!(uvloop.wait_exit(Duration::from_secs(20)), Some(4));
    assert!(
        uvloop.log().contains("No module named 'uvloop'"),
        "{}",
        uvloop.log()
    );
}

// ---------------------------------------------------------------------------------
// WebSockets
// ---------------------------------------------------------------------------------

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Opens a WebSocket; returns the stream and the response head.
fn ws_open(s: &Server, path: &str, extra: &str) -> (std::net::TcpStream, String) {
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
fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
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
fn ws_read(c: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
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
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
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
