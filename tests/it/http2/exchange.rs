//! One request lifecycle whatever carried it (issue 23): the same answer for the same
//! request over HTTP/1, h2c and HTTP/2 over TLS, from a WSGI and an ASGI worker; and
//! `post_request` for an ASGI request whose client left or whose application raised,
//! over HTTP/2 and over HTTP/1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::{fetch, get_first_piece, h2c_server_of, with_h2, with_h2_over, Kind, APP, ASGI_APP};
use crate::support::ServerBuilder;
use crate::tls::Pki;

/// A trusted proxy (loopback is in the default `--forwarded-allow-ips`) that says
/// both "https" and "not ssl": Gunicorn refuses such a request with 400.
const DISAGREEING: [(&str, &str); 2] = [("x-forwarded-proto", "https"), ("x-forwarded-ssl", "off")];

/// The status line's code of one HTTP/1 request with `DISAGREEING` headers.
fn http1_status(port: u16) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let extra: String = DISAGREEING
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(s, "GET /echo HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

fn disagreeing_scheme_is_a_400_everywhere(kind: Kind) {
    let server = h2c_server_of(kind, &[]);
    let plain = http1_status(server.port);
    let h2c = with_h2(server.port, |mut send| async move {
        fetch(&mut send, "GET", "/echo", &DISAGREEING, b"").await.0
    });
    let pki = Pki::new();
    let (app, worker) = match kind {
        Kind::Wsgi => (APP, "sync"),
        Kind::Asgi => (ASGI_APP, "asgi"),
    };
    let tls_server = ServerBuilder::new(app)
        .args(["-k", worker])
        .args(pki.server_args())
        .args(["--http-protocols", "h2,h1"])
        .start();
    let config = super::tls::h2_client(&pki, &[b"h2"]);
    let h2_tls = with_h2_over(
        tls_server.port,
        |tcp| super::tls::tls_over(config, tcp),
        |mut send| async move { fetch(&mut send, "GET", "/echo", &DISAGREEING, b"").await.0 },
    );
    assert_eq!(
        (plain, h2c, h2_tls),
        (400, 400, 400),
        "{kind:?}: HTTP/1, h2c, h2 over TLS\n{}\n{}",
        server.log(),
        tls_server.log()
    );
    // The application never saw it: an honest request is still served.
    let ok = with_h2(server.port, |mut send| async move {
        fetch(&mut send, "GET", "/echo", &[], b"").await.0
    });
    assert_eq!(ok, 201);
}

#[test]
fn disagreeing_secure_scheme_headers_are_a_400_over_every_protocol_for_wsgi() {
    disagreeing_scheme_is_a_400_everywhere(Kind::Wsgi);
}

#[test]
fn disagreeing_secure_scheme_headers_are_a_400_over_every_protocol_for_asgi() {
    disagreeing_scheme_is_a_400_everywhere(Kind::Asgi);
}

#[test]
fn post_request_runs_for_an_asgi_stream_whose_client_left_or_whose_app_raised() {
    let dir = tempfile::tempdir().unwrap();
    let (record, conf) = crate::config::hook_config(dir.path(), "exchangehooks", POST_REQUEST_HOOK);
    let server = h2c_server_of(Kind::Asgi, &["-c", conf.to_str().unwrap()]);
    let held = dir.path().join("received");
    let path = format!("/hold?file={}", held.display());
    with_h2(server.port, |send| async move {
        let mut send = send.ready().await.unwrap();
        // The client leaves: a reset once the first piece has come.
        let (mut stream, body, first) = get_first_piece(&mut send, &path).await;
        assert_eq!(&first[..], b"first piece");
        stream.send_reset(h2::Reason::CANCEL);
        drop(body);
        // The application raises mid-body: the stream is reset on our side.
        let req = http::Request::get("http://127.0.0.1/raise-after")
            .body(())
            .unwrap();
        let (response, _) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(req, true)
            .unwrap();
        let mut body = response.await.unwrap().into_body();
        while let Some(Ok(_)) = body.data().await {}
        // Another request on the connection flushes the resets out and is served.
        assert_eq!(fetch(&mut send, "GET", "/echo", &[], b"").await.0, 201);
    });
    let text = crate::support::wait_for_file(&record, "post_request /raise-after");
    let text = if text.contains("post_request /hold") {
        text
    } else {
        crate::support::wait_for_file(&record, "post_request /hold")
    };
    assert!(
        text.contains("post_request /hold 200"),
        "{text}\n{}",
        server.log()
    );
    assert!(
        text.contains("post_request /raise-after 200"),
        "{text}\n{}",
        server.log()
    );
    assert!(text.contains("post_request /echo 201"), "{text}");
}

/// A record of `post_request` calls (`note`, from `config::hook_config`).
const POST_REQUEST_HOOK: &str = r#"
def post_request(worker, req, environ, resp):
    note("post_request %s %s" % (req.path, resp.status_code))
"#;

#[test]
fn post_request_runs_for_an_http1_asgi_request_whose_client_left_or_whose_app_raised() {
    let dir = tempfile::tempdir().unwrap();
    let (record, conf) = crate::config::hook_config(dir.path(), "h1hooks", POST_REQUEST_HOOK);
    let server = h2c_server_of(Kind::Asgi, &["-c", conf.to_str().unwrap()]);
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    // The client leaves once the first piece has come.
    let held = dir.path().join("received");
    let mut s = connect();
    write!(
        s,
        "GET /hold?file={} HTTP/1.1\r\nHost: x\r\n\r\n",
        held.display()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first piece") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first piece: {}", server.log());
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    // The application raises mid-body: what it sent, then the connection closes.
    let mut s = connect();
    write!(s, "GET /raise-after HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(String::from_utf8_lossy(&got).contains("partial"));
    let text = crate::support::wait_for_file(&record, "post_request /hold");
    let text = if text.contains("post_request /raise-after") {
        text
    } else {
        crate::support::wait_for_file(&record, "post_request /raise-after")
    };
    assert!(
        text.contains("post_request /hold 200") && text.contains("post_request /raise-after 200"),
        "{text}\n{}",
        server.log()
    );
    let heard = crate::support::wait_for_file(&held, "http.disconnect");
    assert!(heard.contains("http.disconnect"), "{heard}");
}
