//! `--shutdown-delay`: on TERM `/readyz` turns 503 at once while the listeners keep
//! accepting and serving for the delay; keep-alive responses then carry `Connection:
//! close` and HTTP/2 connections get GOAWAY; `status` says `draining`; afterwards the
//! graceful stop runs as before. A second TERM cuts the delay short.

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use super::{get, ops_port};
use crate::http2::{fetch, with_h2};
use crate::support::{read_response, wait_until, Server, ServerBuilder};

/// TERM, then wait (bounded) until `/readyz` says the server drains.
fn term_and_wait_for_draining(server: &Server, ops: u16) -> Instant {
    let termed = Instant::now();
    server.signal(libc::SIGTERM);
    let mut last = None;
    let draining = wait_until(Duration::from_secs(10), || {
        last = get(ops, "/readyz");
        last.as_ref()
            .is_some_and(|(c, t)| *c == 503 && t.contains("draining: shutdown delay"))
    });
    assert!(draining, "last answer {last:?}; log:\n{}", server.log());
    termed
}

#[test]
fn during_the_delay_the_server_is_not_ready_but_serves_and_closes_keep_alive() {
    let mut server = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["--metrics-bind", "127.0.0.1:0", "--shutdown-delay", "3"])
        .args(["--keep-alive", "30"])
        .start();
    let ops = ops_port(&server);
    assert_eq!(get(ops, "/readyz").unwrap().0, 200);
    // A keep-alive connection, as a load balancer's pool holds them.
    let mut conn = server.connect();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let ask = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    conn.write_all(ask).unwrap();
    let before = read_response(&mut reader, false).expect("a response");
    assert_eq!(before.status, 200);
    assert_eq!(before.header("connection"), None, "{before:?}");

    let termed = term_and_wait_for_draining(&server, ops);
    assert_eq!(server.status()["result"]["master"]["state"], "draining");
    // The keep-alive connection is still served, and told to go.
    conn.write_all(ask).unwrap();
    let during = read_response(&mut reader, false).expect("a response during the delay");
    assert_eq!(during.status, 200);
    assert_eq!(during.header("connection"), Some("close"), "{during:?}");
    // New connections are still accepted and served.
    for _ in 0..5 {
        assert_eq!(server.get("/").status, 200);
    }
    assert!(
        termed.elapsed() < Duration::from_secs(3),
        "the checks above took the whole delay; the machine is too slow for this test"
    );
    assert_eq!(server.wait_exit(Duration::from_secs(40)), Some(0));
    assert!(
        termed.elapsed() >= Duration::from_secs(3),
        "{:?}",
        termed.elapsed()
    );
    let log = server.log();
    assert!(
        log.contains("Draining: not ready, still serving for 3s"),
        "{log}"
    );
    assert!(
        log.contains("Shutdown delay over; stopping the workers"),
        "{log}"
    );
}

#[test]
fn http2_gets_goaway_during_the_delay_and_a_second_term_cuts_it_short() {
    let mut server = ServerBuilder::new("http2_app:application")
        .workers(1)
        .args(["--http2-cleartext", "--metrics-bind", "127.0.0.1:0"])
        .args(["--shutdown-delay", "120"])
        .start();
    let ops = ops_port(&server);
    let port = server.port;
    let shared = &server;
    let goaway = with_h2(port, |mut send| async move {
        let (status, _, _) = fetch(&mut send, "GET", "/echo", &[], b"").await;
        assert_eq!(status, 201);
        let termed = term_and_wait_for_draining(shared, ops);
        // The worker is not stopping (the delay is 120 s), yet a new stream is refused
        // once GOAWAY has come.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(mut ready) = send.clone().ready().await else {
                return (true, termed);
            };
            let req = http::Request::get("http://127.0.0.1/echo")
                .body(())
                .unwrap();
            let Ok((response, _)) = ready.send_request(req, true) else {
                return (true, termed);
            };
            if response.await.is_err() {
                return (true, termed);
            }
        }
        (false, termed)
    });
    assert!(
        goaway.0,
        "no GOAWAY during the delay; log:\n{}",
        server.log()
    );
    // Still serving HTTP/1 on new connections.
    assert_eq!(server.get("/echo").status, 201);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(40)), Some(0));
    assert!(goaway.1.elapsed() < Duration::from_secs(100));
    let log = server.log();
    assert!(
        log.contains("Shutdown delay cut short by a second TERM"),
        "{log}"
    );
}
