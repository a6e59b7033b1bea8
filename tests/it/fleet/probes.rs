//! `/livez` and `/readyz` on `--metrics-bind`: the forms real checkers send, and
//! readiness following the workers (a broken deploy's boot failures, a recovery, a
//! graceful stop with a request in flight).

use std::time::Duration;

use super::{get, ops_port, probe};
use crate::support::{wait_until, ServerBuilder};

#[test]
fn probes_answer_haproxy_kubelet_and_head_forms() {
    let server = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["--metrics-bind", "127.0.0.1:0"])
        .start();
    let port = ops_port(&server);
    // HAProxy's `option httpchk` (HTTP/1.0 without Host).
    let (code, text) = get(port, "/readyz").unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains("ready: 2 of 2 workers of generation 1"),
        "{text}"
    );
    assert!(text.contains("Connection: close"), "{text}");
    let (code, text) = get(port, "/livez").unwrap();
    assert_eq!(code, 200, "{text}");
    // The kubelet's httpGet probe.
    let kubelet = "GET /readyz HTTP/1.1\r\nHost: 10.1.2.3:9100\r\nUser-Agent: kube-probe/1.30\r\n\
                   Accept: */*\r\nConnection: close\r\n\r\n";
    let (code, text) = probe(port, kubelet).unwrap();
    assert_eq!(code, 200, "{text}");
    // HEAD: the status and the length, no body.
    let (code, text) = probe(port, "HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a body after HEAD: {text:?}");
    let (code, _) = probe(port, "POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(code, 405);
    // A probe every second is cheap: many in a row, all answered.
    for _ in 0..200 {
        assert_eq!(get(port, "/readyz").unwrap().0, 200);
    }
}

#[test]
fn readyz_follows_boot_failures_recovery_and_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("broken");
    let mut server = ServerBuilder::new("lifecycle_app:application")
        .workers(1)
        .args(["--metrics-bind", "127.0.0.1:0"])
        .env("RGUN_FAIL_MARKER", marker.to_str().unwrap())
        .start();
    let port = ops_port(&server);
    assert_eq!(get(port, "/readyz").unwrap().0, 200);

    // A broken deploy: the worker dies and its replacement cannot import the app.
    std::fs::write(&marker, "").unwrap();
    let _ = probe(server.port, "GET /crash HTTP/1.0\r\n\r\n");
    let mut last = None;
    let failing = wait_until(Duration::from_secs(30), || {
        last = get(port, "/readyz");
        last.as_ref()
            .is_some_and(|(c, t)| *c == 503 && t.contains("fail to boot"))
    });
    assert!(failing, "last answer {last:?}; log:\n{}", server.log());
    // The master itself is fine.
    assert_eq!(get(port, "/livez").unwrap().0, 200);

    std::fs::remove_file(&marker).unwrap();
    let recovered = wait_until(Duration::from_secs(60), || {
        get(port, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    assert!(recovered, "log:\n{}", server.log());

    // TERM with a request in flight: not ready at once, not live either, while the
    // request finishes.
    let slow = {
        let port = server.port;
        std::thread::spawn(move || {
            let (code, text) = probe(
                port,
                "GET /sleep?3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .expect("the request in flight is answered");
            assert_eq!(code, 200, "{text}");
        })
    };
    server.wait_for_request_in_flight(Duration::from_secs(10));
    server.signal(libc::SIGTERM);
    let mut last = None;
    let draining = wait_until(Duration::from_secs(10), || {
        last = get(port, "/readyz");
        last.as_ref()
            .is_some_and(|(c, t)| *c == 503 && t.contains("draining"))
    });
    assert!(draining, "last answer {last:?}; log:\n{}", server.log());
    assert_eq!(get(port, "/livez").unwrap().0, 503);
    slow.join().unwrap();
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
}
