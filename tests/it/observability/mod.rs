//! Observability against a real daemon: `--metrics-bind`'s `/metrics` read by
//! `prometheus_client`'s own text parser (counters that add up to the requests sent,
//! a restart counted after a worker is killed, `rgunctl metrics` printing the same
//! families), and statsd packets with Gunicorn's names and types received on a UDP
//! socket and on a Unix datagram socket.
//!
//! Every wait is bounded; nothing sleeps for readiness.

mod logs;
mod prometheus;
mod stack;
mod statsd;
mod top;
mod watch;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{venv, wait_until, Server, ServerBuilder};

/// One sample as `prometheus_client` parsed it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses exposition text with `prometheus_client.parser` in the test venv (a parse
/// error fails the test).
fn parse(text: &str) -> Vec<Sample> {
    let script = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = []\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       out.append([s.name, s.labels, s.value, family.type])\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(venv().join("bin").join("python"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter()
        .map(|r| Sample {
            name: r[0].as_str().unwrap().to_owned(),
            labels: serde_json::from_value(r[1].clone()).unwrap(),
            value: r[2].as_f64().unwrap(),
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include `want`.
fn total(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// The metrics server's port, from its start-up line.
fn metrics_port(server: &Server) -> u16 {
    server.wait_for_log("Metrics at: http://127.0.0.1:", Duration::from_secs(10));
    let log = server.log();
    let rest = log.split("Metrics at: http://127.0.0.1:").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// One raw HTTP exchange with the metrics server: (status line, headers+body text).
fn http(port: u16, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .expect("read until the server closes");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_owned(), body.to_owned())
}

fn scrape(port: u16) -> String {
    let (head, body) = http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

fn observed(workers: u32, extra: &[&str]) -> Server {
    ServerBuilder::new("observed_app:application")
        .workers(workers)
        .args(["--metrics-bind", "127.0.0.1:0"])
        .args(extra.iter().copied())
        .start()
}

/// The exposition after 7 answers of 200, 3 of 404 and 2 of 500 by two workers, none
/// exited; and the fd://3 listener's backlog.
fn assert_the_first_twelve_requests(samples: &[Sample]) {
    assert_eq!(
        total(samples, "rgun_requests_total", &[("status", "2xx")]),
        7.0
    );
    assert_eq!(
        total(samples, "rgun_requests_total", &[("status", "4xx")]),
        3.0
    );
    assert_eq!(
        total(samples, "rgun_requests_total", &[("status", "5xx")]),
        2.0
    );
    assert_eq!(total(samples, "rgun_requests_total", &[]), 12.0);
    assert_eq!(
        total(
            samples,
            "rgun_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        12.0
    );
    assert_eq!(total(samples, "rgun_workers", &[("generation", "1")]), 2.0);
    assert_eq!(total(samples, "rgun_workers_target", &[]), 2.0);
    assert_eq!(total(samples, "rgun_worker_spawns_total", &[]), 2.0);
    assert_eq!(total(samples, "rgun_worker_exits_total", &[]), 0.0);
    assert_eq!(total(samples, "rgun_requests_in_flight", &[]), 0.0);
    assert!(total(samples, "rgun_uptime_seconds", &[]) > 0.0);
    assert!(total(samples, "rgun_worker_rss_bytes", &[]) > 1e6);
    // The test's listener is a TCP socket handed over as fd://3.
    let backlog: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "rgun_listen_backlog_limit")
        .collect();
    assert_eq!(backlog.len(), 1, "{samples:#?}");
    assert!(backlog[0].value >= 1.0);
    assert!(samples.iter().any(|s| s.name == "rgun_listen_backlog"));
}

#[test]
fn metrics_count_the_requests_sent_and_a_killed_worker() {
    let server = observed(2, &[]);
    let port = metrics_port(&server);
    for (path, times, status) in [("/", 7, 200), ("/missing", 3, 404), ("/boom", 2, 500)] {
        for _ in 0..times {
            assert_eq!(server.get(path).status, status, "{path}");
        }
    }
    let mut samples = Vec::new();
    // A response is counted just after its last byte is sent: wait (bounded) for the
    // counters to catch up with what the client has read.
    let counted = wait_until(Duration::from_secs(10), || {
        samples = parse(&scrape(port));
        total(&samples, "rgun_request_duration_seconds_count", &[]) == 12.0
    });
    assert!(counted, "{samples:#?}");
    assert_the_first_twelve_requests(&samples);

    // A worker killed: its replacement is counted, and so is the crash; the counts of
    // the requests it served survive it.
    let victim = server.worker_pids()[0];
    // SAFETY: killing a worker of the server this test started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let restarted = wait_until(Duration::from_secs(20), || {
        samples = parse(&scrape(port));
        total(&samples, "rgun_worker_spawns_total", &[]) == 3.0
            && total(&samples, "rgun_workers", &[("state", "idle")]) == 2.0
    });
    assert!(restarted, "{samples:#?}\n{}", server.log());
    assert_eq!(
        total(&samples, "rgun_worker_exits_total", &[("reason", "crash")]),
        1.0
    );
    assert_eq!(total(&samples, "rgun_worker_exits_total", &[]), 1.0);
    assert_eq!(total(&samples, "rgun_requests_total", &[]), 12.0);
    assert_eq!(
        total(&samples, "rgun_request_duration_seconds_count", &[]),
        12.0
    );

    // rgunctl metrics prints the same exposition over the control socket.
    let out = crate::support::ctl(&server, &["metrics"]);
    let via_ctl = parse(&out.assert_ok("rgunctl metrics").stdout);
    assert_eq!(
        total(&via_ctl, "rgun_requests_total", &[("status", "4xx")]),
        3.0
    );
    assert_eq!(
        total(&via_ctl, "rgun_worker_exits_total", &[("reason", "crash")]),
        1.0
    );
}

#[test]
fn the_metrics_server_answers_only_metrics_and_survives_bad_clients() {
    let server = observed(1, &[]);
    let port = metrics_port(&server);
    let (head, body) = http(port, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.is_empty(), "{body}");
    let (head, _) = http(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = http(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    let (head, _) = http(port, "\u{1}\u{2} garbage\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (head, _) = http(
        port,
        &format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(20_000)),
    );
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // Clients that connect and say nothing, or vanish half-way, cost the master
    // nothing the next scrape notices.
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    {
        let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
        half.write_all(b"GET /met").unwrap();
    }
    let samples = parse(&scrape(port));
    assert_eq!(total(&samples, "rgun_workers", &[]), 1.0);
    assert_eq!(server.status()["ok"], Value::Bool(true));
    drop(idle);
}

#[test]
fn a_bad_metrics_address_is_one_line_and_exit_2() {
    let out = crate::support::rgun()
        .args(["observed_app:application", "--metrics-bind", "fd://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-bind"), "{err}");
}
