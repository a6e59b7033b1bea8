//! What operators rely on, for ASGI workers: the `pre_request`/`post_request` hooks
//! (as Gunicorn's `-k asgi` calls them), `--preload`, and `rgunctl status` showing
//! the age of the request in flight.

use std::io::Write;
use std::time::Duration;

use super::asgi;
use super::websocket::{ws_frame, ws_open, ws_read};
use crate::support::{wait_for_file, wait_until};

#[test]
fn request_hooks_run_around_asgi_requests_and_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("hooks.log");
    let conf = dir.path().join("hooks.conf.py");
    std::fs::write(
        &conf,
        format!(
            r#"
RECORD = {record:?}

def note(text):
    with open(RECORD, "a") as f:
        f.write(text + "\n")

def pre_request(worker, req):
    note("pre_request %s %s %s" % (req.method, req.path, dict(req.headers).get("X-TRACE")))

def post_request(worker, req, environ, resp):
    note("post_request %s %s %s %s %s" % (req.path, resp.status_code, environ["type"], environ["path"],
                                          dict(resp.headers).get("content-type")))
    if req.path == "/boom-hook":
        raise RuntimeError("hook trouble")
"#
        ),
    )
    .unwrap();
    let s = asgi("asgi_app:app")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    let r = s.request(
        b"GET /scope?a=1 HTTP/1.1\r\nHost: a\r\nX-Trace: abc\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let text = wait_for_file(&record, "post_request /scope");
    assert!(text.contains("pre_request GET /scope abc\n"), "{text}");
    assert!(
        text.contains("post_request /scope 200 http /scope text/plain\n"),
        "{text}"
    );
    // pre_request runs before the application: its line comes first.
    assert!(
        text.find("pre_request GET /scope").unwrap() < text.find("post_request /scope").unwrap(),
        "{text}"
    );
    // A WebSocket is one request: post_request once it is over.
    let (mut c, head) = ws_open(&s, "/ws/echo", "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    c.write_all(&ws_frame(true, 0x1, b"hi")).unwrap();
    assert_eq!(ws_read(&mut c), (0x1, b"hi".to_vec()));
    c.write_all(&ws_frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    let _ = ws_read(&mut c);
    let text = wait_for_file(&record, "post_request /ws/echo");
    assert!(text.contains("pre_request GET /ws/echo None\n"), "{text}");
    assert!(
        text.contains("post_request /ws/echo 101 websocket /ws/echo None\n"),
        "{text}"
    );
    // A hook that raises is logged and the worker keeps serving.
    s.get("/boom-hook");
    s.wait_for_log("hook trouble", Duration::from_secs(5));
    assert_eq!(s.get("/").text(), "Hello, ASGI!");
}

#[test]
fn preload_imports_the_asgi_app_once_in_the_master() {
    let s = asgi("asgi_app:app").arg("--preload").workers(2).start();
    let master = s.pid();
    let workers = s.worker_pids();
    assert_eq!(workers.len(), 2);
    let mut serving = Vec::new();
    // Fresh connections until both workers have answered (or a bounded wait).
    assert!(wait_until(Duration::from_secs(10), || {
        let pids = s.get("/pids").json();
        assert_eq!(pids["imported_by"], master, "{pids}\n{}", s.log());
        let pid = pids["serving"].as_i64().unwrap() as i32;
        if !serving.contains(&pid) {
            serving.push(pid);
        }
        serving.len() == 2
    }));
    serving.sort_unstable();
    let mut workers = workers;
    workers.sort_unstable();
    assert_eq!(serving, workers);
    // Each worker still runs its own lifespan, on its own loop.
    let scope = s.get("/scope").json();
    assert!(
        workers.contains(&(scope["state"]["started_by"].as_i64().unwrap() as i32)),
        "{scope}"
    );
    assert!(!s.log().contains("not supported"), "{}", s.log());
}

#[test]
fn status_shows_the_age_of_an_asgi_request_in_flight() {
    // --timeout 4: the request's age passes it, and the worker is not aborted (its
    // loop's heartbeat is what --timeout watches; 4 s, not less, so that a loaded
    // machine's scheduling delays never look like a missed heartbeat).
    let s = asgi("asgi_app:app").args(["--timeout", "4"]).start();
    let worker = s.worker_pids()[0];
    let idle = s.status();
    assert!(
        idle["result"]["workers"][0]["current_request_s"].is_null(),
        "{idle}"
    );
    let mut c = s.connect();
    c.write_all(b"GET /wait-disconnect HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // An honest request beside it comes and goes; the long-poll stays the oldest.
    let mut last = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            assert_eq!(s.get("/").text(), "Hello, ASGI!");
            last = s.status();
            last["result"]["workers"][0]["current_request_s"]
                .as_f64()
                .is_some_and(|age| age >= 5.0)
        }),
        "{last}"
    );
    assert_eq!(last["result"]["workers"][0]["state"], "busy", "{last}");
    assert_eq!(s.worker_pids(), vec![worker], "{}", s.log());
    assert!(!s.log().contains("WORKER TIMEOUT"), "{}", s.log());
    drop(c);
    assert!(
        wait_until(Duration::from_secs(5), || {
            last = s.status();
            last["result"]["workers"][0]["current_request_s"].is_null()
        }),
        "{last}"
    );
}
