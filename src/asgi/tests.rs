//! `Cycle` driven from Rust, with no connection and no application: the test calls
//! `receive()` and `send()` as an application's coroutine would and reads what was
//! framed into the sink. The cycle's kit (the loop's futures, `ClientDisconnected`)
//! and its `Wakeups` are a real `AsgiApp`'s, over an asyncio loop that never runs:
//! nothing here needs it to, which is the point — the cycle is a state machine that
//! the connection core, not asyncio, moves.

use std::ffi::CString;
use std::io::{Seek, Write};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use super::cycle::{Cycle, Progress, SEND_HIGH_WATER_BYTES};
use super::sink::Sink;
use super::AsgiApp;
use crate::http::body::Body;
use crate::http::framer::Http1Response;
use crate::http::h2::H2Response;
use crate::http::response::RequestFacts;
use crate::net::outbox::Outbox;

/// The connection key the cycle wakes.
const KEY: usize = 7;

const FACTS: RequestFacts = RequestFacts {
    minor_version: 1,
    is_head: false,
    close: false,
    known_length: None,
};

fn http1() -> Sink {
    Sink::Http1(Http1Response::new(Outbox::default(), &FACTS))
}

/// Runs `f` with the GIL, an `AsgiApp` (no application behind it) and a cycle of its
/// framing into `sink`, with `body` as the request body.
fn with_cycle(sink: Sink, body: Body, f: impl FnOnce(&AsgiApp, &Bound<'_, Cycle>)) {
    pyo3::prepare_freethreaded_python();
    Python::with_gil(|py| {
        let none = py.None().into_bound(py);
        let app = AsgiApp::new(py, none, "", "asyncio", 1 << 20, Duration::from_secs(1))
            .expect("an ASGI bridge and its loop");
        let wake = (Arc::clone(&app.wakeups), KEY);
        let cycle = Cycle::new(py, sink, FACTS, body, wake, &app.kit);
        f(&app, &Bound::new(py, cycle).unwrap());
        app.event_loop(py).call_method0("close").unwrap();
    });
}

/// A Python expression's value (the messages are easiest read as Python).
fn eval<'py>(py: Python<'py>, expr: &str) -> Bound<'py, PyAny> {
    py.eval(&CString::new(expr).unwrap(), None, None)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
}

/// `send(message)`, the message written as a Python dict.
fn send<'py>(cycle: &Bound<'py, Cycle>, message: &str) -> PyResult<Bound<'py, PyAny>> {
    cycle.call_method1("send", (eval(cycle.py(), message),))
}

/// `send()`'s refusal text, which must be a RuntimeError.
fn refused(cycle: &Bound<'_, Cycle>, message: &str) -> String {
    let py = cycle.py();
    let e = send(cycle, message).expect_err("refused");
    assert!(
        e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py),
        "{e}"
    );
    e.value(py).to_string()
}

/// What an awaitable from `receive()`/`send()` is complete with; `None` while it
/// would suspend the application (a pending asyncio Future).
fn outcome<'py>(awaitable: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = awaitable.py();
    if awaitable.hasattr("done").unwrap() {
        let done = awaitable.call_method0("done").unwrap().is_truthy().unwrap();
        return done.then(|| awaitable.call_method0("result").unwrap());
    }
    // `cycle::Ready`: its first step stops at once with the value.
    let stop = awaitable
        .call_method0("__next__")
        .expect_err("a Ready stops");
    Some(stop.value(py).getattr("value").unwrap())
}

/// The message a `receive()` is complete with, as `(type, body, more_body)`.
fn received(cycle: &Bound<'_, Cycle>) -> Option<(String, Vec<u8>, bool)> {
    let message = outcome(&cycle.call_method0("receive").unwrap())?;
    let get = |key: &str| message.get_item(key).ok();
    Some((
        get("type").unwrap().extract().unwrap(),
        get("body").map_or(Vec::new(), |b| b.extract().unwrap()),
        get("more_body").is_some_and(|m| m.is_truthy().unwrap()),
    ))
}

/// The HTTP/1 bytes framed so far, taken (as the socket would take them).
fn framed(cycle: &Bound<'_, Cycle>) -> String {
    let bytes = std::mem::take(&mut cycle.borrow_mut().http().outbox.buf);
    String::from_utf8(bytes).unwrap()
}

fn progress(cycle: &Bound<'_, Cycle>) -> Progress {
    cycle.borrow().progress()
}

const START: &str = "{'type': 'http.response.start', 'status': 201, 'headers': [(b'x-a', b'b')]}";

#[test]
fn start_then_one_body_frames_a_response_with_its_length() {
    with_cycle(http1(), Body::Empty, |_, cycle| {
        let done = send(cycle, START).unwrap();
        assert!(outcome(&done).is_some(), "send() completes at once");
        assert_eq!(framed(cycle), "", "the head waits for the first body");
        assert_eq!(progress(cycle), Progress::Running);
        send(cycle, "{'type': 'http.response.body', 'body': b'hello'}").unwrap();
        let text = framed(cycle);
        assert!(text.starts_with("HTTP/1.1 201 Created\r\n"), "{text}");
        assert!(text.contains("\r\nx-a: b\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
        assert!(cycle.borrow().is_complete());
        assert_eq!(progress(cycle), Progress::Done);
    });
}

#[test]
fn more_body_streams_chunks_until_the_last_message() {
    with_cycle(http1(), Body::Empty, |_, cycle| {
        send(cycle, START).unwrap();
        send(
            cycle,
            "{'type': 'http.response.body', 'body': b'ab', 'more_body': True}",
        )
        .unwrap();
        let head = framed(cycle);
        assert!(
            head.contains("\r\nTransfer-Encoding: chunked\r\n"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n2\r\nab\r\n"), "{head}");
        assert_eq!(progress(cycle), Progress::Running);
        send(
            cycle,
            "{'type': 'http.response.body', 'body': b'cde', 'more_body': True}",
        )
        .unwrap();
        send(cycle, "{'type': 'http.response.body'}").unwrap();
        assert_eq!(framed(cycle), "3\r\ncde\r\n0\r\n\r\n");
        assert_eq!(progress(cycle), Progress::Done);
    });
}

#[test]
fn a_second_start_and_a_message_after_the_end_are_refused() {
    with_cycle(http1(), Body::Empty, |_, cycle| {
        send(cycle, START).unwrap();
        let text = refused(cycle, START);
        assert!(
            text.contains("Expected ASGI message 'http.response.body'"),
            "{text}"
        );
        send(cycle, "{'type': 'http.response.body', 'body': b'x'}").unwrap();
        assert!(
            framed(cycle).starts_with("HTTP/1.1 201 "),
            "the first start stands"
        );
        let text = refused(cycle, "{'type': 'http.response.body', 'body': b'y'}");
        assert!(text.contains("after response already completed"), "{text}");
        assert_eq!(framed(cycle), "", "nothing more framed");
    });
}

#[test]
fn a_body_before_start_is_refused_and_returning_then_answers_500() {
    with_cycle(http1(), Body::Empty, |_, cycle| {
        let text = refused(cycle, "{'type': 'http.response.body', 'body': b'early'}");
        assert!(
            text.contains("Expected ASGI message 'http.response.start'"),
            "{text}"
        );
        assert_eq!(framed(cycle), "");
        // The application gives up without a response: Uvicorn's 500, then a close.
        cycle.borrow_mut().app_returned(cycle.py(), None);
        let text = framed(cycle);
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nInternal Server Error"), "{text}");
        assert_eq!(progress(cycle), Progress::Broken);
    });
}

#[test]
fn a_receive_waiting_when_the_client_leaves_gets_disconnect_and_send_raises() {
    with_cycle(http1(), Body::Memory(b"req".to_vec()), |app, cycle| {
        assert_eq!(
            received(cycle),
            Some(("http.request".into(), b"req".to_vec(), false))
        );
        // The body is all read: the next receive() waits for the client to leave.
        let waiting = cycle.call_method0("receive").unwrap();
        assert!(outcome(&waiting).is_none(), "it suspends");
        cycle.borrow_mut().client_gone(cycle.py());
        let message = outcome(&waiting).expect("resolved by the departure");
        let kind: String = message.get_item("type").unwrap().extract().unwrap();
        assert_eq!(kind, "http.disconnect");
        assert_eq!(
            received(cycle).unwrap().0,
            "http.disconnect",
            "and later ones"
        );
        let e = send(cycle, START).expect_err("the client is gone");
        assert!(e.is_instance(cycle.py(), app.kit.disconnected_error.bind(cycle.py())));
        assert!(e.is_instance_of::<pyo3::exceptions::PyOSError>(cycle.py()));
        assert_eq!(framed(cycle), "", "nothing framed for nobody");
    });
}

#[test]
fn a_spilled_body_is_received_in_pieces_with_more_body() {
    let size = 64 * 1024 + 100;
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&content).unwrap();
    file.rewind().unwrap();
    with_cycle(http1(), Body::File(file), |_, cycle| {
        let (kind, first, more) = received(cycle).unwrap();
        assert_eq!(
            (kind.as_str(), first.len(), more),
            ("http.request", 64 * 1024, true)
        );
        let (_, rest, more) = received(cycle).unwrap();
        assert!(!more, "the last piece");
        assert_eq!([first, rest].concat(), content);
        assert!(received(cycle).is_none(), "then it waits for a disconnect");
    });
}

#[test]
fn a_send_past_the_high_water_mark_suspends_until_drained_and_wakes_the_connection() {
    with_cycle(http1(), Body::Empty, |app, cycle| {
        let py = cycle.py();
        send(cycle, START).unwrap();
        cycle.borrow_mut().arm();
        let big = format!(
            "{{'type': 'http.response.body', 'body': b'x' * {SEND_HIGH_WATER_BYTES}, 'more_body': True}}"
        );
        let waiting = send(cycle, &big).unwrap();
        assert!(
            outcome(&waiting).is_none(),
            "the application waits for the socket"
        );
        let mut woken = Vec::new();
        app.wakeups.take(&mut woken);
        assert_eq!(woken, vec![KEY], "the connection hears of the output");
        assert!(framed(cycle).len() > SEND_HIGH_WATER_BYTES);
        cycle.borrow_mut().drained(py);
        assert!(
            outcome(&waiting).is_some(),
            "the socket took it: send() returns"
        );
        // Not armed again: a cycle wakes the connection once per wait.
        send(cycle, "{'type': 'http.response.body'}").unwrap();
        app.wakeups.take(&mut woken);
        assert!(woken.is_empty(), "{woken:?}");
        assert_eq!(progress(cycle), Progress::Done);
    });
}

#[test]
fn an_http2_stream_sink_gets_the_status_headers_and_body_unframed() {
    let sink = Sink::Http2(H2Response::new(false));
    with_cycle(sink, Body::Empty, |_, cycle| {
        send(cycle, START).unwrap();
        send(
            cycle,
            "{'type': 'http.response.body', 'body': b'ab', 'more_body': True}",
        )
        .unwrap();
        send(cycle, "{'type': 'http.response.body', 'body': b'c'}").unwrap();
        let mut c = cycle.borrow_mut();
        let r = c.stream().expect("an HTTP/2 sink");
        let head = r.head.take().expect("the head");
        assert_eq!((head.status().as_u16(), r.status), (201, 201));
        assert_eq!(head.headers()["x-a"], "b");
        assert_eq!((&r.body[..], r.ended, r.body_bytes), (&b"abc"[..], true, 3));
        drop(c);
        assert_eq!(progress(cycle), Progress::Done);
    });
}
