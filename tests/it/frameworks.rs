//! Real frameworks on rgun: a Flask app (`tests/apps/flask_app.py`) and a Django project
//! (`tests/apps/djapp`, also through its ASGI handler under `-k asgi`), both from the
//! pinned `.venv` that rgun is installed in (`./scripts/venv`). The apps serve the same
//! URLs with the same JSON shapes, so each check below runs once per framework:
//! urlencoded forms, a 5 MiB multipart upload (size and CRC-32 reported by
//! the app), a session cookie carried across a 302, streamed (chunked) responses, a 500
//! from a view exception (traceback in the error log, next request fine), HEAD, and
//! percent-encoded UTF-8 paths.

use std::io::{BufRead, BufReader, Read, Write};

use crate::support::{read_response, Response, Server, ServerBuilder};

const FLASK: &str = "flask_app:app";
const DJANGO: &str = "djapp.wsgi:application";
const DJANGO_ASGI: &str = "djapp.asgi:application";

fn start(builder: ServerBuilder) -> Server {
    builder.start()
}

fn flask() -> Server {
    start(ServerBuilder::new(FLASK))
}

fn django() -> Server {
    start(ServerBuilder::new(DJANGO))
}

/// The same Django project through its ASGI handler under `-k asgi`.
fn django_asgi() -> Server {
    start(ServerBuilder::new(DJANGO_ASGI).args(["-k", "asgi"]))
}

/// POSTs a body with the given content type on a fresh connection.
fn post(server: &Server, path: &str, content_type: &str, body: &[u8], extra: &str) -> Response {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    server.request(&raw)
}

/// The `Cookie` header a browser would send back: every `name=value` from `Set-Cookie`.
fn cookies(resp: &Response) -> String {
    let pairs: Vec<&str> = resp
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next())
        .collect();
    assert!(!pairs.is_empty(), "no Set-Cookie in {resp:?}");
    pairs.join("; ")
}

/// CRC-32 (IEEE), the same as Python's `zlib.crc32`.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Deterministic bytes covering every value (CR, LF and `-` included).
fn payload(len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn multipart(boundary: &str, note: &str, filename: &str, data: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n{note}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

fn check_form(server: &Server) {
    let body = b"name=J%C3%BCrgen+M%C3%BCller&tag=a&tag=b%26c";
    let resp = post(
        server,
        "/form",
        "application/x-www-form-urlencoded",
        body,
        "",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        serde_json::json!({"name": "Jürgen Müller", "tags": ["a", "b&c"]})
    );
}

fn check_upload(server: &Server) {
    let data = payload(5 * 1024 * 1024);
    let boundary = "----rgunBoundary7MA4YWxkTrZu0gW";
    let body = multipart(boundary, "hello upload", "data.bin", &data);
    let resp = post(
        server,
        "/upload",
        &format!("multipart/form-data; boundary={boundary}"),
        &body,
        "",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let expected = serde_json::json!({
        "filename": "data.bin", "size": data.len(), "crc32": crc32(&data), "note": "hello upload",
    });
    assert_eq!(resp.json(), expected);
}

fn check_session(server: &Server) {
    let login = post(
        server,
        "/login",
        "application/x-www-form-urlencoded",
        b"user=alice",
        "",
    );
    assert_eq!(login.status, 302, "{}", login.text());
    let location = login.header("location").expect("Location");
    let target = location
        .strip_prefix("http://localhost")
        .unwrap_or(location);
    assert_eq!(target, "/whoami");
    let cookie = cookies(&login);

    let raw = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n"
    );
    let who = server.request(raw.as_bytes());
    assert_eq!(who.status, 200, "{}", who.text());
    assert_eq!(who.json(), serde_json::json!({"user": "alice"}));
    // Without the cookie there is no session: the value really came from it.
    assert_eq!(
        server.get("/whoami").json(),
        serde_json::json!({"user": null})
    );
}

/// Reads a response head and a chunked body with strict framing; returns the chunks.
fn read_chunked(r: &mut impl BufRead) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200 "), "status line {line:?}");
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "header line {line:?}");
        if line == "\r\n" {
            break;
        }
        let (n, v) = line.trim_end().split_once(':').expect("header");
        headers.push((n.to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut chunks = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "chunk size line {line:?}");
        let size = usize::from_str_radix(line.trim_end(), 16)
            .unwrap_or_else(|_| panic!("chunk size {line:?}"));
        let mut data = vec![0; size + 2];
        r.read_exact(&mut data).unwrap();
        assert_eq!(&data[size..], b"\r\n", "chunk not followed by CRLF");
        if size == 0 {
            return (headers, chunks);
        }
        data.truncate(size);
        chunks.push(data);
    }
}

fn check_streaming(server: &Server) {
    let mut conn = server.connect();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    for lines in [5usize, 20_000] {
        write!(
            conn,
            "GET /stream?lines={lines} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
        let (headers, chunks) = read_chunked(&mut r);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("transfer-encoding"), Some("chunked"));
        assert_eq!(header("content-length"), None);
        assert!(chunks.len() > 1, "streamed as {} chunk(s)", chunks.len());
        let expected: String = (0..lines).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(chunks.concat()).unwrap(), expected);
    }
    // The connection is still in step after the streamed bodies.
    write!(
        conn,
        "GET /greet/again HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let next = read_response(&mut r, false).expect("response after streaming");
    assert_eq!(next.json()["name"], "again");
}

/// `log_line`: the framework's own error log message for the failed request.
fn check_500(server: &Server, page_text: &str, log_line: &str) {
    let resp = server.get("/boom");
    assert_eq!(resp.status, 500);
    assert!(resp.text().contains(page_text), "500 page: {}", resp.text());
    let log = server.log();
    assert!(log.contains(log_line), "no {log_line:?} in log:\n{log}");
    assert!(
        log.contains("Traceback (most recent call last)"),
        "no traceback in log:\n{log}"
    );
    assert!(
        log.contains("RuntimeError: view exploded on purpose"),
        "no exception in log:\n{log}"
    );
    // The worker survived and serves the next request.
    let after = server.get("/greet/still-alive");
    assert_eq!(after.status, 200);
    assert_eq!(after.json()["name"], "still-alive");
}

/// An exception that the framework lets through is the server's 500.
fn check_propagated_500(server: &Server) {
    let resp = server.get("/boom");
    assert_eq!(resp.status, 500);
    let log = server.log();
    assert!(
        log.contains("Error handling request GET /boom"),
        "log:\n{log}"
    );
    assert!(
        log.contains("Traceback (most recent call last)"),
        "log:\n{log}"
    );
    assert!(
        log.contains("RuntimeError: view exploded on purpose"),
        "log:\n{log}"
    );
    assert_eq!(server.get("/greet/next").json()["name"], "next");
}

fn check_head(server: &Server, index_text: &str) {
    let mut conn = server.connect();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    conn.write_all(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let head = read_response(&mut r, true).expect("HEAD response");
    assert_eq!(head.status, 200);
    assert!(
        head.header("content-type")
            .is_some_and(|t| t.starts_with("text/")),
        "{head:?}"
    );
    assert_eq!(
        head.header("content-length"),
        Some(index_text.len().to_string().as_str())
    );
    // No body bytes followed the head: the next response on the connection parses.
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let get = read_response(&mut r, false).expect("GET response after HEAD");
    assert_eq!(get.status, 200);
    assert_eq!(get.text(), index_text);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "extra bytes after the GET: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

fn check_utf8_paths(server: &Server) {
    let greet = server.get("/greet/caf%C3%A9?q=%C3%A9t%C3%A9");
    assert_eq!(greet.status, 200, "{}", greet.text());
    assert_eq!(
        greet.json(),
        serde_json::json!({"name": "café", "q": "été"})
    );
    let cafe = server.get("/caf%C3%A9");
    assert_eq!(cafe.status, 200, "{}", cafe.text());
    assert_eq!(cafe.text(), "bienvenue au café");
}

#[test]
fn flask_form() {
    check_form(&flask());
}

#[test]
fn django_form() {
    check_form(&django());
}

#[test]
fn flask_upload_5mib() {
    check_upload(&flask());
}

#[test]
fn django_upload_5mib() {
    check_upload(&django());
}

/// Werkzeug reads a chunked body to its end (`wsgi.input_terminated`).
#[test]
fn flask_upload_chunked() {
    let server = flask();
    let data = payload(3 * 1024 * 1024 + 17);
    let boundary = "rgunChunkedBoundary";
    let body = multipart(boundary, "chunked", "c.bin", &data);
    let mut raw = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(100_000) {
        raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let resp = server.request(&raw);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let expected = serde_json::json!({"filename": "c.bin", "size": data.len(), "crc32": crc32(&data), "note": "chunked"});
    assert_eq!(resp.json(), expected);
}

#[test]
fn flask_session_through_redirect() {
    check_session(&flask());
}

#[test]
fn django_session_through_redirect() {
    check_session(&django());
}

#[test]
fn flask_streaming() {
    check_streaming(&flask());
}

#[test]
fn django_streaming() {
    check_streaming(&django());
}

#[test]
fn flask_500_from_view() {
    check_500(
        &flask(),
        "Internal Server Error",
        "Exception on /boom [GET]",
    );
}

#[test]
fn django_500_from_view() {
    check_500(
        &django(),
        "Server Error (500)",
        "Internal Server Error: /boom",
    );
}

#[test]
fn flask_propagated_exception() {
    check_propagated_500(&start(ServerBuilder::new(
        "flask_app:create_app(propagate=True)",
    )));
}

#[test]
fn django_propagated_exception() {
    check_propagated_500(&start(
        ServerBuilder::new(DJANGO).env("DJAPP_PROPAGATE", "1"),
    ));
}

#[test]
fn flask_head() {
    check_head(&flask(), "hello from flask\n");
}

#[test]
fn django_head() {
    check_head(&django(), "hello from django\n");
}

#[test]
fn flask_utf8_path() {
    check_utf8_paths(&flask());
}

#[test]
fn django_utf8_path() {
    check_utf8_paths(&django());
}

#[test]
fn django_asgi_form_upload_session_head_and_utf8_paths() {
    let s = django_asgi();
    check_form(&s);
    check_upload(&s);
    check_session(&s);
    check_head(&s, "hello from django\n");
    check_utf8_paths(&s);
}

#[test]
fn django_asgi_streaming() {
    check_streaming(&django_asgi());
}

#[test]
fn django_asgi_500_from_view() {
    check_500(
        &django_asgi(),
        "Server Error (500)",
        "Internal Server Error: /boom",
    );
}
