//! GOAWAY when a worker leaves, for WSGI and ASGI workers alike: a stop (SIGTERM), a
//! reload (`rgunctl reload`: the new generation replaces the worker) and
//! `--max-requests` recycling each send GOAWAY on the worker's HTTP/2 connections, a
//! stream in flight there finishes, and the client's next connection reaches the
//! worker that replaced it.
//!
//! The stream in flight is `/wait?file=F`, which answers only once the test creates
//! F: it is still in the application when GOAWAY comes, whatever the machine's load.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;

use super::{fetch, h2c_server_of, with_h2, Kind};
use crate::support::{rgunctl_bin, Server};

/// What a worker needs so that its loop hears a signal while a stream waits in the
/// application (WSGI: a pool thread runs it; ASGI: the loop is never blocked).
fn flags(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Wsgi => &["--threads", "4"],
        Kind::Asgi => &[],
    }
}

/// Waits (without blocking the runtime) until `path` exists.
async fn appears(path: &Path) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if path.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Whether a new stream on `send`'s connection is refused, waiting up to 20 s for the
/// GOAWAY that refuses it (a stream opened before it came is answered and tried
/// again).
async fn refused_after_goaway(send: &SendRequest<Bytes>) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(mut ready) = send.clone().ready().await else {
            return true;
        };
        let req = http::Request::get("http://127.0.0.1/echo?before-goaway")
            .body(())
            .unwrap();
        let Ok((response, _)) = ready.send_request(req, true) else {
            return true;
        };
        if response.await.is_err() {
            return true;
        }
    }
    false
}

/// What became of a connection whose worker was retired while a stream was in flight.
struct Across {
    /// The worker that answered the connection's first request.
    first_pid: String,
    /// The stream in flight: its status and body (the pid that answered it).
    status: u16,
    body: String,
}

/// On one connection: a first request, then `/wait` in flight while `retire` makes
/// the worker leave; a new stream must then be refused (GOAWAY) while `/wait` is still
/// in the application, and `/wait` must finish once released.
async fn stream_across_goaway(
    mut send: SendRequest<Bytes>,
    gate: PathBuf,
    retire: impl FnOnce(),
) -> Across {
    let (first, _, body) = fetch(&mut send, "GET", "/echo", &[], b"").await;
    assert_eq!(first, 201);
    let first_pid = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["pid"].to_string();
    let started = PathBuf::from(format!("{}.started", gate.display()));
    let pending = {
        let mut send = send.clone();
        let path = format!("/wait?file={}", gate.display());
        tokio::spawn(async move { fetch(&mut send, "GET", &path, &[], b"").await })
    };
    assert!(
        appears(&started).await,
        "the stream reached the application"
    );
    retire();
    assert!(
        refused_after_goaway(&send).await,
        "a stream opened after GOAWAY is refused"
    );
    assert!(
        !pending.is_finished(),
        "the stream in flight is still in the application"
    );
    std::fs::write(&gate, b"go").unwrap();
    let (status, _, body) = pending.await.unwrap();
    Across {
        first_pid,
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Retires the worker with `retire` across a stream in flight; checks that stream
/// finished on the old worker and that a new connection reaches another one.
fn retire_across_a_stream(kind: Kind, extra: &[&str], retire: impl FnOnce(&Server)) -> Server {
    let server = h2c_server_of(kind, &[flags(kind), extra].concat());
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let across = with_h2(server.port, |send| {
        stream_across_goaway(send, gate, || retire(&server))
    });
    assert_eq!(
        across.status,
        200,
        "{kind:?}: the stream in flight finishes: {}",
        server.log()
    );
    assert_eq!(
        across.body, across.first_pid,
        "{kind:?}: answered by the worker it started on"
    );
    let pid = with_h2(server.port, |mut send| async move {
        let (status, _, body) = fetch(&mut send, "GET", "/echo", &[], b"").await;
        assert_eq!(status, 201);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["pid"].to_string()
    });
    assert_ne!(
        pid,
        across.first_pid,
        "{kind:?}: a new connection reaches the replacement: {}",
        server.log()
    );
    server
}

fn stop(kind: Kind) {
    let mut server = h2c_server_of(kind, flags(kind));
    let dir = tempfile::tempdir().unwrap();
    let pid = server.pid();
    let across = with_h2(server.port, |send| {
        stream_across_goaway(send, dir.path().join("gate"), || {
            // SAFETY: kill(2) on the server we started, by its pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        })
    });
    assert_eq!(
        across.status,
        200,
        "{kind:?}: the stream in flight finishes: {}",
        server.log()
    );
    assert_eq!(across.body, across.first_pid);
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
}

fn reload(kind: Kind) {
    let mut ctl = None;
    let server = retire_across_a_stream(kind, &[], |server| {
        // `rgunctl reload` answers once the new generation serves; the old worker
        // is told to stop meanwhile, and drains while the stream is held.
        let mut cmd = std::process::Command::new(rgunctl_bin());
        cmd.env_remove("RGUN_CONTROL_SOCKET")
            .arg("-s")
            .arg(&server.ctl_path)
            .arg("reload")
            .stdin(std::process::Stdio::null());
        ctl = Some(std::thread::spawn(move || cmd.output().unwrap()));
    });
    let out = ctl.unwrap().join().unwrap();
    assert!(
        out.status.success(),
        "{kind:?}: rgunctl reload: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

fn max_requests(kind: Kind) {
    // The first request and this HTTP/1 one make two: the worker recycles while the
    // stream is in flight.
    retire_across_a_stream(kind, &["--max-requests", "2"], |server| {
        assert_eq!(server.get("/echo").status, 201);
    });
}

#[test]
fn stopping_sends_goaway_and_finishes_the_streams_in_flight() {
    stop(Kind::Wsgi);
}

#[test]
fn stopping_an_asgi_worker_sends_goaway_and_finishes_the_streams_in_flight() {
    stop(Kind::Asgi);
}

#[test]
fn a_reload_sends_goaway_finishes_the_stream_and_the_next_connection_is_the_new_worker() {
    reload(Kind::Wsgi);
}

#[test]
fn an_asgi_reload_sends_goaway_finishes_the_stream_and_the_next_connection_is_the_new_worker() {
    reload(Kind::Asgi);
}

#[test]
fn max_requests_recycling_sends_goaway_and_finishes_the_stream_in_flight() {
    max_requests(Kind::Wsgi);
}

#[test]
fn asgi_max_requests_recycling_sends_goaway_and_finishes_the_stream_in_flight() {
    max_requests(Kind::Asgi);
}
