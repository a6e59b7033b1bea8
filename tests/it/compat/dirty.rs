//! Dirty arbiters (`--dirty-app`): `tests/apps/dirty_example.py`, an application
//! written for Gunicorn's `gunicorn.dirty`, run under rgun and under Gunicorn 27 with
//! the same flags and asked the same things over real sockets (here: the answers, the
//! hooks, the stash); then what only rgun does: `faults` (a time-out's stacks in the
//! log, replacements), `operations` (gated reloads, `status`, `scale --dirty`,
//! metrics, `gunicornc`'s dirty commands).

mod faults;
mod operations;

use std::time::Duration;

use crate::support::{wait_until, write_file, Server, ServerBuilder};

/// `rgunctl -s SOCKET args...`: its exit status and its output (stdout, stderr).
fn ctl(server: &Server, args: &[&str]) -> (i32, String) {
    let run = crate::support::ctl(server, args);
    (run.code.unwrap_or(-1), run.stdout + &run.stderr)
}

const APPS: [&str; 5] = [
    "dirty_example:MLApp",
    "dirty_example:ComputeApp",
    "dirty_example:SessionApp",
    "dirty_example:HeavyApp",
    "dirty_example:ToolsApp",
];

fn dirty_args(timeout: u32) -> Vec<String> {
    let mut args = Vec::new();
    for app in APPS {
        args.extend(["--dirty-app".to_owned(), app.to_owned()]);
    }
    args.extend([
        "--dirty-workers".into(),
        "2".into(),
        "--dirty-timeout".into(),
        timeout.to_string(),
    ]);
    args
}

/// rgun with the example app and two dirty workers (ready: they are all ready).
fn start_rgun(timeout: u32) -> Server {
    rgun_with_dirty_workers(timeout).start()
}

/// The example app with two dirty workers and this `--dirty-timeout`, to start.
fn rgun_with_dirty_workers(timeout: u32) -> ServerBuilder {
    ServerBuilder::new("dirty_example:app").args(dirty_args(timeout))
}

/// Gunicorn 27 the same way; ready once both dirty workers listen. Each gets a name
/// of its own: Gunicorn keeps its dirty arbiter's pid in /tmp/gunicorn-dirty-NAME.pid
/// and, starting, kills the "orphan" it names — another instance's arbiter when two
/// run the same application (as these tests do, in parallel).
fn start_gunicorn(timeout: u32) -> Server {
    start_gunicorn_with(ServerBuilder::new("dirty_example:app"), timeout)
}

fn start_gunicorn_with(builder: ServerBuilder, timeout: u32) -> Server {
    static INSTANCES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("dirty-test-{}-{n}", std::process::id());
    let server = builder
        .args(dirty_args(timeout))
        .args(["--name", name.as_str()])
        .gunicorn()
        .start();
    let listening = |log: &str| {
        log.lines()
            .filter(|l| l.contains("Dirty worker") && l.contains("listening on"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || listening(&server.log()) >= 2),
        "gunicorn's dirty workers did not start:\n{}",
        server.log()
    );
    server
}

/// What the example answers, route by route, in this order (the stash routes depend
/// on the ones before).
const ROUTES: &[&str] = &[
    "/load?name=m1",
    "/load?name=m1",
    "/inference?model=default&data=abc",
    "/inference?model=missing",
    "/fibonacci?n=30",
    "/prime?n=97",
    "/echo",
    "/async?n=12",
    "/stream?n=4",
    "/stream_fail",
    "/alloc",
    "/session/login?user_id=7&name=bob",
    "/session/login?user_id=8&name=amy",
    "/session/get?user_id=7",
    "/session/list",
    "/session/stats",
    "/session/logout?user_id=8",
    "/session/list",
    "/stash/direct",
    "/boom",
    "/bad_result",
    "/unknown_app",
    "/unknown_action",
    "/sleep?s=0.1",
];

fn answers(server: &Server) -> Vec<(String, serde_json::Value)> {
    ROUTES
        .iter()
        .map(|r| (r.to_string(), server.get(r).json()))
        .collect()
}

#[test]
fn the_example_answers_as_under_gunicorn() {
    let rgun = start_rgun(2);
    let gunicorn = start_gunicorn(2);
    let ours = answers(&rgun);
    let theirs = answers(&gunicorn);
    for ((route, a), (_, b)) in ours.iter().zip(&theirs) {
        assert_eq!(
            a,
            b,
            "{route}: rgun vs Gunicorn 27\nrgun log:\n{}",
            rgun.log()
        );
        assert!(
            a.get("ok").is_some() || a.get("error").is_some(),
            "{route}: {a}"
        );
    }
    // The per-app allocation really splits: ComputeApp on both workers, HeavyApp
    // (workers = 1 on the class) on one.
    assert_eq!(
        ours.iter().find(|(r, _)| r == "/alloc").unwrap().1["ok"],
        serde_json::json!({"light_workers": 2, "heavy_workers": 1})
    );
}

/// The dirty workers' pids, per `status`.
fn dirty_pids(server: &Server) -> Vec<i64> {
    server.status()["result"]["dirty"]["workers"]
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["pid"].as_i64()).collect())
        .unwrap_or_default()
}

/// The four dirty hooks, from a configuration file, under both servers: at start-up
/// `on_dirty_starting`, then for each dirty worker `dirty_post_fork` and
/// `dirty_worker_init` (with the apps it holds); a worker that crashes goes through
/// `dirty_worker_exit` (with its apps) and its replacement through the first two.
#[test]
fn the_dirty_hooks_run_as_under_gunicorn() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_file(
        dir.path(),
        "hooks.conf.py",
        "import os\n\n\
         def _note(*words):\n    with open(os.environ['HOOK_LOG'], 'a') as f:\n        f.write(' '.join(words) + '\\n')\n\n\
         def on_dirty_starting(server):\n    _note('on_dirty_starting')\n\n\
         def dirty_post_fork(server, worker):\n    _note('dirty_post_fork')\n\n\
         def dirty_worker_init(worker):\n    _note('dirty_worker_init', str(len(worker.app_paths)))\n\n\
         def dirty_worker_exit(server, worker):\n    _note('dirty_worker_exit', str(len(worker.app_paths)))\n",
    );
    let noted = |log: &std::path::Path| -> Vec<String> {
        let mut lines: Vec<String> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    let builder = |log: &std::path::Path| {
        ServerBuilder::new("dirty_example:app")
            .env("HOOK_LOG", log.to_str().unwrap())
            .args(["-c", conf.to_str().unwrap()])
    };
    let (rgun_log, gunicorn_log) = (dir.path().join("rgun.log"), dir.path().join("gunicorn.log"));
    let rgun = builder(&rgun_log).args(dirty_args(30)).start();
    let gunicorn = start_gunicorn_with(builder(&gunicorn_log), 30);
    let booted = [
        "dirty_post_fork",
        "dirty_post_fork",
        "dirty_worker_init 4",
        "dirty_worker_init 5",
        "on_dirty_starting",
    ];
    for (server, log) in [(&rgun, &rgun_log), (&gunicorn, &gunicorn_log)] {
        assert!(
            wait_until(Duration::from_secs(20), || noted(log) == booted),
            "{:?}\n{}",
            noted(log),
            server.log()
        );
        // ToolsApp is on both workers: either may crash; its exit and its
        // replacement's boot follow.
        assert_eq!(
            server.get("/crash").json()["error"]["type"],
            "DirtyWorkerError"
        );
        assert!(
            wait_until(Duration::from_secs(20), || {
                let lines = noted(log);
                lines.len() == 8
                    && lines.iter().filter(|l| *l == "dirty_post_fork").count() == 3
                    && lines.iter().any(|l| l.starts_with("dirty_worker_exit "))
            }),
            "{:?}\n{}",
            noted(log),
            server.log()
        );
    }
    // Under both, the replacement holds what the crashed worker held (which of the
    // two crashed is each server's routing).
    for log in [&rgun_log, &gunicorn_log] {
        let lines = noted(log);
        let count = |prefix: &str| -> Vec<&str> {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix(prefix))
                .collect()
        };
        let lost = count("dirty_worker_exit ");
        let mut want = vec!["4", "5", lost[0]];
        want.sort();
        assert_eq!(count("dirty_worker_init "), want, "{lines:?}");
    }
}

/// Gunicorn 27's stash answers `get(table, missing_key, default)` with `StashError`
/// (its arbiter sends the error as a plain `DirtyError`); rgun sends the class the
/// client expects, so `get` returns the default, as Gunicorn documents.
#[test]
fn a_missing_stash_key_gets_the_default() {
    let rgun = start_rgun(30);
    let gunicorn = start_gunicorn(30);
    assert_eq!(
        rgun.get("/stash/missing").json(),
        serde_json::json!({"ok": {"value": "fallback"}})
    );
    assert_eq!(
        gunicorn.get("/stash/missing").json()["error"]["type"],
        "StashError"
    );
}

/// Dirty workers of the serving generation that are ready, per `status`.
fn dirty_ready(server: &Server) -> usize {
    let status = server.status();
    status["result"]["dirty"]["workers"]
        .as_array()
        .map_or(0, |ws| {
            ws.iter()
                .filter(|w| {
                    w["state"] == "ready"
                        && w["generation"] == status["result"]["master"]["generation"]
                })
                .count()
        })
}
