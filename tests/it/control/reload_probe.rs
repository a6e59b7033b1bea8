//! `--reload-probe`: a deploy that fails only once a request arrives (a Django-like
//! application whose views are imported by the first request) passes the plain reload
//! gate and serves 500s; with the probe, each new worker calls the application before
//! it counts as ready, and the broken deploy is rolled back with the traceback as
//! `rgunctl reload`'s answer. The same for an ASGI application.

use std::path::Path;
use std::time::Duration;

use super::ctl;
use crate::support::{wait_until, Server, ServerBuilder};

/// Writes the views module the lazy application imports on its first request.
fn write_views(dir: &Path, text: &str) {
    std::fs::write(dir.join("lazy_views.py"), text).unwrap();
}

const GOOD_V1: &str = "def render(environ):\n    return b'v1'\n";
const BROKEN: &str = "def render(environ) return b'v2'\n";
const GOOD_V3: &str = "def render(environ):\n    return b'v3'\n";

/// The lazy application on two workers, its views in a directory of the test's.
fn lazy_server(views: &Path, extra: &[&str]) -> Server {
    ServerBuilder::new("lazy_app:application")
        .workers(2)
        // (The builder's own --pythonpath names the test apps.)
        .env("PYTHONPATH", views.to_str().unwrap())
        .args(extra.iter().copied())
        // Rewritten modules are read from their source, never a same-second .pyc.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("LAZY_HOST", "app.example")
        .start()
}

fn get_with_host(server: &Server, host: &str) -> (u16, String) {
    let r = server
        .request(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    (r.status, r.text())
}

/// Waits until every worker answers `body` (the old generation drains after a reload).
fn wait_for_body(server: &Server, body: &str) {
    let mut last = (0, String::new());
    let ok = wait_until(Duration::from_secs(20), || {
        last = get_with_host(server, "app.example");
        last.1 == body
    });
    assert!(ok, "still {last:?}, wanted {body}\n{}", server.log());
}

#[test]
fn the_plain_gate_lets_a_lazily_failing_deploy_through() {
    // What the probe is for: without it, the broken views import only on the first
    // request, so the reload succeeds and every page is a 500.
    let views = tempfile::tempdir().unwrap();
    write_views(views.path(), GOOD_V1);
    let server = lazy_server(views.path(), &[]);
    assert_eq!(get_with_host(&server, "app.example"), (200, "v1".into()));
    write_views(views.path(), BROKEN);
    ctl(&server, &["reload"]).assert_ok("reload without a probe");
    let mut last = (0, String::new());
    let broken = wait_until(Duration::from_secs(20), || {
        last = get_with_host(&server, "app.example");
        last.0 == 500
    });
    assert!(broken, "{last:?}");
}

#[test]
fn a_lazily_failing_deploy_is_rolled_back_by_the_probe() {
    let views = tempfile::tempdir().unwrap();
    write_views(views.path(), GOOD_V1);
    let server = lazy_server(
        views.path(),
        &["--reload-probe", "/", "--reload-probe-host", "app.example"],
    );
    assert_eq!(get_with_host(&server, "app.example"), (200, "v1".into()));

    // The broken deploy: the reload fails, its answer carries the application's
    // traceback, and the serving generation keeps answering v1.
    write_views(views.path(), BROKEN);
    let run = ctl(&server, &["reload"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    for needle in [
        "keeps serving",
        "The reload probe (GET / with Host: app.example) was answered 500, not 200",
        "lazy.request: Internal Server Error: /",
        "lazy_views.py\", line 1",
        "SyntaxError",
    ] {
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
    }
    for _ in 0..6 {
        assert_eq!(get_with_host(&server, "app.example"), (200, "v1".into()));
    }
    let history = ctl(&server, &["--json", "history"]).json();
    let last = history["entries"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap();
    assert_eq!(last["outcome"], "failed", "{history}");

    // Fixed: the probe passes and the new generation serves.
    write_views(views.path(), GOOD_V3);
    ctl(&server, &["reload"]).assert_ok("reload of the fixed deploy");
    wait_for_body(&server, "v3");
}

#[test]
fn the_probe_sends_its_host_and_checks_the_status() {
    // A Host the application refuses (Django's ALLOWED_HOSTS) answers 400: with the
    // default Host the probe fails the start-up itself (exit 4, nothing served).
    let views = tempfile::tempdir().unwrap();
    write_views(views.path(), GOOD_V1);
    let mut server = ServerBuilder::new("lazy_app:application")
        .env("PYTHONPATH", views.path().to_str().unwrap())
        .args(["--reload-probe", "/"])
        .env("LAZY_HOST", "app.example")
        .no_wait()
        .start();
    assert_eq!(server.wait_exit(Duration::from_secs(60)), Some(4));
    assert!(
        server
            .log()
            .contains("The reload probe (GET / with Host: localhost) was answered 400, not 200"),
        "{}",
        server.log()
    );
    // The expected status is the operator's: 400 passes.
    let server = ServerBuilder::new("lazy_app:application")
        .env("PYTHONPATH", views.path().to_str().unwrap())
        .args(["--reload-probe", "/", "--reload-probe-status", "400"])
        .env("LAZY_HOST", "app.example")
        .start();
    assert_eq!(get_with_host(&server, "app.example"), (200, "v1".into()));
}

#[test]
fn an_asgi_deploy_that_fails_lazily_is_rolled_back_too() {
    let views = tempfile::tempdir().unwrap();
    write_views(views.path(), GOOD_V1);
    let server = ServerBuilder::new("lazy_asgi_app:application")
        .args(["-k", "asgi", "--reload-probe", "/"])
        .env("PYTHONPATH", views.path().to_str().unwrap())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .start();
    assert_eq!(server.get("/").text(), "v1");
    write_views(views.path(), BROKEN);
    let run = ctl(&server, &["reload"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    for needle in [
        "was answered 500, not 200",
        "lazy.request: Internal Server Error: /",
        "SyntaxError",
    ] {
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
    }
    assert_eq!(server.get("/").text(), "v1");
    write_views(views.path(), GOOD_V3);
    ctl(&server, &["reload"]).assert_ok("reload of the fixed deploy");
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = server.get("/").text();
            last == "v3"
        }),
        "{last}"
    );
}
