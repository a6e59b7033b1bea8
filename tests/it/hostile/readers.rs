//! Clients that ask for large responses and then stop reading. Their responses wait in
//! the worker (at most a high-water mark each; an in-memory body is sent from the
//! application's object, not copied) while the event loop keeps serving everyone else:
//! no slow reader holds a Python thread, whatever `--threads` is.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use super::heavy::wait_closed;
use super::{honest_ping, start, Mode};
use crate::support::{read_response, rss_bytes};

/// How long an honest request may take while the readers stall.
const STALLED_LIMIT: Duration = Duration::from_secs(1);
/// How much the worker may grow while eight clients stall (a copied 32 MiB body per
/// client would be 128 MiB; a whole generated body 64 MiB each).
const GROWTH_LIMIT: u64 = 24 << 20;

fn slow_readers_hold_no_python_thread(mode: Mode) {
    let threads = mode.threads;
    let server = start(mode);
    let worker = server.worker_pids()[0];
    // The app's 32 MiB body exists from import on; warm the path once.
    assert!(honest_ping(&server) < STALLED_LIMIT * 3);
    let before = rss_bytes(worker);

    // Eight clients: four ask for the 32 MiB in-memory body, four for a generator of
    // 1,024 chunks of 64 KiB (64 MiB); none reads a byte.
    let mut stalled: Vec<TcpStream> = Vec::new();
    for i in 0..8 {
        let path = if i % 2 == 0 {
            "/big".to_owned()
        } else {
            format!("/stream?n=1024&tag=stalled{i}")
        };
        let mut s = server.connect();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .unwrap();
        stalled.push(s);
    }

    // Honest requests on other connections, throughout.
    let until = Instant::now() + Duration::from_secs(3);
    let mut worst = Duration::ZERO;
    let mut pings = 0;
    while Instant::now() < until {
        let took = honest_ping(&server);
        assert!(
            took < STALLED_LIMIT,
            "--threads {threads}: an honest request took {took:?} while 8 clients stalled; log:\n{}",
            server.log()
        );
        worst = worst.max(took);
        pings += 1;
        thread::sleep(Duration::from_millis(50));
    }
    let grown = rss_bytes(worker).saturating_sub(before);
    println!(
        "--threads {threads}: {pings} honest requests while 8 readers stalled, slowest {worst:?}; \
         worker RSS grew {} KiB",
        grown / 1024
    );
    assert!(
        grown < GROWTH_LIMIT,
        "--threads {threads}: the worker grew {} MiB for 8 stalled readers",
        grown >> 20
    );

    // They leave: the abandoned generators are closed, and the worker serves normally.
    drop(stalled);
    for i in [1, 3, 5, 7] {
        let rec = wait_closed(&server, &format!("stalled{i}"));
        assert!(rec["produced"].as_u64().unwrap() < 1024, "{rec}");
    }
    let took = honest_ping(&server);
    assert!(
        took < STALLED_LIMIT,
        "after the stalled readers left: {took:?}"
    );
    for path in ["/big", "/stream?n=64&tag=after"] {
        let mut s = server.connect();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let resp = read_response(&mut BufReader::new(&mut s), false).expect("a whole response");
        assert_eq!(resp.status, 200);
        let want = if path == "/big" { 32 << 20 } else { 64 * 65536 };
        assert_eq!(
            resp.body.len(),
            want,
            "{path} after the stalled readers left"
        );
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "bytes after the response to {path}");
    }
}

/// A client that stops reading is the connection's business (its deadline closes it),
/// not the application's: the master's `--timeout` clock, shown by `status` as the
/// request's `current_request_s`, does not run for it, and the worker is not aborted.
fn a_stalled_reader_is_not_a_worker_timeout(mode: Mode) {
    let server = mode.builder().args(["-t", "2"]).start();
    let worker = server.worker_pids();
    let mut stalled = server.connect();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut seen_clock = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        let status = server.status();
        let w = &status["result"]["workers"][0];
        if !w["current_request_s"].is_null() {
            seen_clock.push(w["current_request_s"].clone());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let log = server.log();
    assert!(
        !log.contains("WORKER TIMEOUT"),
        "a slow reader timed the worker out:\n{log}"
    );
    assert_eq!(
        server.worker_pids(),
        worker,
        "the worker was replaced:\n{log}"
    );
    // The response had long been produced: only its first moments are the app's.
    assert!(
        seen_clock.len() <= 2,
        "the time-out clock ran while the client stalled: {seen_clock:?}"
    );
    // Its deadline closed the stalled connection.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match stalled.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(
        total < 32 << 20,
        "the whole body arrived after the deadline"
    );
    assert!(honest_ping(&server) < STALLED_LIMIT);
}

both_thread_modes!(
    slow_readers_hold_no_python_thread,
    a_stalled_reader_is_not_a_worker_timeout
);
