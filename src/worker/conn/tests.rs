//! `Conn` driven over a socketpair, without Python: `Exec::Pool` stops at a complete
//! request (`Drive::Dispatch`), which is where the application would take over. What
//! these pin down is the state machine around it: heads and bodies split at every
//! byte, pipelined requests served one at a time, error answers, clients that vanish,
//! and a reader that stalls an error response.

use std::io::{Read, Write};
use std::time::Duration;

use super::harness::{answered, conn as pair, drive_stream, drive_uwsgi_stream, shared};
use super::{Conn, Drive, Exec, State};
use crate::http::body::Body;

fn conn() -> (Conn, std::os::unix::net::UnixStream) {
    let (c, client) = pair();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (c, client)
}

fn target(c: &Conn) -> String {
    String::from_utf8_lossy(&c.ex.head_bytes[c.ex.head.target.clone()]).into_owned()
}

fn body(c: &mut Conn) -> Vec<u8> {
    match c.pending_body.take() {
        Some(Body::Empty) | None => Vec::new(),
        Some(Body::Memory(b)) => b.to_vec(),
        Some(other) => panic!("unexpected body {other:?}"),
    }
}

#[test]
fn a_head_dribbled_byte_by_byte_dispatches_once_complete() {
    let ctx = shared();
    let (mut c, mut client) = conn();
    let req = b"POST /upload?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    for (i, b) in req.iter().enumerate() {
        client.write_all(&[*b]).unwrap();
        let d = c.drive(Exec::Pool, &ctx);
        if i + 1 < req.len() {
            assert_eq!(d, Drive::WaitRead, "after byte {i}");
        } else {
            assert_eq!(d, Drive::Dispatch);
        }
    }
    assert_eq!(target(&c), "/upload?x=1");
    assert_eq!(body(&mut c), b"hello");
}

#[test]
fn pipelined_requests_come_out_one_at_a_time_in_order() {
    let ctx = shared();
    let (mut c, mut client) = conn();
    client
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\n\
              Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        assert_eq!(c.drive(Exec::Pool, &ctx), Drive::Dispatch);
        seen.push((target(&c), body(&mut c)));
        answered(&mut c);
    }
    assert_eq!(
        seen,
        vec![
            ("/a".to_owned(), Vec::new()),
            ("/b".to_owned(), b"abc".to_vec()),
            ("/c".to_owned(), Vec::new())
        ]
    );
    assert_eq!(c.drive(Exec::Pool, &ctx), Drive::WaitRead);
    assert!(c.is_idle());
}

#[test]
fn a_client_that_vanishes_mid_body_is_closed_without_dispatch() {
    let ctx = shared();
    let (mut c, mut client) = conn();
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npartial")
        .unwrap();
    assert_eq!(c.drive(Exec::Pool, &ctx), Drive::WaitRead);
    drop(client);
    assert_eq!(c.drive(Exec::Pool, &ctx), Drive::Close);
}

#[test]
fn a_malformed_head_gets_400_and_a_half_close_without_dispatch() {
    let ctx = shared();
    let (mut c, mut client) = conn();
    client
        .write_all(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        .unwrap();
    assert_eq!(c.drive(Exec::Pool, &ctx), Drive::WaitRead);
    assert!(matches!(c.state, State::Draining));
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    drop(client);
    assert_eq!(c.drive(Exec::Pool, &ctx), Drive::Close);
}

#[test]
fn an_error_answer_to_a_reader_that_stalls_waits_for_the_socket() {
    let ctx = shared();
    let (mut c, mut client) = conn();
    // Fill the socket from our side so that the 400 cannot go out yet.
    let junk = vec![b'x'; 4096];
    loop {
        match c.transport.write(&junk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    client
        .write_all(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        .unwrap();
    assert_eq!(c.drive(Exec::Pool, &ctx), Drive::WaitWrite);
    assert_eq!(c.drive(Exec::Pool, &ctx), Drive::WaitWrite, "still stalled");
    // The reader catches up: the answer follows the bytes already sent.
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while !String::from_utf8_lossy(&seen).contains("400") {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the answer");
        seen.extend_from_slice(&buf[..n]);
        if c.drive(Exec::Pool, &ctx) == Drive::WaitWrite {
            continue;
        }
    }
    assert!(matches!(c.state, State::Draining));
}

#[test]
fn a_request_split_across_reads_at_every_point_parses_the_same() {
    let ctx = shared();
    let req: &[u8] = b"PUT /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                       4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n";
    for cut in 1..req.len() {
        let (mut c, mut client) = conn();
        client.write_all(&req[..cut]).unwrap();
        assert_eq!(c.drive(Exec::Pool, &ctx), Drive::WaitRead, "cut at {cut}");
        client.write_all(&req[cut..]).unwrap();
        assert_eq!(c.drive(Exec::Pool, &ctx), Drive::Dispatch, "cut at {cut}");
        assert_eq!(body(&mut c), b"wikipedia", "cut at {cut}");
    }
}

#[test]
fn the_fuzz_harness_counts_requests_and_sees_errors_answered() {
    let two = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    let out = drive_stream(two, &[3, 20, 40]);
    assert_eq!(out.dispatched, 2);
    assert!(out.closed);
    let out = drive_stream(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", &[1]);
    assert_eq!(out.dispatched, 0);
    assert!(String::from_utf8_lossy(&out.answered).starts_with("HTTP/1.1 400 "));
}

#[test]
fn uwsgi_packets_with_bodies_cut_anywhere_are_served_in_turn() {
    let mut stream = crate::http::uwsgi::packet(&[
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/a"),
        ("CONTENT_LENGTH", "5"),
    ]);
    stream.extend_from_slice(b"hello");
    stream.extend(crate::http::uwsgi::packet(&[("PATH_INFO", "/b")]));
    for cut in 0..stream.len() {
        let out = drive_uwsgi_stream(&stream, &[cut]);
        assert_eq!(out.dispatched, 2, "cut at {cut}");
        assert!(out.answered.is_empty(), "cut at {cut}");
    }
}

#[test]
fn a_malformed_uwsgi_packet_closes_unanswered() {
    let mut good = crate::http::uwsgi::packet(&[("PATH_INFO", "/a")]);
    // A variable whose value runs past the packet's end.
    good.extend_from_slice(&[0, 4, 0, 0, 1, 0, b'A', 9]);
    let out = drive_uwsgi_stream(&good, &[]);
    assert_eq!(out.dispatched, 1);
    assert!(out.closed && out.answered.is_empty());
    // An HTTP request to a uwsgi worker: modifier1 `G`.
    let out = drive_uwsgi_stream(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &[]);
    assert_eq!(out.dispatched, 0);
    assert!(out.closed && out.answered.is_empty());
}
