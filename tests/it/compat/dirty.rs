//! Dirty arbiters (`--dirty-app`): `tests/apps/dirty_example.py`, an application
//! written for Gunicorn's `gunicorn.dirty`, run under rgun and under Gunicorn 27 with
//! the same flags and asked the same things over real sockets; then what only rgun
//! does (a time-out's stacks in the log, replacements, gated reloads, `status`,
//! `scale --dirty`, metrics, `gunicornc`'s dirty commands).

use std::time::Duration;

use crate::support::{rgunctl_bin, wait_until, write_file, Server, ServerBuilder};

/// `rgunctl -s SOCKET args...`: its exit status and its output (stdout, stderr).
fn ctl(server: &Server, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(rgunctl_bin())
        .arg("-s")
        .arg(&server.ctl_path)
        .args(args)
        .output()
        .expect("run rgunctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
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
    ServerBuilder::new("dirty_example:app")
        .args(dirty_args(timeout))
        .start()
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
    let rgun = ServerBuilder::new("dirty_example:app")
        .args(dirty_args(1))
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
    let rgun = ServerBuilder::new("dirty_example:app")
        .args(dirty_args(30))
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

#[test]
fn status_lists_each_dirty_worker_and_its_apps() {
    let rgun = start_rgun(30);
    let status = rgun.status();
    let workers = status["result"]["dirty"]["workers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(workers.len(), 2, "{status}");
    let mut held: Vec<usize> = workers
        .iter()
        .map(|w| w["apps"].as_array().unwrap().len())
        .collect();
    held.sort();
    // HeavyApp on one worker only.
    assert_eq!(held, vec![4, 5], "{status}");
    let (_, out) = ctl(&rgun, &["status"]);
    assert!(
        out.contains("dirty") && out.contains("dirty_example:HeavyApp"),
        "{out}"
    );
}

#[test]
fn scale_changes_the_dirty_pool() {
    let rgun = start_rgun(30);
    let (_, out) = ctl(&rgun, &["scale", "--dirty", "3"]);
    assert!(out.contains('3'), "{out}");
    assert!(
        wait_until(Duration::from_secs(20), || dirty_ready(&rgun) == 3),
        "{}",
        rgun.log()
    );
    ctl(&rgun, &["scale", "--dirty", "1"]);
    assert!(wait_until(Duration::from_secs(20), || dirty_ready(&rgun)
        == 1
        && rgun.status()["result"]["dirty"]["workers"]
            .as_array()
            .map_or(0, Vec::len)
            == 1));
    assert_eq!(
        rgun.get("/alloc").json()["ok"],
        serde_json::json!({"light_workers": 1, "heavy_workers": 1})
    );
}

#[test]
fn a_reload_with_a_broken_dirty_app_keeps_the_old_generation() {
    let dir = tempfile::tempdir().unwrap();
    let module = |version: &str, broken: bool| {
        format!(
            "from gunicorn.dirty import DirtyApp\n\nclass Versioned(DirtyApp):\n    def init(self):\n        if {broken}:\n            raise RuntimeError('cannot load the model')\n\n    def version(self):\n        return '{version}'\n\n\ndef app(environ, start_response):\n    from gunicorn.dirty import get_dirty_client\n    body = get_dirty_client().execute('versioned:Versioned', 'version').encode()\n    start_response('200 OK', [('Content-Length', str(len(body)))])\n    return [body]\n",
            broken = if broken { "True" } else { "False" }
        )
    };
    write_file(dir.path(), "versioned.py", &module("v1", false));
    let rgun = ServerBuilder::new("versioned:app")
        .env("PYTHONPATH", dir.path().to_str().unwrap())
        .args(["--dirty-app", "versioned:Versioned", "--dirty-workers", "2"])
        .start();
    assert_eq!(rgun.get("/").text(), "v1");
    write_file(dir.path(), "versioned.py", &module("v2", true));
    let out = ctl(&rgun, &["reload"]);
    assert_eq!(out.0, 1, "the reload should fail: {}", out.1);
    assert!(out.1.contains("cannot load the model"), "{}", out.1);
    // The old generation still serves its calls.
    assert_eq!(rgun.get("/").text(), "v1");
    assert_eq!(dirty_ready(&rgun), 2);
    write_file(dir.path(), "versioned.py", &module("v3", false));
    let out = ctl(&rgun, &["reload"]);
    assert_eq!(out.0, 0, "{}", out.1);
    assert_eq!(rgun.get("/").text(), "v3");
}

#[test]
fn bad_dirty_settings_are_one_line() {
    let out = crate::support::rgun()
        .args(["x:app", "--dirty-app", "pkg:Cls:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--dirty-app") && err.contains("at least 1"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = write_file(
        dir.path(),
        "conf.py",
        "workers = 1\ndirty_apps = ['nocolon']\n",
    );
    let out = crate::support::rgun()
        .args(["x:app", "-c", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("conf.py, line 2: setting 'dirty_apps'") && err.contains("nocolon"),
        "{err}"
    );
}

#[test]
fn dirty_calls_are_counted_in_prometheus_and_statsd() {
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = statsd.local_addr().unwrap().to_string();
    let rgun = ServerBuilder::new("dirty_example:app")
        .args(dirty_args(30))
        .args(["--statsd-host", addr.as_str()])
        .start();
    for _ in 0..3 {
        assert_eq!(rgun.get("/fibonacci?n=5").json()["ok"]["result"], 5);
    }
    assert!(rgun.get("/boom").json().get("error").is_some());
    let metric = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            text = ctl(&rgun, &["metrics"]).1;
            metric(&text, "rgun_dirty_calls_total").is_some_and(|n| n >= 4.0)
        }),
        "{text}"
    );
    assert!(
        metric(&text, "rgun_dirty_errors_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "rgun_dirty_workers"), Some(2.0), "{text}");
    assert!(
        metric(&text, "rgun_dirty_call_seconds_total").is_some_and(|s| s > 0.0),
        "{text}"
    );
    assert_eq!(metric(&text, "rgun_dirty_queued"), Some(0.0), "{text}");
    assert_eq!(metric(&text, "rgun_dirty_in_flight"), Some(0.0), "{text}");
    let mut lines = String::new();
    let mut buf = [0u8; 65536];
    let counted = |lines: &str, name: &str| -> u64 {
        lines
            .split('\n')
            .filter_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(':')?
                    .strip_suffix("|c|@1.0")
            })
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    };
    wait_until(Duration::from_secs(10), || {
        if let Ok(n) = statsd.recv(&mut buf) {
            lines.push_str(&String::from_utf8_lossy(&buf[..n]));
            lines.push('\n');
        }
        counted(&lines, "gunicorn.dirty.calls") >= 4
            && lines.contains("gunicorn.dirty.workers:2|g")
            && lines.contains("gunicorn.dirty.duration:")
    });
    // The mean of the calls answered since the last send, in ms: more than nothing.
    let duration = lines
        .split('\n')
        .find_map(|l| {
            l.strip_prefix("gunicorn.dirty.duration:")?
                .strip_suffix("|ms")?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("{lines}"));
    assert!(duration > 0.0, "{lines}");
    assert!(lines.contains("gunicorn.dirty.queued:0|g"), "{lines}");
    assert!(counted(&lines, "gunicorn.dirty.calls") >= 4, "{lines}");
    assert!(counted(&lines, "gunicorn.dirty.errors") >= 1, "{lines}");
    assert!(lines.contains("gunicorn.dirty.workers:2|g"), "{lines}");
}

/// Gunicorn 27's own `gunicornc` on rgun's control socket: `show dirty` lists the
/// dirty workers and the apps each holds, `dirty add` and `dirty remove` scale the pool.
#[test]
fn gunicornc_shows_and_scales_the_dirty_pool() {
    let rgun = start_rgun(30);
    let gunicornc = |command: &str| -> serde_json::Value {
        let bin = crate::support::venv().join("bin").join("gunicornc");
        let out = std::process::Command::new(&bin)
            .arg("-s")
            .arg(&rgun.ctl_path)
            .args(["-c", command, "-j"])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        assert!(out.status.success(), "{command}: {out:?}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{command}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let shown = gunicornc("show dirty");
    assert_eq!(shown["enabled"], true, "{shown}");
    assert_eq!(
        shown["workers"].as_array().map(Vec::len),
        Some(2),
        "{shown}"
    );
    let heavy = shown["apps"]
        .as_array()
        .and_then(|apps| {
            apps.iter()
                .find(|a| a["import_path"] == "dirty_example:HeavyApp")
        })
        .unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(heavy["current_workers"], 1, "{shown}");
    let added = gunicornc("dirty add 1");
    assert_eq!(added["success"], true, "{added}");
    assert_eq!(added["target_workers"], 3, "{added}");
    assert!(
        wait_until(Duration::from_secs(20), || dirty_ready(&rgun) == 3),
        "{}",
        rgun.log()
    );
    let removed = gunicornc("dirty remove 2");
    assert_eq!(removed["target_workers"], 1, "{removed}");
    assert!(wait_until(Duration::from_secs(20), || {
        gunicornc("show dirty")["workers"].as_array().map(Vec::len) == Some(1)
    }));
}
