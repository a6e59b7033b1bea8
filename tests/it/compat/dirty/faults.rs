//! Dirty workers that fail, under rgun: a call past `--dirty-timeout` (its stack in
//! the log, the late answer never reaching the next caller), a crash, a worker past
//! `--max-worker-rss`; each fails alone and is replaced.

use std::time::Duration;

use super::{dirty_pids, dirty_ready, rgun_with_dirty_workers, start_gunicorn, start_rgun};
use crate::support::{wait_until, Server};

#[test]
fn a_timed_out_call_fails_alone_and_logs_its_stack() {
    let rgun = start_rgun(2);
    let gunicorn = start_gunicorn(2);
    let arbiter_timeout = serde_json::json!({"type": "DirtyTimeoutError", "message": "Worker timeout", "details": ["timeout"]});
    let slow = rgun.get("/sleep?s=6").json();
    assert_eq!(slow["error"], arbiter_timeout, "{}", rgun.log());
    // Gunicorn 27 times the call out twice, in its arbiter and in its dirty worker,
    // both after --dirty-timeout: whichever answers first wins, the arbiter's
    // DirtyTimeoutError (usually) or the worker's DirtyAppError.
    let slow = gunicorn.get("/sleep?s=6").json();
    let workers_timeout = slow["error"]["type"] == "DirtyAppError"
        && slow["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Execution of dirty_example:ToolsApp.sleep timed out"));
    assert!(
        slow["error"] == arbiter_timeout || workers_timeout,
        "{slow}\n{}",
        gunicorn.log()
    );
    // The next calls on the same HTTP worker get their own answers, never the late
    // one of the call that timed out, and at once: the stuck worker is gone. (Under
    // Gunicorn 27 the stuck call keeps its worker's only thread, so a call routed
    // there times out too.)
    assert_eq!(rgun.get("/sleep?s=0.2").json()["ok"], "slept 0.2");
    assert_eq!(rgun.get("/fibonacci?n=10").json()["ok"]["result"], 55);
    // rgun aborted the stuck worker: its Python stack, down to the sleeping line,
    // is in the log, and a replacement holds what it held.
    rgun.wait_for_log("DIRTY WORKER TIMEOUT", Duration::from_secs(10));
    rgun.wait_for_log("Stacks of dirty worker", Duration::from_secs(10));
    let log = rgun.log();
    assert!(
        log.contains("in sleep") && log.contains("time.sleep(seconds)"),
        "{log}"
    );
    assert!(wait_until(Duration::from_secs(20), || dirty_ready(&rgun) == 2));
    assert_eq!(
        rgun.get("/alloc").json()["ok"],
        serde_json::json!({"light_workers": 2, "heavy_workers": 1})
    );
}

#[test]
fn a_crashed_worker_fails_its_call_and_is_replaced() {
    let rgun = start_rgun(30);
    let gunicorn = start_gunicorn(30);
    for server in [&rgun, &gunicorn] {
        let crash = server.get("/crash").json();
        assert_eq!(crash["error"]["type"], "DirtyWorkerError", "{crash}");
        assert_eq!(crash["error"]["details"], serde_json::json!(["worker_id"]));
        let message = crash["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Worker communication failed: "),
            "{message}"
        );
        // Served again once the replacement is up.
        let again = |s: &Server| s.get("/alloc").json()["ok"].clone();
        assert!(
            wait_until(Duration::from_secs(20), || again(server)
                == serde_json::json!({"light_workers": 2, "heavy_workers": 1})),
            "{}",
            server.log()
        );
    }
}

/// A call that ends just after `--dirty-timeout` answers (if at all) after the router
/// gave its caller `DirtyTimeoutError`: that late answer is dropped, and the next call
/// on the same HTTP worker (and the same client connection) gets its own answer. Tried
/// at several margins around the deadline, so the late answer arrives before, during
/// and after the abort of its worker.
#[test]
fn a_timed_out_call_never_answers_the_next_caller() {
    let rgun = rgun_with_dirty_workers(1)
        .args(["--log-level", "debug"])
        .start();
    let echo = rgun.get("/echo").json();
    assert!(echo.get("ok").is_some(), "{echo}");
    let mut timed_out = 0;
    for margin_ms in [1, 2, 4, 8, 15, 30, 100, 300] {
        let seconds = 1.0 + f64::from(margin_ms) / 1000.0;
        let slow = rgun.get(&format!("/sleep?s={seconds}")).json();
        // So close to the deadline the call may still make it.
        if slow["error"]["type"] == "DirtyTimeoutError" {
            timed_out += 1;
        } else {
            assert_eq!(
                slow["ok"],
                format!("slept {seconds}"),
                "{margin_ms} ms: {slow}\n{}",
                rgun.log()
            );
        }
        assert_eq!(rgun.get("/echo").json(), echo, "{margin_ms} ms");
        assert_eq!(
            rgun.get("/fibonacci?n=10").json()["ok"]["result"],
            55,
            "{margin_ms} ms"
        );
        assert!(
            wait_until(Duration::from_secs(20), || dirty_ready(&rgun) == 2),
            "{}",
            rgun.log()
        );
    }
    assert!(timed_out >= 2, "only {timed_out} calls timed out");
    let dropped = rgun.log().matches("dropped a late answer").count();
    eprintln!("{timed_out} calls timed out; the router dropped {dropped} late answers");
}

/// `--max-worker-rss` applies to dirty workers: one grown past it is replaced (its
/// replacement holds the same apps), and calls go on.
#[test]
fn a_bloated_dirty_worker_is_replaced() {
    let rgun = rgun_with_dirty_workers(30)
        .args(["--max-worker-rss", "150"])
        .start();
    let before: Vec<i64> = dirty_pids(&rgun);
    let pid = rgun.get("/bloat?mib=200").json()["ok"].as_i64().unwrap();
    assert!(before.contains(&pid), "{pid} in {before:?}");
    rgun.wait_for_log(
        &format!("Dirty worker (pid:{pid}) uses"),
        Duration::from_secs(10),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let now = dirty_pids(&rgun);
            !now.contains(&pid) && dirty_ready(&rgun) == 2
        }),
        "{}",
        rgun.log()
    );
    assert_eq!(
        rgun.get("/alloc").json()["ok"],
        serde_json::json!({"light_workers": 2, "heavy_workers": 1})
    );
    // The HTTP worker was not touched.
    let log = rgun.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("] Worker (pid:") && l.contains("over --max-worker-rss")),
        "{log}"
    );
}
