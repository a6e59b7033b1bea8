//! The accept queue drains, never resets: clients that connected (and sent their
//! request) while the only worker was busy wait in the listener's backlog; TERM then
//! stops the server, and every one of them gets its answer. Closing a listening socket
//! resets whatever waits in its backlog, so the master lets go of the listeners and the
//! last worker serves the backlog before it leaves. Gunicorn 27, measured the same way
//! (its figure is printed, not asserted: it is what rgun does better), resets them.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::support::{read_response, wait_until, ServerBuilder};

/// Clients queued in the backlog (the listener's backlog is this size too).
const QUEUED: usize = 50;

#[derive(Debug, Default)]
struct Outcome {
    served: usize,
    reset: usize,
    /// Closed without an answer, or anything else, with what happened.
    other: Vec<String>,
    exit: Option<i32>,
}

/// Clients waiting in the accept queue of the listening socket on 127.0.0.1:`port`
/// (`/proc/net/tcp`'s rx_queue of a LISTEN socket is its accept queue).
fn accept_queue(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[1] == local && f[3] == "0A")
        .and_then(|f| f[4].split(':').nth(1).map(str::to_owned))
        .and_then(|q| usize::from_str_radix(&q, 16).ok())
        .unwrap_or(0)
}

/// Reads everything the server sends back: a reset shows as the read's error (a
/// buffered reader would hide it behind "no response").
fn outcome_of(mut client: TcpStream) -> Result<(), std::io::Error> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut answer = Vec::new();
    client.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") && body.starts_with("ok ") => Ok(()),
        Some(_) => Err(std::io::Error::other(format!("answered {answer:?}"))),
        None if answer.is_empty() => Err(std::io::Error::other("closed without an answer")),
        None => Err(std::io::Error::other(format!("cut short: {answer:?}"))),
    }
}

/// One busy worker, `QUEUED` clients in the backlog, TERM, then the busy request ends.
fn stop_with_a_full_backlog(server: ServerBuilder, dir: &Path) -> Outcome {
    let release = dir.join("release");
    let mut server = server
        .args(["--backlog", &QUEUED.to_string(), "--graceful-timeout", "60"])
        .start();
    let mut busy = server.connect();
    let hold = format!(
        "GET /hold?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        release.display()
    );
    busy.write_all(hold.as_bytes()).unwrap();
    let started = release.with_extension("started");
    assert!(wait_until(Duration::from_secs(30), || started.exists()));
    let clients: Vec<TcpStream> = (0..QUEUED)
        .map(|_| {
            let mut c = server.connect();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    let mut queued = 0;
    let full = wait_until(Duration::from_secs(20), || {
        queued = accept_queue(server.port);
        queued >= QUEUED
    });
    assert!(full, "{queued} of {QUEUED} in the accept queue");

    server.signal(libc::SIGTERM);
    server.wait_for_log("Handling signal: term", Duration::from_secs(10));
    std::fs::write(&release, "").unwrap();
    let held = read_response(&mut BufReader::new(&mut busy), false).expect("the busy request");
    assert_eq!(held.text(), "held");

    let mut outcome = Outcome::default();
    for client in clients {
        match outcome_of(client) {
            Ok(()) => outcome.served += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => outcome.reset += 1,
            Err(e) => outcome.other.push(e.to_string()),
        }
    }
    outcome.exit = server.wait_exit(Duration::from_secs(90));
    outcome
}

/// rgun serves every queued client.
fn rgun_serves_the_backlog(app: &str, flags: &[&str]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let rgun = stop_with_a_full_backlog(
        ServerBuilder::new(app).args(flags.iter().copied()),
        dir.path(),
    );
    assert_eq!(
        (rgun.served, rgun.reset, rgun.other.len(), rgun.exit),
        (QUEUED, 0, 0, Some(0)),
        "{rgun:?}"
    );
    rgun
}

/// rgun serves every queued client; Gunicorn's figure for the same is printed.
fn compare(app: &str, flags: &[&str]) {
    let rgun = rgun_serves_the_backlog(app, flags);
    let dir = tempfile::tempdir().unwrap();
    let gunicorn = stop_with_a_full_backlog(
        ServerBuilder::new(app)
            .gunicorn()
            .args(flags.iter().copied()),
        dir.path(),
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "backlog drain {flags:?}: rgun served {} of {QUEUED}, reset {}; \
         gunicorn 27 served {}, reset {}, other {:?}",
        rgun.served,
        rgun.reset,
        gunicorn.served,
        gunicorn.reset,
        gunicorn.other
    );
}

#[test]
fn term_serves_the_backlog_with_one_thread() {
    compare("fleet_app:application", &["--threads", "1"]);
}

#[test]
fn term_serves_the_backlog_with_two_threads_and_one_connection() {
    compare(
        "fleet_app:application",
        &["--threads", "2", "--worker-connections", "1"],
    );
}

/// The ASGI worker's loop is asyncio's: the same end of the stop, driven from there.
/// (Gunicorn's `-k asgi` does not stop accepting at `--worker-connections`, so its
/// backlog never fills this way: no figure to compare.)
#[test]
fn term_serves_the_backlog_of_an_asgi_worker_at_its_connection_limit() {
    rgun_serves_the_backlog(
        "fleet_app:app",
        &["-k", "asgi", "--worker-connections", "1"],
    );
}
