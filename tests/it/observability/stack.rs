//! `rgunctl stack`: a live worker's Python stacks with source lines and the request
//! each thread serves; the worker keeps serving.

use std::time::Duration;

use serde_json::Value;

use super::observed;
use crate::support::ctl;

/// The thread serving `path` in one worker's answer.
fn serving<'a>(worker: &'a Value, path: &str) -> &'a Value {
    worker["threads"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["request"]["path"] == path))
        .unwrap_or_else(|| panic!("no thread serving {path}: {worker:#}"))
}

/// GET on a connection of its own (from another thread than the test's).
fn get_status(port: u16, path: &str) -> u16 {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = std::io::BufReader::new(s);
    crate::support::read_response(&mut r, false)
        .expect("a response")
        .status
}

const SLEEP_LINE: &str = r#"time.sleep(float(environ.get("QUERY_STRING") or "5"))"#;

#[test]
fn stack_shows_a_sleeping_request_and_leaves_the_worker_serving() {
    for threads in ["1", "3"] {
        let server = observed(1, &["--threads", threads]);
        let port = server.port;
        let slow = std::thread::spawn(move || get_status(port, "/sleep?2"));
        server.wait_for_request_in_flight(Duration::from_secs(10));
        let pid = server.worker_pids()[0];

        let out = ctl(&server, &["--json", "stack", &pid.to_string()]);
        assert_eq!(out.code, Some(0), "{out:?}");
        let answer: Value = out.json();
        assert_eq!(answer["pid"], pid);
        let t = serving(&answer, "/sleep?2");
        assert_eq!(t["request"]["method"], "GET");
        assert_eq!(
            t["request"]["client"].as_str().unwrap().split(':').next(),
            Some("127.0.0.1")
        );
        assert!(t["request"]["age_s"].as_f64().unwrap() >= 0.0);
        let stack = t["stack"].as_str().unwrap();
        assert!(stack.contains("observed_app.py"), "{stack}");
        assert!(stack.contains(SLEEP_LINE), "{stack}");

        let human = ctl(&server, &["stack", &pid.to_string()]);
        let text = &human.stdout;
        assert_eq!(human.code, Some(0), "{human:?}");
        assert!(
            text.contains("serving GET /sleep?2 for 127.0.0.1 ("),
            "{text}"
        );
        assert!(text.contains(SLEEP_LINE), "{text}");

        let all = ctl(&server, &["--json", "stack", "--all"]);
        assert_eq!(all.code, Some(0), "{all:?}");
        let all: Value = all.json();
        assert_eq!(all["workers"].as_array().map(Vec::len), Some(1), "{all:#}");
        serving(&all["workers"][0], "/sleep?2");

        // The worker finished the request it was asked about and serves on.
        assert_eq!(slow.join().unwrap(), 200, "threads {threads}");
        assert_eq!(server.get("/").status, 200);
        assert_eq!(server.worker_pids(), vec![pid], "threads {threads}");
    }
}

#[test]
fn stack_of_no_such_worker_is_an_error() {
    let server = observed(1, &[]);
    let out = ctl(&server, &["stack", "999999"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no worker with pid 999999"));
    let out = ctl(&server, &["stack"]);
    assert_eq!(out.code, Some(2), "{out:?}");
}
