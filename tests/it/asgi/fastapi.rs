//! A FastAPI application (the pinned version in the test venv): routes, validation,
//! large bodies, lifespan state, streaming, background tasks and sync endpoints.

use std::time::Duration;

use super::asgi;
use crate::support::{wait_until, Server};

pub(super) fn fastapi() -> Server {
    asgi("fastapi_app:app").start()
}

#[test]
fn fastapi_routes_validation_and_bodies() {
    let s = fastapi();
    let r = s.get("/items/42?q=caf%C3%A9");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"item_id": 42, "q": "café"}));
    let invalid = s.get("/items/not-a-number");
    assert_eq!(invalid.status, 422);
    assert_eq!(
        invalid.json()["detail"][0]["loc"],
        serde_json::json!(["path", "item_id"])
    );
    let mut raw =
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n"
            .to_vec();
    raw.extend(std::iter::repeat_n(b'z', 2_000_000));
    let echoed = s.request(&raw).json();
    assert_eq!(
        echoed,
        serde_json::json!({"length": 2000000, "head": "zzzzzzzz"})
    );
    assert_eq!(s.get("/missing").status, 404);
}

#[test]
fn fastapi_lifespan_state_streaming_background_and_sync_endpoints() {
    let mut s = fastapi();
    assert_eq!(
        s.get("/state").json(),
        serde_json::json!({"db": "connected"})
    );
    let streamed = s.get("/stream");
    assert_eq!(streamed.header("transfer-encoding"), Some("chunked"));
    assert_eq!(streamed.text(), "chunk0\nchunk1\nchunk2\nchunk3\nchunk4\n");
    assert_eq!(
        s.get("/background").json(),
        serde_json::json!({"scheduled": true})
    );
    assert!(wait_until(Duration::from_secs(5), || s
        .get("/events")
        .json()
        .as_array()
        .is_some_and(
            |e| e.contains(&serde_json::json!("background ran"))
        )));
    // A def endpoint runs on anyio's thread pool, which wakes the loop from there.
    for _ in 0..20 {
        assert_eq!(
            s.get("/sync").json(),
            serde_json::json!({"main_thread": false})
        );
    }
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        !s.log().contains("Exception in ASGI application"),
        "{}",
        s.log()
    );
}
