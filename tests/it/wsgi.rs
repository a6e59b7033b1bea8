//! PEP 3333 behaviour and the HTTP/1.1 engine around it, against `tests/apps/pep3333.py`:
//! environ contents, wsgi.input, start_response/exc_info/write(), close(), file_wrapper,
//! framing (Content-Length, chunked, close, no body), keep-alive, pipelining,
//! 100-continue, header injection, and app errors.

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

use crate::support::{read_response, Server, ServerBuilder};

fn server() -> Server {
    Server::start("pep3333:application")
}

#[test]
fn environ_is_complete_and_typed() {
    let s = server();
    let r = s.request(b"GET /environ?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\nX-Dup: a\r\nX-Dup: b\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    let e = r.json();
    assert_eq!(e["REQUEST_METHOD"], "GET");
    assert_eq!(e["SCRIPT_NAME"], "");
    assert_eq!(e["PATH_INFO"], "/environ");
    assert_eq!(e["QUERY_STRING"], "x=1&y=%20");
    assert_eq!(e["SERVER_NAME"], "example.com");
    assert_eq!(e["SERVER_PORT"], "8080");
    assert_eq!(e["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(e["REMOTE_ADDR"], "127.0.0.1");
    assert!(e["REMOTE_PORT"].as_str().unwrap().parse::<u16>().is_ok());
    assert_eq!(e["wsgi.url_scheme"], "http");
    assert_eq!(e["wsgi.version"], serde_json::json!([1, 0]));
    assert_eq!(e["wsgi.multithread"], false);
    assert_eq!(e["wsgi.multiprocess"], false);
    assert_eq!(e["wsgi.run_once"], false);
    assert_eq!(e["headers"]["HTTP_X_DUP"], "a,b");
    assert_eq!(e["types_ok"], true);
}

/// The environ template holds the usual values (GET, HTTP/1.1, http, no query): a
/// request that differs gets its own, and the next one gets the usual ones back.
#[test]
fn environ_values_that_differ_from_the_usual_ones() {
    let s = server();
    let mut c = s.connect();
    c.write_all(b"DELETE /environ?q HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /environ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let first = read_response(&mut r, false).unwrap().json();
    assert_eq!(first["REQUEST_METHOD"], "DELETE");
    assert_eq!(first["SERVER_PROTOCOL"], "HTTP/1.0");
    assert_eq!(first["QUERY_STRING"], "q");
    let second = read_response(&mut r, false).unwrap().json();
    assert_eq!(second["REQUEST_METHOD"], "GET");
    assert_eq!(second["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(second["QUERY_STRING"], "");
    assert_eq!(second["SCRIPT_NAME"], "");
    assert_eq!(second["wsgi.url_scheme"], "http");
}

#[test]
fn multiprocess_and_multithread_flags_follow_the_settings() {
    let s = ServerBuilder::new("pep3333:application")
        .workers(2)
        .args(["--threads", "4"])
        .start();
    let e = s.get("/environ").json();
    assert_eq!(e["wsgi.multiprocess"], true);
    assert_eq!(e["wsgi.multithread"], true);
}

#[test]
fn utf8_path_is_decoded_as_latin1() {
    let s = server();
    let e = s.get("/caf%C3%A9/x%2Fy").json();
    // PEP 3333: PATH_INFO holds the raw bytes as latin-1 code points.
    assert_eq!(e["path"], "/caf\u{c3}\u{a9}/x/y");
}

#[test]
fn trusted_proxy_sets_url_scheme() {
    let s = server();
    let r = s.request(b"GET /environ HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n");
    assert_eq!(r.json()["wsgi.url_scheme"], "https");
    assert_eq!(r.json()["SERVER_PORT"], "443");
    // An untrusted peer cannot.
    let s = ServerBuilder::new("pep3333:application")
        .args(["--forwarded-allow-ips", "10.9.9.9"])
        .start();
    let r = s.request(b"GET /environ HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n");
    assert_eq!(r.json()["wsgi.url_scheme"], "http");
}

#[test]
fn wsgi_input_methods() {
    let s = server();
    let body = "abcdef\nline2\nline3\nline4";
    let raw = format!(
        "POST /input HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let e = s.request(raw.as_bytes()).json();
    assert_eq!(e["read3"], "abc");
    assert_eq!(e["readline"], "def\n");
    assert_eq!(e["readline_limited"], "li");
    assert_eq!(
        e["readlines"],
        serde_json::json!(["ne2\n", "line3\n", "line4"])
    );
    assert_eq!(e["after"], "");

    let raw = b"POST /iterate_input HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\na\nb\n\r\n2\r\nc\n\r\n0\r\n\r\n";
    assert_eq!(
        s.request(raw).json()["lines"],
        serde_json::json!(["a\n", "b\n", "c\n"])
    );
}

#[test]
fn wsgiref_validator_finds_nothing() {
    let s = server();
    let raw = b"POST /validate HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world";
    let r = s.request(raw);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_eq!(r.text(), "ok:hello world");
    let r = s.get("/validate/get");
    assert_eq!(r.status, 200, "{}", s.log());
    let log = s.log();
    assert!(
        log.contains("validated request"),
        "wsgi.errors reaches the error log:\n{log}"
    );
    for bad in ["WSGIWarning", "AssertionError", "Exception ignored"] {
        assert!(!log.contains(bad), "validator objected ({bad}):\n{log}");
    }
}

#[test]
fn write_callable_and_exc_info() {
    let s = server();
    assert_eq!(s.get("/write").text(), "written-returned");
    let r = s.get("/exc_info");
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "replaced by exc_info");
    let r = s.get("/lazy_start");
    assert_eq!((r.status, r.text().as_str()), (201, "lazy"));
}

#[test]
fn app_exception_gives_500_and_the_worker_keeps_serving() {
    let s = server();
    let r = s.get("/error");
    assert_eq!(r.status, 500);
    s.wait_for_log("RuntimeError: boom in the app", Duration::from_secs(5));
    assert!(s.log().contains("Error handling request GET /error"));
    assert_eq!(s.get("/environ").status, 200);
}

#[test]
fn exception_after_headers_closes_the_connection() {
    let s = server();
    let raw = s.exchange(b"GET /error_midstream HTTP/1.1\r\nHost: a\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("partial"));
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "an incomplete body must not look complete: {text}"
    );
    s.wait_for_log("boom after headers", Duration::from_secs(5));
    assert_eq!(s.get("/environ").status, 200);
}

#[test]
fn header_injection_becomes_500() {
    let s = server();
    let raw = s.exchange(b"GET /bad_header HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 500"), "{text}");
    assert!(!text.contains("pwned"), "{text}");
    s.wait_for_log(
        "invalid character in value of header \"X-Evil\"",
        Duration::from_secs(5),
    );
}

/// PEP 3333: header values are latin-1 `str`; one that is not gives a 500.
#[test]
fn header_values_go_out_as_latin1() {
    let s = server();
    let raw = s.exchange(b"GET /latin1_header HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{raw:?}");
    assert!(
        raw.windows(12).any(|w| w == b"X-Name: caf\xe9"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let r = s.get("/wide_header");
    assert_eq!(r.status, 500);
    s.wait_for_log("is not latin-1 encodable", Duration::from_secs(5));
}

#[test]
fn streaming_is_chunked_on_http11_and_close_delimited_on_http10() {
    let s = server();
    let r = s.get("/stream");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "part0;part1;part2;part3;part4;");
    let r = s.request(b"GET /stream HTTP/1.0\r\n\r\n");
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.text(), "part0;part1;part2;part3;part4;");
}

#[test]
fn head_204_and_304_have_no_body() {
    let s = server();
    let mut c = s.connect();
    c.write_all(b"HEAD /write HTTP/1.1\r\nHost: a\r\n\r\nGET /status?204 HTTP/1.1\r\nHost: a\r\n\r\nGET /status?304 HTTP/1.1\r\nHost: a\r\n\r\nGET /write HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut r = BufReader::new(c);
    let head = read_response(&mut r, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(read_response(&mut r, false).unwrap().status, 204);
    assert_eq!(read_response(&mut r, false).unwrap().status, 304);
    // If any body bytes had leaked, this response would not parse.
    let last = read_response(&mut r, false).unwrap();
    assert_eq!(last.text(), "written-returned");
}

#[test]
fn file_wrapper_is_sent_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let s = ServerBuilder::new("pep3333:application")
        .env("RGUN_TEST_FILE", path.to_str().unwrap())
        .start();
    let r = s.get("/file");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("3000000"));
    assert!(r.body == data, "file body differs");
}

/// The body the app's `/pieces` returns, in the same chunks.
fn pieces_body() -> Vec<u8> {
    (0..40u32)
        .flat_map(|i| {
            let n = if i % 3 == 0 {
                400_000
            } else {
                100 + i as usize
            };
            std::iter::repeat_n(b'A' + (i % 26) as u8, n)
        })
        .collect()
}

/// A list response's large chunks leave from the `bytes` objects themselves (with the
/// head, in one sendmsg): read slowly, so most sends are partial, the body arrives
/// whole and in order; a shorter declared length cuts it there.
#[test]
fn large_list_responses_arrive_whole_to_a_slow_reader() {
    let s = server();
    let want = pieces_body();
    // A small receive buffer, set before connecting (it sets the window), keeps the
    // server's sends partial.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], s.port)).into())
        .unwrap();
    let mut c = std::net::TcpStream::from(sock);
    c.write_all(b"GET /pieces HTTP/1.1\r\nHost: a\r\n\r\nGET /pieces?short HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading: {e}"),
        }
        if raw.len() < 100_000 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut r = BufReader::new(&raw[..]);
    let full = read_response(&mut r, false).expect("first response");
    assert_eq!(
        full.header("content-length"),
        Some(&*want.len().to_string())
    );
    assert!(
        full.body == want,
        "body differs ({} bytes)",
        full.body.len()
    );
    let short = read_response(&mut r, false).expect("second response");
    assert!(
        short.body[..] == want[..want.len() - 50_000],
        "short body differs"
    );
}

#[test]
fn close_is_called_when_the_client_goes_away() {
    let s = server();
    let mut c = s.connect();
    c.write_all(b"GET /tracked HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    c.read_exact(&mut first).unwrap();
    drop(c);
    let start = Instant::now();
    loop {
        let closed = s.get("/closed").json();
        if closed["closed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "tracked")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "close() never called"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keep_alive_pipelining_and_http10_keep_alive() {
    let s = server();
    let mut c = s.connect();
    c.write_all(b"GET /environ HTTP/1.1\r\nHost: a\r\n\r\nGET /write HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    assert_eq!(
        read_response(&mut r, false).unwrap().text(),
        "written-returned"
    );
    c.write_all(b"GET /write HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    c.write_all(b"GET /write HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut r, false).unwrap().text(),
        "written-returned"
    );
    // HTTP/1.0 without keep-alive: the server closes.
    assert!(read_response(&mut r, false).is_none());
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_timeout() {
    let s = ServerBuilder::new("pep3333:application")
        .args(["--keep-alive", "1"])
        .start();
    let mut c = s.connect();
    c.write_all(b"GET /write HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    let start = Instant::now();
    let mut rest = Vec::new();
    let n = r.read_to_end(&mut rest).unwrap();
    assert_eq!(n, 0);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

#[test]
fn expect_100_continue_is_answered() {
    let s = server();
    let mut c = s.connect();
    c.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut interim = [0u8; 25];
    c.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"hello").unwrap();
    let resp = read_response(&mut BufReader::new(c), false).unwrap();
    assert_eq!(resp.text(), "hello");
}

#[test]
fn print_goes_to_the_error_log() {
    let s = server();
    s.get("/print");
    s.wait_for_log("hello from print()", Duration::from_secs(5));
}

#[test]
fn access_log_uses_gunicorn_format() {
    let s = server();
    s.request(b"GET /write?q=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: tester/1\r\nReferer: http://r/\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    while !s.access_log().contains("tester/1") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no access log line"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = s.access_log();
    // 127.0.0.1 - - [25/Nov/2026:01:00:00 +0000] "GET /write?q=1 HTTP/1.1" 200 16 "http://r/" "tester/1"
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("] \"GET /write?q=1 HTTP/1.1\" 200 16 \"http://r/\" \"tester/1\""),
        "{line}"
    );
}

#[test]
fn proxy_protocol_sets_the_client_address_from_allowed_peers() {
    let s = ServerBuilder::new("pep3333:application")
        .args(["--proxy-protocol", "--proxy-allow-from", "127.0.0.1"])
        .start();
    let r = s.request(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 443\r\nGET /environ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(r.json()["REMOTE_ADDR"], "203.0.113.7");
    assert_eq!(r.json()["REMOTE_PORT"], "40000");
    // v2, IPv6.
    let mut raw = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    raw.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    raw.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    raw.extend_from_slice(&[0xd4, 0x31, 0x00, 0x50]);
    raw.extend_from_slice(b"GET /environ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(s.request(&raw).json()["REMOTE_ADDR"], "2001:db8::1");
    // Without a header (auto mode), the socket's address.
    assert_eq!(s.get("/environ").json()["REMOTE_ADDR"], "127.0.0.1");
    // A peer not in --proxy-allow-from cannot claim another address.
    let s = ServerBuilder::new("pep3333:application")
        .args(["--proxy-protocol", "--proxy-allow-from", "10.1.1.1"])
        .start();
    let r = s.request(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 443\r\nGET /environ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 400);
}

#[test]
fn regression_write_then_file_wrapper_sends_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.txt");
    std::fs::write(&path, b"0123456789").unwrap();
    std::fs::write(
        dir.path().join("wf_app.py"),
        "import os\ndef application(environ, start_response):\n    w = start_response('200 OK', [])\n    w(b'hdr:')\n    return environ['wsgi.file_wrapper'](open(os.environ['F'], 'rb'))\n",
    )
    .unwrap();
    let s = ServerBuilder::new("wf_app:application")
        .args(["--chdir", dir.path().to_str().unwrap()])
        .env("F", path.to_str().unwrap())
        .start();
    assert_eq!(s.get("/").text(), "hdr:0123456789");
}

#[test]
fn regression_keep_alive_0_says_connection_close() {
    let s = ServerBuilder::new("pep3333:application")
        .args(["--keep-alive", "0"])
        .start();
    let r = s.request(b"GET /write HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.header("connection"), Some("close"));
}
