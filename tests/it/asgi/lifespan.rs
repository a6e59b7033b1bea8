//! The lifespan protocol (`--asgi-lifespan`): startup state in every request scope,
//! `off`, a failed startup stopping start-up with its message, an app without lifespan
//! in `auto` and `on` modes, and shutdown on a graceful stop.

use std::time::Duration;

use super::{asgi, server};

#[test]
fn lifespan_state_reaches_every_request_scope() {
    let s = server();
    let worker = s.worker_pids()[0];
    let e = s.get("/scope").json();
    assert_eq!(e["state"]["started_by"], worker);
    s.assert_log_has("Application startup complete.");
}

#[test]
fn lifespan_off_never_runs_it() {
    let s = asgi("asgi_app:app")
        .args(["--asgi-lifespan", "off"])
        .start();
    assert_eq!(s.get("/scope").json()["state"], serde_json::json!({}));
    assert!(
        !s.log().contains("Waiting for application startup"),
        "{}",
        s.log()
    );
}

#[test]
fn a_failed_lifespan_startup_stops_start_up_with_its_message() {
    let mut s = asgi("asgi_app:failing_startup").no_wait().start();
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(4));
    let log = s.log();
    assert!(
        log.contains("Application startup failed. Exiting."),
        "{log}"
    );
    assert!(log.contains("database unreachable"), "{log}");
}

#[test]
fn an_app_without_lifespan_is_served_in_auto_mode_and_refused_in_on_mode() {
    let s = asgi("asgi_app:no_lifespan").start();
    assert_eq!(s.get("/").text(), "no lifespan here");
    s.assert_log_has("ASGI 'lifespan' protocol appears unsupported.");
    let mut on = asgi("asgi_app:no_lifespan")
        .args(["--asgi-lifespan", "on"])
        .no_wait()
        .start();
    assert_eq!(on.wait_exit(Duration::from_secs(20)), Some(4));
    let log = on.log();
    assert!(
        log.contains("Application startup failed. Exiting."),
        "{log}"
    );
    assert!(log.contains("ValueError: only http is supported"), "{log}");
}

#[test]
fn lifespan_shutdown_runs_on_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("shutdown");
    let mut s = asgi("asgi_app:app")
        .env("ASGI_SHUTDOWN_FILE", marker.to_str().unwrap())
        .start();
    let worker = s.worker_pids()[0];
    assert_eq!(s.get("/").status, 200);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0));
    let text = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(text, format!("shutdown {worker}\n"), "{}", s.log());
}
