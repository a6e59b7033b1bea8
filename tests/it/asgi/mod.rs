//! ASGI 3 workers against `tests/apps/asgi_app.py` (and FastAPI): `-k` names, the
//! refusal of an ASGI app under the WSGI worker, the HTTP scope, request bodies
//! through `receive()`, `http.disconnect`, streaming under backpressure, application
//! errors, `--asgi-loop`, and `--timeout` watching the loop's heartbeat. The lifespan
//! protocol in `lifespan`, FastAPI in `fastapi`, WebSockets in `websocket`.

mod crowd;
mod fastapi;
mod lifespan;
mod operator;
mod websocket;

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
        s.assert_log_has(&format!("Using worker: {class}\n"));
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
    crate::support::assert_within(started, Duration::from_millis(800));
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
    // Aborted with every thread's stack: the loop's thread is in the blocking call.
    s.wait_for_log("in block", Duration::from_secs(10));
    let log = s.log();
    assert!(log.contains("time.sleep(float(scope"), "{log}");
    // A new worker replaces it and serves.
    assert!(wait_until(Duration::from_secs(20), || s
        .worker_pids()
        .first()
        .is_some_and(|&p| p != worker)));
    assert_eq!(s.get("/").text(), "Hello, ASGI!");
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
        crate::support::assert_within(started, Duration::from_secs(1));
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
    uvloop.assert_log_has("No module named 'uvloop'");
}

/// `--threads` means nothing to an event loop: said once, and requests still run
/// concurrently on the loop.
#[test]
fn threads_are_ignored_with_a_warning() {
    let s = asgi("asgi_app:app").args(["--threads", "4"]).start();
    s.assert_log_has("--threads is ignored by -k asgi: its concurrency is the event loop");
    assert_eq!(s.get("/sleep").text(), "slept");
}

/// After its client leaves, an application that does not notice is cancelled once
/// the grace period is over (and that is not logged as an error).
#[test]
fn a_task_outliving_its_client_is_cancelled_after_the_grace_period() {
    let s = asgi("asgi_app:app")
        .args(["--asgi-disconnect-grace-period", "1"])
        .start();
    let mut c = s.connect();
    c.write_all(b"GET /ignores-disconnect HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || counters(&s)
        ["ignoring"]
        == 1));
    let left = Instant::now();
    drop(c);
    assert!(wait_until(Duration::from_secs(10), || counters(&s)
        ["cancelled"]
        == 1));
    let waited = left.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "cancelled after {waited:?}"
    );
    assert!(
        !s.log().contains("Exception in ASGI application"),
        "{}",
        s.log()
    );
}
