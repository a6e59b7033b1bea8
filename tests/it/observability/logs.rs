//! Logs and names that fit the ecosystem: `-n/--name` in process titles, and the
//! JSON access log (`--access-log-json`).

use std::time::Duration;

use serde_json::Value;

use super::observed;
use crate::support::wait_until;

fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .to_owned()
}

#[test]
fn name_sets_the_process_titles() {
    let server = observed(2, &["-n", "shop-web"]);
    assert!(
        cmdline(server.pid()).starts_with("rgun: master [shop-web]"),
        "{:?}",
        cmdline(server.pid())
    );
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 2);
    for pid in workers {
        assert!(
            cmdline(pid).starts_with("rgun: worker [shop-web]"),
            "{:?}",
            cmdline(pid)
        );
    }
    // Without it, the application names them, as Gunicorn's default_proc_name.
    let plain = observed(1, &[]);
    assert!(cmdline(plain.pid()).starts_with("rgun: master [observed_app:application]"));
}

#[test]
fn the_json_access_log_has_one_object_per_request_keyed_by_atoms() {
    let server = observed(1, &["--access-log-json"]);
    let r = server.request(
        b"GET /missing?x=1&y=%22 HTTP/1.1\r\nHost: a\r\nUser-Agent: probe \"7\"\r\nReferer: http://r/\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    assert_eq!(server.get("/").status, 200);
    let mut lines: Vec<String> = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        lines = server.access_log().lines().map(str::to_owned).collect();
        lines.len() == 2
    }));
    let first: Value =
        serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]));
    assert_eq!(first["s"], 404);
    assert_eq!(first["m"], "GET");
    assert_eq!(first["U"], "/missing");
    assert_eq!(first["q"], "x=1&y=%22");
    assert_eq!(first["r"], "GET /missing?x=1&y=%22 HTTP/1.1");
    assert_eq!(first["H"], "HTTP/1.1");
    assert_eq!(first["h"], "127.0.0.1");
    assert_eq!(first["a"], "probe \"7\"");
    assert_eq!(first["f"], "http://r/");
    assert_eq!(first["B"], 14);
    assert_eq!(first["b"], "14");
    assert!(first["D"].is_u64() && first["L"].is_f64(), "{first}");
    assert!(first["t"].as_str().unwrap().starts_with('['), "{first}");
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["s"], 200);
}
