//! Logs and names that fit the ecosystem: `-n/--name` in process titles, and the
//! JSON access log (`--access-log-json`).

use std::time::Duration;

use serde_json::Value;

use super::observed;
use crate::support::wait_until;

fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .to_owned()
}

#[test]
fn name_sets_the_process_titles() {
    let server = observed(2, &["-n", "shop-web"]);
    assert!(
        cmdline(server.pid()).starts_with("rgun: master [shop-web]"),
        "{:?}",
        cmdline(server.pid())
    );
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 2);
    for pid in workers {
        assert!(
            cmdline(pid).starts_with("rgun: worker [shop-web]"),
            "{:?}",
            cmdline(pid)
        );
    }
    // Without it, the application names them, as Gunicorn's default_proc_name.
    let plain = observed(1, &[]);
    assert!(cmdline(plain.pid()).starts_with("rgun: master [observed_app:application]"));
}

#[test]
fn the_json_access_log_has_one_object_per_request_keyed_by_atoms() {
    let server = observed(1, &["--access-log-json"]);
    let r = server.request(
        b"GET /missing?x=1&y=%22 HTTP/1.1\r\nHost: a\r\nUser-Agent: probe \"7\"\r\nReferer: http://r/\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    assert_eq!(server.get("/").status, 200);
    let mut lines: Vec<String> = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        lines = server.access_log().lines().map(str::to_owned).collect();
        lines.len() == 2
    }));
    let first: Value =
        serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]));
    assert_eq!(first["s"], 404);
    assert_eq!(first["m"], "GET");
    assert_eq!(first["U"], "/missing");
    assert_eq!(first["q"], "x=1&y=%22");
    assert_eq!(first["r"], "GET /missing?x=1&y=%22 HTTP/1.1");
    assert_eq!(first["H"], "HTTP/1.1");
    assert_eq!(first["h"], "127.0.0.1");
    assert_eq!(first["a"], "probe \"7\"");
    assert_eq!(first["f"], "http://r/");
    assert_eq!(first["B"], 14);
    assert_eq!(first["b"], "14");
    assert!(first["D"].is_u64() && first["L"].is_f64(), "{first}");
    assert!(first["t"].as_str().unwrap().starts_with('['), "{first}");
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["s"], 200);
}

/// Checks the syslog message of the `GET /hello` access line in `got` (it starts with
/// `access_prefix`, says 200 and ends in NUL) and returns the one of `/boom`'s error.
fn assert_hello_and_find_boom<'a>(got: &'a [String], access_prefix: &str) -> &'a String {
    let access = got
        .iter()
        .find(|m| m.contains("GET /hello HTTP/1.1"))
        .unwrap_or_else(|| panic!("no access line in {got:#?}"));
    assert!(access.starts_with(access_prefix), "{access:?}");
    assert!(
        access.ends_with('\0') && access.contains("\" 200 "),
        "{access:?}"
    );
    got.iter()
        .find(|m| m.contains("boom, on purpose"))
        .unwrap_or_else(|| panic!("no error in {got:#?}"))
}

/// Syslog messages received on `sink` until one of each `wanted` has come (or 10 s).
fn syslog_messages(sink: &std::net::UdpSocket, wanted: &[&str]) -> Vec<String> {
    let start = std::time::Instant::now();
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 65536];
    while start.elapsed() < Duration::from_secs(10)
        && !wanted.iter().all(|w| got.iter().any(|m| m.contains(w)))
    {
        if let Ok(n) = sink.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn log_syslog_sends_the_error_and_access_logs_as_gunicorn_frames_them() {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to = format!("udp://{}", sink.local_addr().unwrap());
    let server = observed(
        1,
        &[
            "--log-syslog",
            "--log-syslog-to",
            &to,
            "--log-syslog-prefix",
            "shop",
            "--log-syslog-facility",
            "local3",
        ],
    );
    assert_eq!(server.get("/hello").status, 200);
    assert_eq!(server.get("/boom").status, 500);
    let got = syslog_messages(
        &sink,
        &["GET /hello HTTP/1.1", "boom, on purpose", "Booting worker"],
    );
    // local3 = 19: info is <158>, error <155>; Python's SysLogHandler ends each in NUL.
    let error = assert_hello_and_find_boom(&got, "<158>gunicorn.shop.access: [");
    assert!(
        error.starts_with("<155>gunicorn.shop.error: ["),
        "{error:?}"
    );
    let info = got.iter().find(|m| m.contains("Booting worker")).unwrap();
    assert!(info.starts_with("<158>gunicorn.shop.error: ["), "{info:?}");
    // The files get their lines as before.
    assert!(server.log().contains("boom, on purpose"));
    assert!(wait_until(Duration::from_secs(5), || server
        .access_log()
        .contains("GET /hello")));
}

#[test]
fn bad_syslog_settings_are_one_line_and_exit_2() {
    for args in [
        ["--log-syslog-facility", "local9"],
        ["--log-syslog-to", "/dev/log"],
    ] {
        let out = crate::support::rgun()
            .arg("observed_app:application")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(args[0]), "{err}");
    }
}

#[test]
fn a_logging_dict_config_routes_and_formats_the_two_logs() {
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("errors.log");
    let access = dir.path().join("requests.log");
    let conf = crate::support::write_file(
        dir.path(),
        "gunicorn.conf.py",
        &format!(
            r#"
logconfig_dict = {{
    "version": 1,
    "root": {{"level": "INFO", "handlers": []}},
    "loggers": {{
        "gunicorn.error": {{"level": "INFO", "handlers": ["err"], "propagate": False}},
        "gunicorn.access": {{"handlers": ["acc"], "propagate": False}},
    }},
    "handlers": {{
        "err": {{"class": "logging.FileHandler", "filename": {errors:?}, "formatter": "e"}},
        "acc": {{"class": "logging.handlers.WatchedFileHandler", "filename": {access:?}, "formatter": "a"}},
    }},
    "formatters": {{
        "e": {{"format": "E|%(levelname)-7s|%(name)s|%(process)d|%(message)s"}},
        "a": {{"format": "A %(asctime)s %(message)s", "datefmt": "%Y"}},
    }},
}}
"#
        ),
    );
    let server = crate::support::ServerBuilder::new("observed_app:application")
        .args(["-c", conf.to_str().unwrap()])
        .no_wait()
        .start();
    assert!(wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&errors)
            .unwrap_or_default()
            .contains("All 1 workers ready")
    }));
    assert_eq!(server.get("/hello").status, 200);
    let log = std::fs::read_to_string(&errors).unwrap();
    let ready = log
        .lines()
        .find(|l| l.contains("All 1 workers ready"))
        .unwrap();
    assert_eq!(
        ready,
        format!(
            "E|INFO   |gunicorn.error|{}|All 1 workers ready",
            server.pid()
        )
    );
    let mut line = String::new();
    assert!(wait_until(Duration::from_secs(10), || {
        line = std::fs::read_to_string(&access).unwrap_or_default();
        line.contains("GET /hello")
    }));
    assert!(line.starts_with("A 20"), "{line:?}");
    assert!(line.contains("\"GET /hello HTTP/1.1\" 200"), "{line:?}");
}

#[test]
fn a_logging_dict_config_sends_records_to_syslog_handlers_as_python_frames_them() {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = sink.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let conf = crate::support::write_file(
        dir.path(),
        "gunicorn.conf.py",
        &format!(
            r#"
import logging.handlers
logconfig_dict = {{
    "version": 1,
    "loggers": {{
        "gunicorn.error": {{"level": "INFO", "handlers": ["err"]}},
        "gunicorn.access": {{"handlers": ["acc"]}},
    }},
    "handlers": {{
        "err": {{"class": "logging.handlers.SysLogHandler", "address": ("127.0.0.1", {port}),
                "facility": logging.handlers.SysLogHandler.LOG_LOCAL3, "formatter": "e"}},
        "acc": {{"class": "logging.handlers.SysLogHandler", "address": ["127.0.0.1", {port}],
                "facility": "local3", "formatter": "a"}},
    }},
    "formatters": {{
        "e": {{"format": "%(name)s[%(process)d]: %(levelname)s %(message)s"}},
        "a": {{"format": "%(name)s: %(message)s"}},
    }},
}}
"#
        ),
    );
    let server = crate::support::ServerBuilder::new("observed_app:application")
        .args(["-c", conf.to_str().unwrap()])
        .no_wait()
        .start();
    let ready = syslog_messages(&sink, &["All 1 workers ready"]);
    let ready = ready
        .iter()
        .find(|m| m.contains("All 1 workers ready"))
        .unwrap_or_else(|| panic!("no readiness record in {ready:#?}"));
    // local3 = 19: info is <158>, error <155>; the record as the formatter made it.
    assert_eq!(
        ready,
        &format!(
            "<158>gunicorn.error[{}]: INFO All 1 workers ready\0",
            server.pid()
        )
    );
    assert_eq!(server.get("/hello").status, 200);
    assert_eq!(server.get("/boom").status, 500);
    let got = syslog_messages(&sink, &["GET /hello HTTP/1.1", "boom, on purpose"]);
    let error = assert_hello_and_find_boom(&got, "<158>gunicorn.access: 127.0.0.1 - - [");
    assert!(error.starts_with("<155>gunicorn.error["), "{error:?}");
    assert!(error.contains("]: ERROR "), "{error:?}");
    // The handlers replace the streams: nothing of this reaches stderr or the log file.
    assert!(
        !server.log().contains("boom, on purpose"),
        "{}",
        server.log()
    );
}

#[test]
fn what_a_logging_config_asks_beyond_rgun_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let json = crate::support::write_file(
        dir.path(),
        "log.json",
        r#"{"version": 1, "loggers": {"gunicorn.error": {"handlers": ["r"]}},
            "handlers": {"r": {"class": "logging.handlers.RotatingFileHandler", "filename": "x"}}}"#,
    );
    let out = crate::support::rgun()
        .args(["observed_app:application", "--log-config-json"])
        .arg(&json)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RotatingFileHandler") && err.contains("not supported"),
        "{err}"
    );
    let out = crate::support::rgun()
        .args(["observed_app:application", "--log-config", "logging.ini"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-config-json"));
}
