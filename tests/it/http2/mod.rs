//! HTTP/2 (`--http2-cleartext`: prior knowledge on a plain listener) over real
//! sockets, with the `h2` crate as the client on a current-thread tokio runtime: a
//! request's headers and body reach the WSGI app as `HTTP/2`, the response's status,
//! headers and body come back, many streams share one connection, a body larger than
//! the stream window arrives whole, HTTP/1 still works on the same listener, and
//! each stream is one request in the access log and the scoreboard.

mod asgi;
mod attacks;
mod exchange;
mod retire;
mod tls;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;

use crate::support::{zero_window_get, Server, ServerBuilder};

/// The client connection preface (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const APP: &str = "http2_app:application";

fn h2c_server(extra: &[&str]) -> Server {
    ServerBuilder::new(APP)
        .arg("--http2-cleartext")
        .args(extra.iter().copied())
        .start()
}

/// The ASGI twin of `APP` (`tests/apps/http2_asgi_app.py`), for `-k asgi`.
const ASGI_APP: &str = "http2_asgi_app:app";

/// Which worker serves a test's HTTP/2 connections (the tests that must hold for both).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Wsgi,
    Asgi,
}

/// `h2c_server` with `kind`'s worker and application.
fn h2c_server_of(kind: Kind, extra: &[&str]) -> Server {
    match kind {
        Kind::Wsgi => h2c_server(extra),
        Kind::Asgi => ServerBuilder::new(ASGI_APP)
            .args(["-k", "asgi", "--http2-cleartext"])
            .args(extra.iter().copied())
            .start(),
    }
}

/// Waits until the access log has a line containing `needle`.
fn wait_for_access_log(server: &Server, needle: &str) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if server.access_log().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {needle:?} in the access log:\n{}", server.access_log());
}

/// Runs `f` with an HTTP/2 connection to `port` (prior knowledge), on a runtime
/// that drives the connection meanwhile.
pub(crate) fn with_h2<F, Fut, T>(port: u16, f: F) -> T
where
    F: FnOnce(SendRequest<Bytes>) -> Fut,
    Fut: Future<Output = T>,
{
    with_h2_over(port, |tcp| async move { tcp }, f)
}

/// `with_h2` over what `wrap` makes of the TCP connection (TLS, say).
fn with_h2_over<W, WFut, IO, F, Fut, T>(port: u16, wrap: W, f: F) -> T
where
    W: FnOnce(tokio::net::TcpStream) -> WFut,
    WFut: Future<Output = IO>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(SendRequest<Bytes>) -> Fut,
    Fut: Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let io = wrap(tcp).await;
        let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        tokio::time::timeout(Duration::from_secs(30), f(send))
            .await
            .expect("the HTTP/2 exchange finished in time")
    })
}

/// Asks for `path` on `send` (ready) and waits for the first piece of the body;
/// returns the request's stream (to reset it), the rest of the body, and that piece.
async fn get_first_piece(
    send: &mut SendRequest<Bytes>,
    path: &str,
) -> (h2::SendStream<Bytes>, h2::RecvStream, Bytes) {
    let req = http::Request::get(format!("http://127.0.0.1{path}"))
        .body(())
        .unwrap();
    let (response, stream) = send.send_request(req, true).unwrap();
    let mut body = response.await.unwrap().into_body();
    let first = body.data().await.unwrap().unwrap();
    (stream, body, first)
}

/// One request; returns the status, the headers and the whole body.
pub(crate) async fn fetch(
    send: &mut SendRequest<Bytes>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut ready = send.clone().ready().await.expect("ready");
    let (response, mut stream) = ready
        .send_request(req.body(()).unwrap(), body.is_empty())
        .expect("send_request");
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .expect("send body");
    }
    let response = response.await.expect("response head");
    let (parts, mut recv) = response.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("body chunk");
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    *send = ready;
    (parts.status.as_u16(), parts.headers, out)
}

#[test]
fn a_request_with_headers_and_a_body_reaches_the_app_as_http2() {
    let server = h2c_server(&[]);
    let port = server.port;
    let (status, headers, body) = with_h2(port, |mut send| async move {
        fetch(
            &mut send,
            "POST",
            "/echo?x=1&y=2",
            &[("x-thing", "yes"), ("content-type", "text/plain")],
            b"hello over h2",
        )
        .await
    });
    assert_eq!(status, 201, "{}", server.log());
    assert_eq!(headers["x-app"], "yes");
    assert!(
        headers.get("connection").is_none(),
        "no connection header in HTTP/2"
    );
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["protocol"], "HTTP/2");
    assert_eq!(echoed["scheme"], "http");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path_info"], "/echo");
    assert_eq!(echoed["query"], "x=1&y=2");
    assert_eq!(echoed["host"], "127.0.0.1");
    assert_eq!(echoed["body"], "hello over h2");
    assert_eq!(echoed["headers"]["HTTP_X_THING"], "yes");
    assert_eq!(echoed["headers"]["CONTENT_TYPE"], "text/plain");
    assert_eq!(echoed["headers"]["CONTENT_LENGTH"], "13");
    wait_for_access_log(&server, "\"POST /echo?x=1&y=2 HTTP/2\" 201");
}

#[test]
fn a_hundred_streams_share_one_connection_and_each_is_a_request() {
    hundred_streams(&[]);
}

#[test]
fn a_hundred_streams_with_threads() {
    hundred_streams(&["--threads", "4"]);
}

fn hundred_streams(extra: &[&str]) {
    let server = h2c_server(extra);
    let port = server.port;
    let results = with_h2(port, |send| async move {
        let mut tasks = Vec::new();
        for i in 0..100 {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                let body = format!("stream {i}");
                let (status, _, out) = fetch(
                    &mut send,
                    "POST",
                    &format!("/echo?i={i}"),
                    &[],
                    body.as_bytes(),
                )
                .await;
                let echoed: serde_json::Value = serde_json::from_slice(&out).unwrap();
                (status, echoed["body"] == body.as_str())
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    });
    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|&(s, ok)| s == 201 && ok), "{results:?}");
    let status = server.status();
    let served: u64 = status["result"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["requests"].as_u64().unwrap_or(0))
        .sum();
    assert!(served >= 100, "scoreboard counts each stream: {status}");
    wait_for_access_log(&server, "\"POST /echo?i=99 HTTP/2\" 201");
    let lines = server
        .access_log()
        .lines()
        .filter(|l| l.contains("HTTP/2\" 201"))
        .count();
    assert_eq!(lines, 100);
}

#[test]
fn a_body_larger_than_the_window_arrives_whole_and_streams_interleave() {
    // 4 MiB is 64 stream windows: the response waits for the client's WINDOW_UPDATEs,
    // while a small request on the same connection is answered meanwhile.
    let server = h2c_server(&["--threads", "4"]);
    let port = server.port;
    let (big, small) = with_h2(port, |send| async move {
        let mut a = send.clone();
        let mut b = send.clone();
        let big =
            tokio::spawn(async move { fetch(&mut a, "GET", "/big?n=4194304", &[], b"").await });
        let small = tokio::spawn(async move { fetch(&mut b, "GET", "/echo", &[], b"").await });
        (big.await.unwrap(), small.await.unwrap())
    });
    assert_eq!(big.0, 200, "{}", server.log());
    assert_eq!(big.2.len(), 4 * 1024 * 1024);
    assert!(big.2.iter().all(|&b| b == b'x'));
    assert_eq!(small.0, 201);
}

#[test]
fn http1_clients_are_served_on_an_http2_cleartext_listener() {
    let server = h2c_server(&[]);
    let r = server.get("/echo");
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["protocol"], "HTTP/1.1");
}

#[test]
fn without_the_flag_the_http2_preface_is_refused() {
    let server = ServerBuilder::new(APP).start();
    let reply = server.exchange(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
}

#[test]
fn with_threads_the_streams_of_one_connection_run_concurrently() {
    // Four streams that each sleep in the application: with four pool threads each
    // runs on its own thread, which only happens if none waits for another.
    let server = h2c_server(&["--threads", "4"]);
    let port = server.port;
    let threads = with_h2(port, |send| async move {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                fetch(&mut send, "GET", "/sleep?ms=700", &[], b"").await
            }));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in tasks {
            let (status, _, body) = t.await.unwrap();
            assert_eq!(status, 200);
            names.insert(String::from_utf8(body).unwrap());
        }
        names
    });
    assert_eq!(
        threads.len(),
        4,
        "each stream on its own thread: {threads:?}"
    );
}

#[test]
fn a_stream_whose_client_opens_no_window_holds_no_python_thread() {
    // The client announces a zero stream window and never opens it: the response
    // waits in rgun's buffer, and with one thread (inline) the next client is still
    // served at once.
    let server = h2c_server(&[]);
    let port = server.port;
    let stalled = zero_window_get(port, "/big?n=8388608", Duration::ZERO);
    let r = server.get("/echo");
    assert_eq!(r.status, 201);
    let with_h2_too = with_h2(port, |mut send| async move {
        fetch(&mut send, "GET", "/echo", &[], b"").await.0
    });
    assert_eq!(with_h2_too, 201);
    drop(stalled);
}

#[test]
fn a_large_upload_spills_and_reaches_the_app_whole() {
    // 3 MiB: past the 1 MiB spill threshold, and many stream windows.
    let server = h2c_server(&["--threads", "2"]);
    let port = server.port;
    let upload: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let sent = upload.clone();
    let (status, _, body) = with_h2(port, |mut send| async move {
        fetch(&mut send, "POST", "/echo", &[], &sent).await
    });
    assert_eq!(status, 201, "{}", server.log());
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        echoed["headers"]["CONTENT_LENGTH"],
        upload.len().to_string()
    );
    assert!(echoed["body"].as_str().unwrap().as_bytes() == upload.as_slice());
}

#[test]
fn request_hooks_run_for_each_stream_and_the_config_file_turns_http2_on() {
    let dir = tempfile::tempdir().unwrap();
    let (record, conf) = crate::config::hook_config(
        dir.path(),
        "h2hooks",
        r#"
http2_cleartext = True
http2_max_concurrent_streams = 10

def pre_request(worker, req):
    note("pre_request %s %s" % (req.method, req.path))

def post_request(worker, req, environ, resp):
    note("post_request %s %s %s" % (req.path, resp.status_code, environ["SERVER_PROTOCOL"]))
"#,
    );
    let server = ServerBuilder::new(APP)
        .args(["-c", conf.to_str().unwrap()])
        .start();
    let status = with_h2(server.port, |mut send| async move {
        fetch(&mut send, "POST", "/echo", &[], b"x").await.0
    });
    assert_eq!(status, 201, "{}", server.log());
    let text = crate::support::wait_for_file(&record, "post_request /echo 201 HTTP/2");
    assert!(text.contains("pre_request POST /echo"), "{text}");
}

#[test]
fn a_stream_reset_mid_response_has_its_iterable_closed() {
    for (threads, tag) in [("1", "inline"), ("4", "pool")] {
        let server = ServerBuilder::new("hostile_app:application")
            .args(["--http2-cleartext", "--threads", threads])
            .start();
        let path = format!("/stream?n=1000&tag={tag}");
        with_h2(server.port, |send| async move {
            let mut send = send.ready().await.unwrap();
            let (mut stream, body, first) = get_first_piece(&mut send, &path).await;
            assert!(!first.is_empty());
            stream.send_reset(h2::Reason::CANCEL);
            // Dropped, so what it received no longer holds the connection's window.
            drop(body);
            // Another request on the connection flushes the reset out and is served.
            fetch(&mut send, "GET", "/ping", &[], b"").await
        });
        let start = std::time::Instant::now();
        loop {
            let closed = server.get("/closed").json();
            let record = closed
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["tag"] == tag)
                .cloned()
                .unwrap_or_default();
            if record["closed"] == true {
                assert!(record["produced"].as_u64().unwrap() < 1000, "{record}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "--threads {threads}: close() never called: {closed}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
