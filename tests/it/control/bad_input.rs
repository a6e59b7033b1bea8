//! Malformed control requests: each gets a JSON error naming the problem, and the
//! connection (and the daemon) stays usable.

use super::*;

#[test]
fn bad_input_gets_errors_and_the_connection_stays_usable() {
    let server = ServerBuilder::new("echo:application").workers(1).start();
    let path = server.ctl_path.clone();
    let mut c = Raw::connect(&path);
    malformed_requests_get_errors(&mut c);
    over_long_lines_get_one_error_each(&mut c);
    a_half_written_line_holds_up_no_one(&mut c, &path);
    vanished_clients_are_forgotten(&mut c, &server, &path);
    hundreds_of_connections_are_answered(&path);

    // Still serving, over the control socket and HTTP.
    assert!(server.child_alive());
    ok(&c.call(json!({"id": 28, "cmd": "status"})), &json!(28));
    assert_eq!(server.get("/").status, 200);
    assert!(!server.log().contains("panicked"), "log:\n{}", server.log());
}

/// Malformed lines, the id each answer must carry (none when the line has none that
/// can be read) and the error code it must have.
const MALFORMED: &[(&[u8], Option<u64>, &str)] = &[
    (b"{nope\n", None, "bad_request"),
    (b"\xff\xfe\x00garbage\n", None, "bad_request"),
    (b"[1,2]\n", None, "bad_request"),
    (b"\"ping\"\n", None, "bad_request"),
    (b"{}\n", None, "bad_request"),
    (b"{\"id\":1,\"cmd\":5}\n", Some(1), "bad_request"),
    (
        b"{\"id\":2,\"cmd\":\"dance\"}\n",
        Some(2),
        "unknown_command",
    ),
    (
        b"{\"id\":3,\"cmd\":\"scale\",\"workers\":-5}\n",
        Some(3),
        "bad_request",
    ),
    (
        b"{\"id\":4,\"cmd\":\"scale\",\"workers\":\"many\"}\n",
        Some(4),
        "bad_request",
    ),
    (
        b"{\"id\":5,\"cmd\":\"scale\",\"workers\":0}\n",
        Some(5),
        "bad_request",
    ),
    (
        b"{\"id\":6,\"cmd\":\"scale\",\"workers\":100000}\n",
        Some(6),
        "bad_request",
    ),
    (
        b"{\"id\":7,\"cmd\":\"scale\",\"workers\":2.5}\n",
        Some(7),
        "bad_request",
    ),
    (b"{\"id\":8,\"cmd\":\"scale\"}\n", Some(8), "bad_request"),
    (
        b"{\"id\":9,\"cmd\":\"scale\",\"delta\":0}\n",
        Some(9),
        "bad_request",
    ),
    (
        b"{\"id\":10,\"cmd\":\"scale\",\"delta\":-5}\n",
        Some(10),
        "bad_request",
    ),
    (
        b"{\"id\":11,\"cmd\":\"scale\",\"workers\":2,\"delta\":1}\n",
        Some(11),
        "bad_request",
    ),
    (
        b"{\"id\":12,\"cmd\":\"scale\",\"workers\":2,\"wait\":\"yes\"}\n",
        Some(12),
        "bad_request",
    ),
    (
        b"{\"id\":13,\"cmd\":\"reload\",\"wait\":1}\n",
        Some(13),
        "bad_request",
    ),
    (
        b"{\"id\":14,\"cmd\":\"stop\",\"mode\":\"now\"}\n",
        Some(14),
        "bad_request",
    ),
    (b"{\"id\":15,\"cmd\":\"kill\"}\n", Some(15), "bad_request"),
    (
        b"{\"id\":16,\"cmd\":\"kill\",\"pid\":\"1\"}\n",
        Some(16),
        "bad_request",
    ),
    (
        b"{\"id\":17,\"cmd\":\"kill\",\"pid\":-1}\n",
        Some(17),
        "bad_request",
    ),
    (
        b"{\"id\":18,\"cmd\":\"kill\",\"pid\":1}\n",
        Some(18),
        "failed",
    ),
    (
        b"{\"id\":19,\"cmd\":\"ping\",\"extra\":true}\n",
        Some(19),
        "bad_request",
    ),
];

/// Each malformed line gets its error (by id where the line had one), blank lines are
/// ignored, CRLF is accepted, and the daemon did nothing it was not asked to.
fn malformed_requests_get_errors(c: &mut Raw) {
    for (line, id, code) in MALFORMED {
        c.send(line);
        let resp = c.recv();
        let id = id.map_or(Value::Null, |id| json!(id));
        assert_eq!(
            err_code(&resp, &id),
            *code,
            "{}: {resp}",
            String::from_utf8_lossy(line)
        );
    }
    // Blank lines are ignored and CRLF is accepted.
    c.send(b"\n  \r\n{\"id\":20,\"cmd\":\"ping\"}\r\n");
    ok(&c.recv(), &json!(20));
    // The daemon did nothing it was not asked to.
    let st = ok(&c.call(json!({"id": 21, "cmd": "status"})), &json!(21));
    assert_eq!(st["master"]["workers_target"], json!(1));
    assert_eq!(st["master"]["state"], json!("running"));
}

/// Over-long lines: one error each, then the connection works.
fn over_long_lines_get_one_error_each(c: &mut Raw) {
    let mut long = vec![b'a'; 100 * 1024];
    long.push(b'\n');
    c.send(&long);
    let resp = c.recv();
    assert_eq!(err_code(&resp, &Value::Null), "bad_request", "{resp}");
    ok(&c.call(json!({"id": 22, "cmd": "ping"})), &json!(22));
    // A valid-looking JSON request padded past 64 KiB.
    let padded = format!(
        "{{\"id\":23,\"cmd\":\"ping\",\"pad\":\"{}\"}}\n",
        "x".repeat(70 * 1024)
    );
    c.send(padded.as_bytes());
    assert_eq!(err_code(&c.recv(), &Value::Null), "bad_request");
    ok(&c.call(json!({"id": 24, "cmd": "ping"})), &json!(24));
    // A 2 MiB line in small pieces, then a request on the same write.
    let mut huge = vec![b'{'; 2 * 1024 * 1024];
    huge.extend_from_slice(b"\n{\"id\":25,\"cmd\":\"ping\"}\n");
    for chunk in huge.chunks(7000) {
        c.send(chunk);
    }
    assert_eq!(err_code(&c.recv(), &Value::Null), "bad_request");
    ok(&c.recv(), &json!(25));
    // Exactly 64 KiB is still allowed.
    let body = "{\"id\":26,\"cmd\":\"ping\",\"pad\":\"";
    let fill = 64 * 1024 - body.len() - 2;
    let exact = format!("{body}{}\"}}", "y".repeat(fill));
    assert_eq!(exact.len(), 64 * 1024);
    c.send(format!("{exact}\n").as_bytes());
    // (an unknown argument, but judged as a request, not as an over-long line)
    let resp = c.recv();
    assert_eq!(err_code(&resp, &json!(26)), "bad_request", "{resp}");
}

/// A half-written line, completed later; others are served meanwhile, and a client that
/// connects and never writes blocks no one.
fn a_half_written_line_holds_up_no_one(c: &mut Raw, path: &Path) {
    c.send(b"{\"id\":\"half\",\"cmd\":");
    std::thread::sleep(Duration::from_millis(200)); // let the daemon see the partial line
    ok(
        &Raw::connect(path).call(json!({"id": "other", "cmd": "ping"})),
        &json!("other"),
    );
    c.send(b"\"ping\"}\n");
    ok(&c.recv(), &json!("half"));

    // A client that connects and never writes does not block anyone.
    let _silent = UnixStream::connect(path).unwrap();
    ok(
        &Raw::connect(path).call(json!({"id": "after-silent", "cmd": "ping"})),
        &json!("after-silent"),
    );
}

/// Clients that vanish before reading many answers, and before a deferred answer: what
/// they asked for happens, and the daemon serves on.
fn vanished_clients_are_forgotten(c: &mut Raw, server: &Server, path: &Path) {
    {
        let mut v = Raw::connect(path);
        let mut burst = Vec::new();
        for i in 0..2000 {
            burst.extend_from_slice(format!("{{\"id\":{i},\"cmd\":\"status\"}}\n").as_bytes());
        }
        v.send(&burst);
        // Read part of one answer, then go.
        let mut part = [0u8; 10];
        v.reader.read_exact(&mut part).unwrap();
    }
    {
        let mut v = Raw::connect(path);
        v.send(b"{\"id\":1,\"cmd\":\"scale\",\"workers\":2,\"wait\":true}\n");
    }
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 2),
        "scale 2 (asked by a vanished client) did not happen"
    );
    {
        let mut v = Raw::connect(path);
        v.send(b"{\"id\":1,\"cmd\":\"reload\"}\n");
    }
    assert!(
        wait_until(Duration::from_secs(30), || {
            let st = status(path);
            st["master"]["generation"] == json!(2) && st["master"]["state"] == json!("running")
        }),
        "reload asked by a vanished client did not finish; log:\n{}",
        server.log()
    );
    ok(&c.call(json!({"id": 27, "cmd": "ping"})), &json!(27));
}

/// Hundreds of connections at once, all answered.
fn hundreds_of_connections_are_answered(path: &Path) {
    let mut many: Vec<Raw> = (0..300).map(|_| Raw::connect(path)).collect();
    for (i, m) in many.iter_mut().enumerate() {
        m.send_json(&json!({"id": i, "cmd": "ping"}));
    }
    for (i, m) in many.iter_mut().enumerate() {
        ok(&m.recv(), &json!(i));
    }
    drop(many);
}
