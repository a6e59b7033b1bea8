//! An exception in the application, as rgun and Gunicorn report it: the error-log
//! record (`Error handling request`, the traceback through the application's frames,
//! the exception) whether the call, the body's first item or the body midway raised.

use super::{both, wait_for_record, Record, APP};

/// The application's part of a traceback: from its first frame in `compat_app.py` to
/// the exception line. (Gunicorn's frames above it are its own worker's.)
fn app_frames(record: &Record) -> Vec<String> {
    let first = record
        .lines
        .iter()
        .position(|l| l.contains("compat_app.py"))
        .unwrap_or_else(|| panic!("no frame of the application in {record:#?}"));
    record.lines[first..].to_vec()
}

#[test]
fn an_exception_is_logged_with_its_traceback_as_gunicorn_logs_it() {
    // At the default level and at debug (the traceback was missing at both).
    for args in [&[][..], &["--log-level", "debug"]] {
        exception_records(&both(APP, args));
    }
}

/// Each way an application's request can fail, the record rgun and Gunicorn write.
fn exception_records(servers: &[(&str, crate::support::Server); 2]) {
    // path, what raised, whether the head went out first
    let cases = [
        ("/raise?x=1", "ValueError: boom in the call", false),
        ("/raise_first", "KeyError: 'boom in the first item'", false),
        ("/raise_mid", "RuntimeError: boom mid-body", true),
    ];
    for (path, exception, head_sent) in cases {
        let mut seen = Vec::new();
        for (name, server) in servers {
            let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            // Read until the server closes: after a failure mid-body both close
            // without ending the body.
            let answer = String::from_utf8_lossy(&server.exchange(raw.as_bytes())).into_owned();
            let status = if head_sent {
                "HTTP/1.1 200"
            } else {
                "HTTP/1.1 500"
            };
            assert!(answer.starts_with(status), "{name} {path}: {answer}");
            let record = wait_for_record(server, exception);
            assert_eq!(record.level, "ERROR", "{name}: {record:#?}");
            assert_eq!(
                record.lines[1], "Traceback (most recent call last):",
                "{name}: {record:#?}"
            );
            assert_eq!(
                record.lines.last().unwrap(),
                exception,
                "{name}: {record:#?}"
            );
            seen.push((record.lines[0].clone(), app_frames(&record)));
        }
        let (rgun, gunicorn) = (&seen[0], &seen[1]);
        assert_eq!(rgun.1, gunicorn.1, "the application's frames for {path}");
        let request = format!("Error handling request GET {path}");
        if head_sent {
            // Gunicorn names no request once the head is out; rgun still does.
            assert_eq!(gunicorn.0, "Error handling request");
            assert_eq!(rgun.0, request);
        } else {
            assert_eq!(
                (rgun.0.as_str(), gunicorn.0.as_str()),
                (&*request, &*request)
            );
        }
    }
}

/// Over HTTP/2 the same record (Gunicorn is not run: its HTTP/2 needs TLS and more
/// set-up, and the record is written by the code the HTTP/1 comparison covers).
#[test]
fn an_http2_stream_logs_the_same_record() {
    let server = crate::support::ServerBuilder::new(APP)
        .arg("--http2-cleartext")
        .start();
    let statuses = crate::http2::with_h2(server.port, |send| async move {
        let mut statuses = Vec::new();
        for path in ["/raise?x=1", "/raise_mid"] {
            let request = http::Request::get(format!("http://127.0.0.1{path}"))
                .body(())
                .unwrap();
            let mut ready = send.clone().ready().await.expect("ready");
            let (response, _) = ready.send_request(request, true).expect("send_request");
            // Midway the stream is reset, possibly before its head went out.
            let status = match response.await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let mut body = response.into_body();
                    while let Some(Ok(_)) = body.data().await {}
                    status
                }
                Err(e) => {
                    assert!(e.reason().is_some(), "{e}");
                    0
                }
            };
            statuses.push(status);
        }
        statuses
    });
    assert_eq!(statuses[0], 500);
    assert!(matches!(statuses[1], 0 | 200), "{statuses:?}");
    for (exception, first) in [
        (
            "ValueError: boom in the call",
            "Error handling request GET /raise?x=1",
        ),
        (
            "RuntimeError: boom mid-body",
            "Error handling request GET /raise_mid",
        ),
    ] {
        let record = wait_for_record(&server, exception);
        assert_eq!(record.lines[0], first, "{record:#?}");
        assert_eq!(record.lines[1], "Traceback (most recent call last):");
        assert!(app_frames(&record).len() > 2, "{record:#?}");
    }
}

/// The page a failed request gets: the same status, content type and body as
/// Gunicorn's, and the connection closes after it.
#[test]
fn the_500_page_is_gunicorns() {
    let servers = both(APP, &[]);
    let [rgun, gunicorn] = servers.map(|(_, server)| server.get("/raise"));
    for r in [&rgun, &gunicorn] {
        assert_eq!(r.status, 500);
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(rgun.header("content-type"), gunicorn.header("content-type"));
    assert_eq!(rgun.header("content-type"), Some("text/html"));
    assert_eq!(rgun.text(), gunicorn.text());
    assert!(rgun.text().contains("<title>Internal Server Error</title>"));
}
