//! `forwarder_headers` beside Gunicorn: header fields whose names contain `_`, from a
//! trusted front end (127.0.0.1 is, by default) and listed, reach the application —
//! `SCRIPT_NAME` as the environ's `SCRIPT_NAME` with `PATH_INFO` the rest of the path
//! (a path outside it is a 500, as Gunicorn's), every listed one as `HTTP_*` — and from a peer outside
//! `--forwarded-allow-ips`, or unlisted, they are dropped. Each observation is made of
//! rgun and of Gunicorn 27 and compared.

use serde_json::Value;

use crate::support::{Server, ServerBuilder};

const REQUEST: &[u8] = b"GET /app/x%20y HTTP/1.1\r\nHost: h\r\nSCRIPT_NAME: /app\r\nPATH_INFO: /zzz\r\nREMOTE_USER: bob\r\nX_Other: 1\r\nConnection: close\r\n\r\n";

/// What the echo app saw of the parts `forwarder_headers` decides (or the status).
fn observe(server: &Server, raw: &[u8]) -> Value {
    let r = server.request(raw);
    if r.status != 200 {
        return serde_json::json!({"status": r.status});
    }
    let seen = r.json();
    serde_json::json!({
        "script_name": seen["script_name"],
        "path_info": seen["path_info"],
        "headers": seen["headers"],
    })
}

fn both(flags: &[&str], raw: &[u8]) -> (Value, Value) {
    let start = |gunicorn: bool| {
        let b = ServerBuilder::new("echo:application").args(flags.iter().copied());
        if gunicorn {
            b.gunicorn().start()
        } else {
            b.start()
        }
    };
    let (rgun, gunicorn) = (start(false), start(true));
    (observe(&rgun, raw), observe(&gunicorn, raw))
}

#[test]
fn forwarder_headers_as_gunicorn() {
    // Listed, from a trusted peer: SCRIPT_NAME applies, the others are HTTP_*.
    let (rgun, gunicorn) = both(
        &["--forwarder-headers", "SCRIPT_NAME,PATH_INFO,REMOTE_USER"],
        REQUEST,
    );
    assert_eq!(rgun, gunicorn);
    assert_eq!(rgun["script_name"], "/app", "{rgun}");
    assert_eq!(rgun["path_info"], "/x y", "{rgun}");
    assert_eq!(rgun["headers"]["HTTP_REMOTE_USER"], "bob", "{rgun}");
    assert!(rgun["headers"].get("HTTP_X_OTHER").is_none(), "{rgun}");

    // The default list (SCRIPT_NAME, PATH_INFO), and `*`.
    let (rgun, gunicorn) = both(&[], REQUEST);
    assert_eq!(rgun, gunicorn);
    assert!(rgun["headers"].get("HTTP_REMOTE_USER").is_none(), "{rgun}");
    let (rgun, gunicorn) = both(&["--forwarder-headers", "*"], REQUEST);
    assert_eq!(rgun, gunicorn);
    assert_eq!(rgun["headers"]["HTTP_X_OTHER"], "1", "{rgun}");

    // From a peer that is not trusted: all dropped.
    let (rgun, gunicorn) = both(&["--forwarded-allow-ips", "10.9.9.9"], REQUEST);
    assert_eq!(rgun, gunicorn);
    assert_eq!(rgun["script_name"], "", "{rgun}");
    assert_eq!(rgun["path_info"], "/app/x y", "{rgun}");

    // A path outside the forwarded SCRIPT_NAME: Gunicorn's "configuration problem", 500.
    let outside =
        b"GET /other HTTP/1.1\r\nHost: h\r\nSCRIPT_NAME: /app\r\nConnection: close\r\n\r\n";
    let (rgun, gunicorn) = both(&[], outside);
    assert_eq!(rgun, gunicorn);
    assert_eq!(rgun["status"], 500, "{rgun}");
}
