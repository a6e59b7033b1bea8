//! `--protocol uwsgi` behind a real nginx: Debian's `nginx-light` (scripts/test installs
//! it as root), started by each test on loopback with `uwsgi_pass` to rgun and Debian's
//! own `uwsgi_params`. For a WSGI and an ASGI worker: a GET, POSTs with bodies (one
//! chunked by the client, which nginx buffers), a large response without a length, a
//! Django project; a peer outside `--uwsgi-allow-from` refused; malformed packets over
//! a raw socket closed without an answer and without reaching the application.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::{
    pass_as_fd3, read_response, skip, wait_until, write_file, Response, Server, ServerBuilder,
};

const NGINX: &str = "/usr/sbin/nginx";
const APP: &str = "uwsgi_app:application";
const ASGI_APP: &str = "uwsgi_app:app";

/// nginx in the foreground on an inherited listener, its files in its own directory;
/// stopped on drop by TERM to its master, which stops its worker first (a KILL would
/// leave the worker running).
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let exited = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// nginx passing every request to `upstream` (`127.0.0.1:PORT` or `unix:PATH`).
    /// `None` after saying the test skips (no nginx).
    fn start(test: &str, upstream: &str) -> Option<Nginx> {
        if !Path::new(NGINX).exists() {
            skip(
                test,
                "/usr/sbin/nginx is missing (apt-get install nginx-light)",
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let d = dir.path().display();
        // As root, nginx's workers would otherwise run as nobody, who cannot read the
        // test's private directory.
        let user = if nix::unistd::geteuid().is_root() {
            "user root;"
        } else {
            ""
        };
        let config = format!(
            "{user}\nworker_processes 1;\ndaemon off;\nerror_log {d}/error.log info;\n\
             pid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_max_body_size 64m;\n\
             client_body_temp_path {d}/body;\n  uwsgi_temp_path {d}/uwsgi;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
             include /etc/nginx/uwsgi_params;\n      uwsgi_pass {upstream};\n    }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut cmd = Command::new(NGINX);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            // nginx takes listening sockets named in $NGINX (as across its own upgrades).
            .env("NGINX", "3;")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        pass_as_fd3(&mut cmd, &listener);
        let child = cmd.spawn().expect("start nginx");
        drop(listener);
        let nginx = Nginx { child, port, dir };
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", nginx.port)).is_ok()
        });
        assert!(up, "nginx did not start: {}", nginx.log());
        Some(nginx)
    }

    fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// One HTTP request to nginx on a fresh connection, and its response.
    fn request(&self, raw: &[u8]) -> Response {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(raw).unwrap();
        read_response(&mut BufReader::new(s), false)
            .unwrap_or_else(|| panic!("no response from nginx: {}", self.log()))
    }

    fn get(&self, target: &str) -> Response {
        self.request(
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    }

    fn post(&self, target: &str, content_type: &str, body: &[u8]) -> Response {
        let mut raw = format!(
            "POST {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        self.request(&raw)
    }
}

fn uwsgi_server(app: &str, asgi: bool, extra: &[&str]) -> Server {
    let mut builder = ServerBuilder::new(app).args(["--protocol", "uwsgi"]);
    if asgi {
        builder = builder.args(["-k", "asgi"]);
    }
    builder.args(extra.iter().copied()).start()
}

/// A request packet of these variables, as nginx writes one.
fn packet(vars: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in vars {
        body.extend_from_slice(&(k.len() as u16).to_le_bytes());
        body.extend_from_slice(k.as_bytes());
        body.extend_from_slice(&(v.len() as u16).to_le_bytes());
        body.extend_from_slice(v.as_bytes());
    }
    let mut p = vec![0];
    p.extend_from_slice(&(body.len() as u16).to_le_bytes());
    p.push(0);
    p.extend_from_slice(&body);
    p
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// GET, POSTs (with a length, and chunked by the client), and a 10 MiB response
/// without a length, through nginx to a uwsgi worker.
fn check_through_nginx(test: &str, app: &str, asgi: bool) {
    let server = uwsgi_server(app, asgi, &[]);
    let Some(nginx) = Nginx::start(test, &format!("127.0.0.1:{}", server.port)) else {
        return;
    };
    let resp = nginx.request(
        b"GET /echo/a%20b?x=1&y=%41 HTTP/1.1\r\nHost: localhost\r\nX-Custom-Header: v1\r\n\
          Connection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), nginx.log());
    let seen = resp.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/echo/a b");
    assert_eq!(seen["query"], "x=1&y=%41");
    assert_eq!(seen["scheme"], "http");
    assert_eq!(seen["protocol"], "HTTP/1.1");
    assert_eq!(seen["remote_addr"], "127.0.0.1");
    assert_eq!(seen["body_length"], 0);
    let headers = &seen["headers"];
    let (host, custom) = if asgi {
        (&headers["host"], &headers["x-custom-header"])
    } else {
        (&headers["HTTP_HOST"], &headers["HTTP_X_CUSTOM_HEADER"])
    };
    assert_eq!(host, "localhost", "{seen}");
    assert_eq!(custom, "v1", "{seen}");

    let body = payload(3 << 20);
    let resp = nginx.post("/upload", "application/octet-stream", &body);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), nginx.log());
    let seen = resp.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body_length"], body.len());
    assert_eq!(seen["body_sha256"], sha256_hex(&body));
    let content_type = if asgi {
        &seen["headers"]["content-type"]
    } else {
        &seen["headers"]["CONTENT_TYPE"]
    };
    assert_eq!(content_type, "application/octet-stream");

    // Chunked by the client: nginx buffers it and sends its length.
    let mut raw = b"POST /chunked HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                    Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for piece in body[..100_000].chunks(30_000) {
        raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let seen = nginx.request(&raw).json();
    assert_eq!(seen["body_length"], 100_000);
    assert_eq!(seen["body_sha256"], sha256_hex(&body[..100_000]));

    let resp = nginx.get("/big?chunks=160");
    assert_eq!(resp.status, 200, "{}", nginx.log());
    assert_eq!(resp.body.len(), 160 * 65536);
    assert!(resp.body.chunks(16).all(|c| c == b"0123456789abcdef"));
    assert!(
        server.access_log().lines().count() >= 4,
        "{}",
        server.access_log()
    );
}

#[test]
fn wsgi_behind_nginx_get_post_and_large_response() {
    check_through_nginx("wsgi_behind_nginx_get_post_and_large_response", APP, false);
}

#[test]
fn asgi_behind_nginx_get_post_and_large_response() {
    check_through_nginx(
        "asgi_behind_nginx_get_post_and_large_response",
        ASGI_APP,
        true,
    );
}

/// A Django project through nginx: a form, an upload, a session across a redirect, a
/// UTF-8 path and a percent-encoded one.
fn check_django(test: &str, app: &str, asgi: bool) {
    let server = uwsgi_server(app, asgi, &[]);
    let Some(nginx) = Nginx::start(test, &format!("127.0.0.1:{}", server.port)) else {
        return;
    };
    let resp = nginx.post(
        "/form",
        "application/x-www-form-urlencoded",
        b"name=J%C3%BCrgen+M%C3%BCller&tag=a&tag=b%26c",
    );
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), server.log());
    assert_eq!(
        resp.json(),
        serde_json::json!({"name": "Jürgen Müller", "tags": ["a", "b&c"]})
    );

    let data = payload(1 << 20);
    let boundary = "----rgunUwsgiBoundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nvia nginx\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let resp = nginx.post(
        "/upload",
        &format!("multipart/form-data; boundary={boundary}"),
        &body,
    );
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), server.log());
    let seen = resp.json();
    assert_eq!(seen["size"], data.len());
    assert_eq!(seen["note"], "via nginx");
    assert_eq!(seen["crc32"], zlib_crc32(&data));

    let login = nginx.post("/login", "application/x-www-form-urlencoded", b"user=ada");
    assert_eq!(login.status, 302, "{}", login.text());
    let cookie: Vec<String> = login
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .collect();
    let resp = nginx.request(
        format!(
            "GET /whoami HTTP/1.1\r\nHost: localhost\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            cookie.join("; ")
        )
        .as_bytes(),
    );
    assert_eq!(resp.json(), serde_json::json!({"user": "ada"}));

    let resp = nginx.get("/caf%C3%A9");
    assert_eq!(resp.status, 200, "{}", server.log());
    assert_eq!(resp.text(), "bienvenue au café");
    let resp = nginx.get("/greet/a%20b?q=%C3%BC");
    assert_eq!(resp.json(), serde_json::json!({"name": "a b", "q": "ü"}));
}

/// zlib's CRC-32, as the Django view computes it.
fn zlib_crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn django_behind_nginx_over_uwsgi_wsgi() {
    check_django(
        "django_behind_nginx_over_uwsgi_wsgi",
        "djapp.wsgi:application",
        false,
    );
}

#[test]
fn django_behind_nginx_over_uwsgi_asgi() {
    check_django(
        "django_behind_nginx_over_uwsgi_asgi",
        "djapp.asgi:application",
        true,
    );
}

/// A peer outside `--uwsgi-allow-from` is closed at once: nginx answers 502, rgun logs
/// the refusal; a Unix-socket peer is always allowed (as in Gunicorn).
#[test]
fn a_peer_outside_uwsgi_allow_from_is_refused() {
    let test = "a_peer_outside_uwsgi_allow_from_is_refused";
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rgun.sock");
    let unix_bind = format!("unix:{}", sock.display());
    let server = uwsgi_server(
        APP,
        false,
        &["--uwsgi-allow-from", "10.1.2.3", "-b", &unix_bind],
    );
    let Some(nginx) = Nginx::start(test, &format!("127.0.0.1:{}", server.port)) else {
        return;
    };
    let resp = nginx.get("/echo");
    assert_eq!(resp.status, 502, "{}", resp.text());
    server.wait_for_log(
        "uwsgi connection from 127.0.0.1 refused",
        Duration::from_secs(10),
    );
    assert_eq!(
        server.access_log(),
        "",
        "a refused peer reached the application"
    );

    let Some(nginx) = Nginx::start(test, &unix_bind) else {
        return;
    };
    let resp = nginx.get("/echo");
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), nginx.log());
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&packet(&[
        ("PATH_INFO", "/x"),
        ("HTTP_CONNECTION", "close"),
    ]))
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// Sends `bytes` to the server on a fresh connection (then ends its side, when
/// `finish`) and returns all it answers before closing.
fn raw_exchange(server: &Server, bytes: &[u8], finish: bool) -> Vec<u8> {
    let mut s = server.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    if finish {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("the server closes the connection");
    out
}

/// Short headers, lengths past the end, oversized or too many variables, another
/// modifier, HTTP instead of uwsgi: each closes its connection with no answer, and
/// the application sees none of them; a good packet after them is served.
fn check_malformed(asgi: bool) {
    let app = if asgi { ASGI_APP } else { APP };
    let server = uwsgi_server(app, asgi, &[]);
    let too_many: Vec<(&str, &str)> = vec![("HTTP_X", "y"); 1001];
    let mut past_end = vec![0, 8, 0, 0];
    past_end.extend_from_slice(&[4, 0]);
    past_end.extend_from_slice(b"PATH");
    past_end.extend_from_slice(&[0xff, 0xff]);
    let mut oversized = vec![0, 0xff, 0xff, 0];
    oversized.extend_from_slice(&[0xff, 0xff]);
    oversized.extend(std::iter::repeat_n(b'K', 65533));
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("a short header, then the end", vec![0, 5], true),
        (
            "the variables cut short, then the end",
            vec![0, 40, 0, 0, 3, 0, b'A'],
            true,
        ),
        ("a value's length past the end", past_end, false),
        ("a name longer than the packet", oversized, false),
        ("too many variables", packet(&too_many), false),
        ("modifier1 other than 0", vec![5, 0, 0, 0], false),
        (
            "HTTP to a uwsgi listener",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            false,
        ),
    ];
    for (what, bytes, finish) in cases {
        let out = raw_exchange(&server, &bytes, finish);
        assert!(
            out.is_empty(),
            "{what}: answered {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    assert_eq!(
        server.access_log(),
        "",
        "a malformed packet reached the application"
    );
    let out = raw_exchange(
        &server,
        &packet(&[("PATH_INFO", "/after"), ("HTTP_CONNECTION", "close")]),
        false,
    );
    assert!(
        out.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        wait_until(Duration::from_secs(5), || server
            .access_log()
            .lines()
            .count()
            == 1),
        "{}",
        server.access_log()
    );
}

#[test]
fn malformed_uwsgi_packets_close_without_reaching_a_wsgi_app() {
    check_malformed(false);
}

#[test]
fn malformed_uwsgi_packets_close_without_reaching_an_asgi_app() {
    check_malformed(true);
}

/// Keep-alive as Gunicorn's: a response with a length keeps the connection for the
/// next packet; one without a length is never chunked and ends with the close. The
/// protocol set by Gunicorn's names in a configuration file.
#[test]
fn uwsgi_keep_alive_and_unchunked_responses() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_file(
        dir.path(),
        "gunicorn.conf.py",
        "protocol = \"uwsgi\"\nuwsgi_allow_ips = \"127.0.0.1,::1\"\n",
    );
    let server = ServerBuilder::new(APP)
        .args(["-c", conf.to_str().unwrap()])
        .start();
    let mut s = server.connect();
    let mut two = packet(&[("PATH_INFO", "/one"), ("CONTENT_LENGTH", "3")]);
    two.extend_from_slice(b"abc");
    two.extend(packet(&[
        ("PATH_INFO", "/big"),
        ("QUERY_STRING", "chunks=2"),
    ]));
    s.write_all(&two).unwrap();
    let mut r = BufReader::new(s);
    let first = read_response(&mut r, false).expect("the first answer");
    assert_eq!(first.header("connection"), Some("keep-alive"));
    assert_eq!(first.json()["body_length"], 3);
    let second = read_response(&mut r, false).expect("the second answer, on the same connection");
    assert_eq!(second.header("transfer-encoding"), None);
    assert_eq!(second.header("connection"), Some("close"));
    assert_eq!(second.body.len(), 2 * 65536);
}

/// The same requests through nginx to Gunicorn 27 (`--protocol uwsgi`, the venv's) and
/// to rgun: the application sees the same method, path, query, scheme, protocol,
/// header variables, body and client address.
#[test]
fn the_environ_behind_nginx_is_gunicorns() {
    let test = "the_environ_behind_nginx_is_gunicorns";
    let seen_by = |gunicorn: bool| {
        let mut builder = ServerBuilder::new(APP).args(["--protocol", "uwsgi"]);
        if gunicorn {
            builder = builder.gunicorn();
        }
        let server = builder.start();
        let nginx = Nginx::start(test, &format!("127.0.0.1:{}", server.port))?;
        let get = nginx.request(
            b"GET /a%20b/c?x=1&y=%41&z HTTP/1.1\r\nHost: localhost:8080\r\n\
              X-Forwarded-For: 203.0.113.7\r\nAccept: */*\r\nX-Two: 1\r\nX-Two: 2\r\n\
              Connection: close\r\n\r\n",
        );
        let post = nginx.post(
            "/form?q",
            "application/x-www-form-urlencoded",
            b"a=1&b=%C3%BC",
        );
        Some([get.json(), post.json()])
    };
    let (Some(rgun), Some(gunicorn)) = (seen_by(false), seen_by(true)) else {
        return;
    };
    assert_eq!(rgun, gunicorn);
}
