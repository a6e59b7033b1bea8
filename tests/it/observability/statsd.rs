//! `--statsd-host`: Gunicorn's metric names and types, with the prefix and dogstatsd
//! tags, for 2xx, 4xx and 5xx requests, over UDP and a Unix datagram socket;
//! autoscaling's bounds, target and decisions; and a reload onto another host.

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use super::observed;
use crate::support::{ctl, ServerBuilder};

/// Every statsd line received until each of `wanted` has been seen and the
/// `requests` counter (`PREFIX.gunicorn.requests`) adds up to three (or `limit`).
fn collect(
    recv: impl Fn(&mut [u8]) -> Option<usize>,
    wanted: &[&str],
    (requests, tags): (&str, &str),
    limit: Duration,
) -> Vec<String> {
    receive_until(recv, limit, |lines| {
        wanted
            .iter()
            .all(|w| lines.iter().any(|l| l.starts_with(w)))
            && counted(lines, requests, tags) >= 3
    })
}

/// Every statsd line `recv` gives until `done` holds for them (or `limit` passes).
fn receive_until(
    recv: impl Fn(&mut [u8]) -> Option<usize>,
    limit: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let start = Instant::now();
    let mut lines: Vec<String> = Vec::new();
    let mut buf = [0u8; 65536];
    while start.elapsed() < limit && !done(&lines) {
        if let Some(n) = recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            lines.extend(text.split('\n').map(str::to_owned));
        }
    }
    lines
}

/// A UDP statsd sink on a loopback port (reads time out after 200 ms) and its address.
fn udp_sink() -> (UdpSocket, String) {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = sink.local_addr().unwrap().to_string();
    (sink, addr)
}

/// The sum of counter `name`'s values (`name:N|c|@1.0TAGS` lines: statsd adds them
/// up, and rgun sends a counter's sum since its last send).
fn counted(lines: &[String], name: &str, tags: &str) -> u64 {
    let tail = format!("|c|@1.0{tags}");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.strip_suffix(&tail))
        .map(|n| {
            n.parse::<u64>()
                .unwrap_or_else(|_| panic!("not a count: {n:?}"))
        })
        .sum()
}

fn assert_gunicorn_lines(lines: &[String], prefix: &str, tags: &str) {
    for status in [200, 404, 500] {
        let name = format!("{prefix}gunicorn.request.status.{status}");
        assert_eq!(counted(lines, &name, tags), 1, "{name} in {lines:#?}");
    }
    let requests = format!("{prefix}gunicorn.requests");
    assert_eq!(counted(lines, &requests, tags), 3, "{lines:#?}");
    let timers: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with(&format!("{prefix}gunicorn.request.duration:")))
        .collect();
    assert_eq!(timers.len(), 3, "{lines:#?}");
    for t in timers {
        let value = t
            .strip_prefix(&format!("{prefix}gunicorn.request.duration:"))
            .and_then(|v| v.strip_suffix(&format!("|ms{tags}")))
            .unwrap_or_else(|| panic!("not a timer in ms: {t:?}"));
        let ms: f64 = value.parse().unwrap_or_else(|_| panic!("{t:?}"));
        assert!((0.0..10_000.0).contains(&ms), "{t:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("{prefix}gunicorn.workers:1|g{tags}")),
        "no workers gauge in {lines:#?}"
    );
    // The 500 is an exception the worker logs as an error.
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("{prefix}gunicorn.log.error:1|c|@1.0{tags}")),
        "no log.error counter in {lines:#?}"
    );
}

const WANTED: [&str; 6] = [
    "gunicorn.request.status.200",
    "gunicorn.request.status.404",
    "gunicorn.request.status.500",
    "gunicorn.request.duration",
    "gunicorn.workers",
    "gunicorn.log.error",
];

#[test]
fn statsd_over_udp_with_gunicorns_names_prefix_and_tags() {
    let (sink, addr) = udp_sink();
    let server = observed(
        1,
        &[
            "--statsd-host",
            &addr,
            "--statsd-prefix",
            "shop",
            "--dogstatsd-tags",
            "env:test,team:web",
        ],
    );
    for (path, status) in [("/", 200), ("/missing", 404), ("/boom", 500)] {
        assert_eq!(server.get(path).status, status);
    }
    let wanted: Vec<String> = WANTED.iter().map(|w| format!("shop.{w}")).collect();
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let lines = collect(
        |b| sink.recv(b).ok(),
        &wanted,
        ("shop.gunicorn.requests", "|#env:test,team:web"),
        Duration::from_secs(10),
    );
    assert_gunicorn_lines(&lines, "shop.", "|#env:test,team:web");
}

#[test]
fn statsd_over_a_unix_datagram_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("statsd.sock");
    let sink = UnixDatagram::bind(&path).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let server = observed(1, &["--statsd-host", &format!("unix://{}", path.display())]);
    for (path, status) in [("/", 200), ("/missing", 404), ("/boom", 500)] {
        assert_eq!(server.get(path).status, status);
    }
    let lines = collect(
        |b| sink.recv(b).ok(),
        &WANTED,
        ("gunicorn.requests", ""),
        Duration::from_secs(10),
    );
    assert_gunicorn_lines(&lines, "", "");
}

#[test]
fn no_statsd_server_listening_costs_nothing_visible() {
    // A port nobody listens on: the sends fail (ECONNREFUSED) and are ignored.
    let free = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let server = observed(1, &["--statsd-host", &addr]);
    for _ in 0..20 {
        assert_eq!(server.get("/").status, 200);
    }
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Autoscaling on statsd: the floor, ceiling and target as gauges beside
/// `gunicorn.workers`, and each decision counted (`rgun.autoscale.down` here: three idle
/// workers past a one-second idle window go back to the floor).
#[test]
fn statsd_carries_autoscalings_bounds_target_and_decisions() {
    let (sink, addr) = udp_sink();
    let server = observed(
        3,
        &[
            "--statsd-host",
            &addr,
            "--workers-min",
            "1",
            "--workers-max",
            "3",
            "--workers-idle",
            "1",
        ],
    );
    let wanted = [
        "rgun.autoscale.down:1|c|@1.0",
        "rgun.workers.target:1|g",
        "gunicorn.workers:1|g",
        "rgun.workers.min:1|g",
        "rgun.workers.max:3|g",
    ];
    let lines = receive_until(
        |b| sink.recv(b).ok(),
        Duration::from_secs(30),
        |lines| wanted.iter().all(|w| lines.iter().any(|l| l == w)),
    );
    for w in wanted {
        assert!(
            lines.iter().any(|l| l == w),
            "{w} missing from {lines:#?}\n{}",
            server.log()
        );
    }
    assert_eq!(counted(&lines, "rgun.autoscale.down", ""), 1, "{lines:#?}");
    assert_eq!(counted(&lines, "rgun.autoscale.up", ""), 0, "{lines:#?}");
}

/// A reload that changes `statsd_host` moves the whole server to it: the master's
/// `gunicorn.workers` gauge and the new worker's request lines go to the re-read
/// address. (Gunicorn 27 keeps the socket its logger was made with until a restart.)
#[test]
fn a_reload_moves_statsd_to_the_re_read_host() {
    let (first, first_addr) = udp_sink();
    let (second, second_addr) = udp_sink();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(&conf, format!("statsd_host = {first_addr:?}\n")).unwrap();
    let server = ServerBuilder::new("observed_app:application")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    assert_eq!(server.get("/").status, 200);
    let gauge = |lines: &[String]| lines.iter().any(|l| l == "gunicorn.workers:1|g");
    let before = receive_until(|b| first.recv(b).ok(), Duration::from_secs(10), gauge);
    assert!(gauge(&before), "{before:#?}\n{}", server.log());

    std::fs::write(&conf, format!("statsd_host = {second_addr:?}\n")).unwrap();
    ctl(&server, &["reload"]).assert_ok("a reload onto another statsd host");
    let after = receive_until(
        |b| {
            assert_eq!(server.get("/").status, 200);
            second.recv(b).ok()
        },
        Duration::from_secs(15),
        |lines| gauge(lines) && counted(lines, "gunicorn.requests", "") >= 1,
    );
    assert!(
        gauge(&after),
        "no master gauge at the new host: {after:#?}\n{}",
        server.log()
    );
    assert!(
        counted(&after, "gunicorn.requests", "") >= 1,
        "no worker's requests at the new host: {after:#?}\n{}",
        server.log()
    );
}
