//! HTTP/2 for ASGI workers (`-k asgi` with `tests/apps/http2_asgi_app.py`): each stream
//! is one `http` scope (`http_version` "2"), its body comes through `receive()`,
//! streams of one connection run as concurrent tasks, a response waits for the
//! client's window (suspending the application's `send()`), a reset or a closed
//! connection is the application's `http.disconnect`, and TLS offers h2 by ALPN.
//! A stop's GOAWAY (for both workers) is in `retire`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tls::post_secret_over_h2_by_alpn;
use super::{fetch, get_first_piece, h2c_server_of, wait_for_access_log, with_h2, Kind, ASGI_APP};
use crate::support::{wait_until, zero_window_get, ServerBuilder};
use crate::tls::Pki;

fn h2c_asgi(extra: &[&str]) -> crate::support::Server {
    h2c_server_of(Kind::Asgi, extra)
}

fn echoed(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(body));
    })
}

fn has_header(e: &serde_json::Value, name: &str, value: &str) -> bool {
    e["headers"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!([name, value]))
}

#[test]
fn a_stream_reaches_an_asgi_app_as_an_http2_scope_with_its_body() {
    let server = h2c_asgi(&[]);
    let upload: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let sent = upload.clone();
    let (small, big) = with_h2(server.port, |mut send| async move {
        let small = fetch(
            &mut send,
            "POST",
            "/echo?x=1&y=%20",
            &[("x-thing", "yes"), ("content-type", "text/plain")],
            b"hello over h2",
        )
        .await;
        // 3 MiB: many stream windows, and past the 1 MiB spill threshold, so
        // `receive()` hands it out in pieces.
        let big = fetch(&mut send, "PUT", "/echo", &[], &sent).await;
        (small, big)
    });
    let (status, headers, body) = small;
    assert_eq!(status, 201, "{}", server.log());
    assert_eq!(headers["x-app"], "yes");
    assert!(headers.get("connection").is_none(), "no connection header");
    let e = echoed(&body);
    assert_eq!(e["type"], "http");
    assert_eq!(e["http_version"], "2");
    assert_eq!(e["scheme"], "http");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/echo");
    assert_eq!(e["raw_path"], "/echo");
    assert_eq!(e["query_string"], "x=1&y=%20");
    assert!(has_header(&e, "host", "127.0.0.1"), "{e}");
    assert!(has_header(&e, "x-thing", "yes"), "{e}");
    assert!(has_header(&e, "content-type", "text/plain"), "{e}");
    assert!(
        e["headers"].as_array().unwrap().iter().all(|pair| {
            let name = pair[0].as_str().unwrap();
            name == name.to_ascii_lowercase() && !name.starts_with(':')
        }),
        "lower-cased, no pseudo-headers: {e}"
    );
    assert_eq!(e["body"], "hello over h2");
    assert_eq!(e["messages"], 1);
    assert_eq!(e["client"][0], "127.0.0.1");
    assert!(e["client"][1].as_u64().is_some_and(|p| p > 0));
    assert_eq!(e["server"], serde_json::json!(["127.0.0.1", server.port]));
    wait_for_access_log(&server, "\"POST /echo?x=1&y=%20 HTTP/2\" 201");

    let (status, _, body) = big;
    assert_eq!(status, 201, "{}", server.log());
    let e = echoed(&body);
    assert_eq!(e["method"], "PUT");
    assert!(e["body"].as_str().unwrap().as_bytes() == upload.as_slice());
    assert!(
        e["messages"].as_u64().unwrap() > 1,
        "a spilled body comes in pieces with more_body: {}",
        e["messages"]
    );
}

#[test]
fn a_hundred_streams_of_one_connection_run_as_concurrent_tasks() {
    // 100 streams that each sleep 0.2 s in the application: one after the other that
    // is 20 s; as concurrent tasks well under a second (5 s leaves room for a loaded
    // machine).
    let server = h2c_asgi(&[]);
    let started = Instant::now();
    let results = with_h2(server.port, |send| async move {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                fetch(&mut send, "GET", "/sleep?ms=200", &[], b"").await
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            let (status, _, body) = t.await.unwrap();
            results.push((status, body));
        }
        results
    });
    let elapsed = started.elapsed();
    assert_eq!(results.len(), 100);
    assert!(
        results.iter().all(|(s, b)| *s == 200 && b == b"slept"),
        "{}",
        server.log()
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "100 streams of 0.2 s took {elapsed:?}: not concurrent"
    );
    let lines = || {
        server
            .access_log()
            .lines()
            .filter(|l| l.contains("GET /sleep?ms=200 HTTP/2\" 200"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || lines() == 100),
        "each stream is one request in the access log: {}",
        lines()
    );
}

#[test]
fn max_concurrent_streams_is_announced_to_an_asgi_client() {
    let server = h2c_asgi(&["--http2-max-concurrent-streams", "5"]);
    let (max, statuses) = with_h2(server.port, |mut send| async move {
        let (first, _, _) = fetch(&mut send, "GET", "/echo", &[], b"").await;
        assert_eq!(first, 201);
        let max = send.current_max_send_streams();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                fetch(&mut send, "GET", "/sleep?ms=100", &[], b"").await.0
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        (max, statuses)
    });
    assert_eq!(max, 5);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
}

#[test]
fn a_streamed_response_larger_than_the_window_reaches_a_slow_reader_whole() {
    // 2 MiB is 32 stream windows, sent in 64 KiB `send()`s while the client takes its
    // time over each frame; a small stream on the same connection is answered meanwhile.
    let server = h2c_asgi(&[]);
    let (big, small) = with_h2(server.port, |send| async move {
        let mut b = send.clone();
        let big = tokio::spawn(async move {
            let mut ready = send.ready().await.unwrap();
            let req = http::Request::get("http://127.0.0.1/big?n=2097152")
                .body(())
                .unwrap();
            let (response, _) = ready.send_request(req, true).unwrap();
            let response = response.await.unwrap();
            let status = response.status().as_u16();
            let mut recv = response.into_body();
            let mut out = Vec::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
                let _ = recv.flow_control().release_capacity(chunk.len());
                out.extend_from_slice(&chunk);
            }
            (status, out)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let small = fetch(&mut b, "GET", "/echo", &[], b"").await.0;
        (big.await.unwrap(), small)
    });
    assert_eq!(big.0, 200, "{}", server.log());
    assert_eq!(big.1.len(), 2 * 1024 * 1024);
    assert!(big.1.iter().all(|&b| b == b'x'));
    assert_eq!(small, 201);
}

#[test]
fn a_client_that_opens_no_window_suspends_the_asgi_apps_send() {
    // The client announces a zero stream window and never opens it: after the head
    // the application's `send()` waits instead of buffering 8 MiB, and the worker
    // serves others meanwhile.
    let server = h2c_asgi(&[]);
    let port = server.port;
    // Give the application every chance to run ahead.
    let stalled = zero_window_get(
        port,
        "/big?n=8388608&tag=stalled",
        Duration::from_millis(700),
    );
    let counters = server.get("/counters").json();
    let sent = counters["stalled"].as_u64().unwrap_or(0);
    assert!(
        sent <= 3,
        "send() returned {sent} times of 128 with the window shut: {counters}"
    );
    let with_h2_too = with_h2(port, |mut send| async move {
        fetch(&mut send, "GET", "/echo", &[], b"").await.0
    });
    assert_eq!(with_h2_too, 201);
    drop(stalled);
}

/// The `/hold` stream: its first piece arrives, then `leave` ends it from the client's
/// side; the application's next `receive()` must say `http.disconnect`.
fn held_stream_sees_disconnect(how: &str, reset: bool) {
    let server = h2c_asgi(&[]);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("received");
    let path = format!("/hold?file={}", record.display());
    with_h2(server.port, |send| async move {
        let mut send = send.ready().await.unwrap();
        let (mut stream, body, first) = get_first_piece(&mut send, &path).await;
        assert_eq!(&first[..], b"first piece");
        if reset {
            stream.send_reset(h2::Reason::CANCEL);
            drop(body);
            // Another request on the connection flushes the reset out and is served.
            let after = fetch(&mut send, "GET", "/echo", &[], b"").await.0;
            assert_eq!(after, 201);
        }
        // Otherwise the runtime ends here, and with it the connection.
    });
    let text = crate::support::wait_for_file(&record, "http.disconnect");
    assert_eq!(text, "http.disconnect\n", "{how}: {}", server.log());
}

#[test]
fn a_stream_reset_mid_response_is_the_apps_http_disconnect() {
    held_stream_sees_disconnect("reset", true);
}

#[test]
fn a_connection_closed_mid_response_is_the_apps_http_disconnect() {
    held_stream_sees_disconnect("closed", false);
}

#[test]
fn an_asgi_app_speaks_http2_over_tls_by_alpn() {
    let pki = Pki::new();
    let server = ServerBuilder::new(ASGI_APP)
        .args(["-k", "asgi"])
        .args(pki.server_args())
        .args(["--http-protocols", "h2,h1"])
        .start();
    let config = super::tls::h2_client(&pki, &[b"h2", b"http/1.1"]);
    let (status, _, body) = post_secret_over_h2_by_alpn(server.port, config);
    assert_eq!(status, 201, "{}", server.log());
    let e = echoed(&body);
    assert_eq!(e["http_version"], "2");
    assert_eq!(e["scheme"], "https");
    assert_eq!(e["body"], "secret");

    // An HTTP/1 client on the same port.
    let http1: Arc<rustls::ClientConfig> = super::tls::h2_client(&pki, &[b"http/1.1"]);
    let mut tls = crate::tls::connect(&server, &http1).unwrap();
    let r = crate::tls::get(&mut tls, "/echo").unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["http_version"], "1.1");
}

#[test]
fn request_hooks_run_for_each_asgi_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (record, conf) = crate::config::hook_config(
        dir.path(),
        "h2asgihooks",
        r#"
def pre_request(worker, req):
    note("pre_request %s %s" % (req.method, req.path))

def post_request(worker, req, environ, resp):
    note("post_request %s %s %s" % (req.path, resp.status_code, environ["http_version"]))
"#,
    );
    let server = h2c_asgi(&["-c", conf.to_str().unwrap()]);
    let status = with_h2(server.port, |mut send| async move {
        fetch(&mut send, "POST", "/echo", &[], b"x").await.0
    });
    assert_eq!(status, 201, "{}", server.log());
    let text = crate::support::wait_for_file(&record, "post_request /echo 201 2");
    assert!(text.contains("pre_request POST /echo"), "{text}");
    assert!(text.contains("post_request /echo 201 2"), "{text}");
}

#[test]
fn an_asgi_app_that_fails_answers_500_before_its_head_and_resets_after_it() {
    let server = h2c_asgi(&[]);
    let (before, after, next) = with_h2(server.port, |mut send| async move {
        let before = fetch(&mut send, "GET", "/raise-before", &[], b"").await;
        let mut ready = send.clone().ready().await.unwrap();
        let req = http::Request::get("http://127.0.0.1/raise-after")
            .body(())
            .unwrap();
        let (response, _) = ready.send_request(req, true).unwrap();
        let response = response
            .await
            .expect("the head was sent before the failure");
        let mut body = response.into_body();
        let mut got = Vec::new();
        let mut ended_by = None;
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(e) => {
                    ended_by = e.reason();
                    break;
                }
            }
        }
        // The connection serves on.
        let next = fetch(&mut send, "GET", "/echo", &[], b"").await.0;
        (before, (got, ended_by), next)
    });
    assert_eq!(before.0, 500, "{}", server.log());
    assert_eq!(before.2, b"Internal Server Error");
    let (got, ended_by) = after;
    assert_eq!(got, b"partial");
    assert_eq!(
        ended_by,
        Some(h2::Reason::INTERNAL_ERROR),
        "a body cut short is a reset, not an end"
    );
    assert_eq!(next, 201);
    let log = server.log();
    assert!(log.contains("boom before the head"), "{log}");
    assert!(log.contains("boom mid-body"), "{log}");
}

#[test]
fn a_fastapi_app_is_served_over_http2() {
    // Starlette's own machinery over streams: validation, a body read whole, a
    // StreamingResponse (which listens for http.disconnect meanwhile), background
    // tasks, and a def endpoint that anyio runs on a thread.
    let server = ServerBuilder::new("fastapi_app:app")
        .args(["-k", "asgi", "--http2-cleartext"])
        .start();
    let upload = vec![b'z'; 2_000_000];
    let results = with_h2(server.port, |send| async move {
        let mut tasks = Vec::new();
        for (method, path, body) in [
            ("GET", "/items/42?q=caf%C3%A9", Vec::new()),
            ("GET", "/items/nope", Vec::new()),
            ("POST", "/echo", upload),
            ("GET", "/stream", Vec::new()),
            ("GET", "/background", Vec::new()),
            ("GET", "/sync", Vec::new()),
            ("GET", "/state", Vec::new()),
        ] {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                let (status, _, out) = fetch(&mut send, method, path, &[], &body).await;
                (status, String::from_utf8_lossy(&out).into_owned())
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    });
    let expect = [
        (200, r#"{"item_id":42,"q":"café"}"#),
        (422, "item_id"),
        (200, r#"{"length":2000000,"head":"zzzzzzzz"}"#),
        (200, "chunk0\nchunk1\nchunk2\nchunk3\nchunk4\n"),
        (200, r#"{"scheduled":true}"#),
        (200, r#"{"main_thread":false}"#),
        (200, r#"{"db":"connected"}"#),
    ];
    for ((status, body), (want_status, want)) in results.iter().zip(expect) {
        assert_eq!(*status, want_status, "{body}\n{}", server.log());
        assert!(body.contains(want), "{body:?} lacks {want:?}");
    }
    assert!(wait_until(Duration::from_secs(5), || server
        .get("/events")
        .text()
        .contains("background ran")));
    assert!(
        !server.log().contains("Exception in ASGI application"),
        "{}",
        server.log()
    );
}
