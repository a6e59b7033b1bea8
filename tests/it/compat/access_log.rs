//! Every access-log atom Gunicorn 27 knows, rendered by rgun and by Gunicorn for the
//! same requests and compared: the text atoms to the byte, the clock-dependent ones
//! (`t`, `T`, `D`, `M`, `L`, `p`) in shape.

use std::time::Duration;

use super::{both, APP};
use crate::support::wait_until;

/// Gunicorn's atoms, `|`-separated, with request headers (`i`), response headers
/// (`o`), environ keys (`e`), a header that is absent and an unknown atom.
const FORMAT: &str = "%(h)s|%(l)s|%(u)s|%(t)s|%(r)s|%(s)s|%(m)s|%(U)s|%(q)s|%(H)s|%(b)s|\
%(B)s|%(f)s|%(a)s|%(T)s|%(D)s|%(M)s|%(L)s|%(p)s|%({X-Thing}i)s|%({x-thing}i)s|\
%({Content-Type}o)s|%({content-length}o)s|%({REMOTE_ADDR}e)s|%({HTTP_X_THING}e)s|\
%({path_info}e)s|%({QUERY_STRING}e)s|%({absent}i)s|%({absent}o)s|%(zz)s";

/// The atoms whose value depends on the clock or the process: shape only.
fn normalise(line: &str) -> Vec<String> {
    let atoms: Vec<&str> = line.split('|').collect();
    atoms
        .iter()
        .enumerate()
        .map(|(i, atom)| {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let shape_ok = match i {
                3 => atom.starts_with('[') && atom.ends_with(']') && atom.len() == 28,
                14..=16 => digits(atom),
                17 => atom
                    .split_once('.')
                    .is_some_and(|(s, us)| digits(s) && us.len() == 6 && digits(us)),
                18 => atom
                    .strip_prefix('<')
                    .and_then(|a| a.strip_suffix('>'))
                    .is_some_and(digits),
                _ => return (*atom).to_owned(),
            };
            assert!(shape_ok, "atom {i} {atom:?} in {line}");
            format!("<atom {i}>")
        })
        .collect()
}

#[test]
fn every_atom_renders_as_in_gunicorn() {
    let servers = both(APP, &["--access-logformat", FORMAT]);
    let requests: [&[u8]; 5] = [
        // Basic auth, a percent-encoded UTF-8 path, a header twice, quotes in values.
        b"GET /caf%C3%A9/x%20y?q=1&r=%22 HTTP/1.1\r\nHost: localhost\r\n\
          Authorization: Basic YWxpY2U6c2VjcmV0\r\nReferer: http://a/\"quoted\"\r\n\
          User-Agent: tester/1.0\r\nX-Thing: first\r\nX-Thing: second\r\n\
          Connection: close\r\n\r\n",
        // No body: b and B are both 0; a response without Content-Type.
        b"GET /empty HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        // HTTP/1.0, no headers at all.
        b"GET /plain HTTP/1.0\r\n\r\n",
        // Authorization that is not Basic, and Basic that is not base64.
        b"GET /?x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer abc\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Basic !!!\r\nConnection: close\r\n\r\n",
    ];
    let mut lines = Vec::new();
    for (name, server) in &servers {
        for raw in requests {
            let answer = server.exchange(raw);
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer[8..].starts_with(" 200 "), "{name}: {answer}");
        }
        let n = requests.len();
        let logged = wait_until(Duration::from_secs(10), || {
            server.access_log().lines().count() >= n
        });
        assert!(logged, "{name}: {}", server.access_log());
        lines.push(server.access_log());
    }
    let (rgun, gunicorn) = (&lines[0], &lines[1]);
    for (r, g) in rgun.lines().zip(gunicorn.lines()) {
        assert_eq!(normalise(r), normalise(g), "\nrgun:     {r}\ngunicorn: {g}");
    }
    // What the comparison covered, in rgun's words.
    let first = normalise(rgun.lines().next().unwrap());
    assert_eq!(first[2], "alice");
    assert_eq!(
        first[7], "/cafÃ©/x y",
        "PATH_INFO's Latin-1 text, as Gunicorn logs it"
    );
    assert_eq!(first[12], "http://a/\\\"quoted\\\"");
    assert_eq!(
        (first[19].as_str(), first[23].as_str()),
        ("second", "127.0.0.1")
    );
    assert_eq!(first[24], "first,second");
    assert_eq!(first[21], "text/plain; charset=utf-8");
    let empty = normalise(rgun.lines().nth(1).unwrap());
    assert_eq!((empty[10].as_str(), empty[11].as_str()), ("0", "0"));
}

/// The Uvicorn worker classes: Gunicorn writes Uvicorn's access lines
/// (`127.0.0.1:PORT - "GET /path?q HTTP/1.1" 200`), and so does rgun, unless
/// `--access-logformat` asks for a format.
#[test]
fn uvicorn_worker_classes_log_uvicorns_access_lines() {
    let requests: [&[u8]; 3] = [
        b"GET /caf%C3%A9/x%20y%22?q=1&r=%22 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /plain HTTP/1.0\r\n\r\n",
        b"POST /a/b HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ];
    // The client's port differs from connection to connection.
    let without_port = |line: &str| {
        let (addr, rest) = line.split_once(" - ").expect("uvicorn's separator");
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        assert!(port.parse::<u16>().is_ok(), "{line}");
        format!("{host} - {rest}")
    };
    for class in [
        "uvicorn.workers.UvicornWorker",
        "uvicorn.workers.UvicornH11Worker",
    ] {
        let servers = both("compat_app:asgi", &["-k", class]);
        let mut logs = Vec::new();
        for (name, server) in &servers {
            for raw in requests {
                let answer = String::from_utf8_lossy(&server.exchange(raw)).into_owned();
                assert!(answer[8..].starts_with(" 200 "), "{name}: {answer}");
            }
            let logged = wait_until(Duration::from_secs(10), || {
                server.access_log().lines().count() >= requests.len()
            });
            assert!(logged, "{name} {class}: {}", server.access_log());
            let lines: Vec<String> = server.access_log().lines().map(without_port).collect();
            logs.push(lines);
        }
        assert_eq!(logs[0], logs[1], "{class}: rgun, then gunicorn");
        assert_eq!(
            logs[0][0],
            "127.0.0.1 - \"GET /caf%C3%A9/x%20y%22?q=1&r=%22 HTTP/1.1\" 200"
        );
    }
    // A format of one's own wins.
    let rgun = crate::support::ServerBuilder::new("compat_app:asgi")
        .args([
            "-k",
            "uvicorn.workers.UvicornWorker",
            "--access-logformat",
            "%(m)s %(U)s %(s)s",
        ])
        .start();
    assert_eq!(rgun.get("/x").status, 200);
    assert!(
        wait_until(Duration::from_secs(10), || rgun.access_log()
            == "GET /x 200\n"),
        "{}",
        rgun.access_log()
    );
}
