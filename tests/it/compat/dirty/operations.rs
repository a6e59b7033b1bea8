//! Operating a dirty pool under rgun: `status`, `scale --dirty`, a reload with a broken
//! dirty app, bad settings, Prometheus and statsd counts, and Gunicorn's `gunicornc`.

use std::time::Duration;

use super::{ctl, dirty_ready, rgun_with_dirty_workers, start_rgun};
use crate::support::{wait_until, write_file, ServerBuilder};

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

/// What `rgun ARGS` wrote to stderr, which must be one line, with exit status `code`.
fn one_line_error(args: &[&str], code: i32) -> String {
    let out = crate::support::rgun().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(code));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_dirty_settings_are_one_line() {
    let err = one_line_error(&["x:app", "--dirty-app", "pkg:Cls:0"], 2);
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
    let err = one_line_error(&["x:app", "-c", conf.to_str().unwrap()], 1);
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
    let rgun = rgun_with_dirty_workers(30)
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
