//! Gunicorn configuration files: settings with their precedence, warnings and errors,
//! and the worker-side server hooks, against real rgun processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{has_setting, repo_root, wait_for_file, wait_until, ServerBuilder};

/// Writes a config file `NAME.conf.py` in `dir` whose hooks append lines to
/// `NAME.log` through `note(text)`; `hooks` is the Python that defines them.
/// Returns (record, config).
pub fn hook_config(dir: &Path, name: &str, hooks: &str) -> (PathBuf, PathBuf) {
    let record = dir.join(format!("{name}.log"));
    let conf = dir.join(format!("{name}.conf.py"));
    let preamble = format!(
        "RECORD = {:?}\n\ndef note(text):\n    with open(RECORD, \"a\") as f:\n        f.write(text + \"\\n\")\n",
        record.to_str().unwrap()
    );
    std::fs::write(&conf, preamble + hooks).unwrap();
    (record, conf)
}

#[test]
fn config_file_settings_sit_below_env_and_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(&conf, "import os\nworkers = 3\nkeepalive = 9\nwsgi_app = 'lifecycle_app:application'\ntimeout = 45\n").unwrap();
    let s = ServerBuilder::new("")
        .args(["-c", conf.to_str().unwrap()])
        .workers(2)
        .start();
    assert_eq!(
        s.worker_pids().len(),
        2,
        "-w on the command line beats the file"
    );
    assert_eq!(s.get("/").text(), "ok", "wsgi_app from the file");
    let out = crate::support::rgun()
        .args(["-c", conf.to_str().unwrap(), "--print-config"])
        .env("GUNICORN_CMD_ARGS", "--timeout 50")
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(has_setting(&text, "keepalive", "9"), "{text}");
    assert!(
        has_setting(&text, "timeout", "50"),
        "env beats file: {text}"
    );
}

#[test]
fn config_file_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf.py");
    let run = |text: &str| {
        std::fs::write(&conf, text).unwrap();
        crate::support::print_config_of(crate::support::rgun(), &conf)
    };
    let out = run("workers = 'four'\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("setting 'workers' must be an integer") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let out = run("frobnicate = 1\nworkers = 2\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting(s) ignored: frobnicate"));
    let out = run("def broken(:\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SyntaxError"));
}

#[test]
fn worker_hooks_are_called_where_gunicorn_calls_them() {
    let dir = tempfile::tempdir().unwrap();
    let (record, conf) = hook_config(
        dir.path(),
        "hooks",
        r#"
def post_fork(server, worker):
    note("post_fork pid=%d age=%s server=%d" % (worker.pid, worker.age, server.pid))

def post_worker_init(worker):
    note("post_worker_init %d" % worker.pid)

def pre_request(worker, req):
    note("pre_request %s %s %s" % (req.method, req.path, dict(req.headers).get("X-TRACE")))

def post_request(worker, req, environ, resp):
    note("post_request %s %s %s" % (req.path, resp.status_code, environ["PATH_INFO"]))
    if req.path == "/boom-hook":
        raise RuntimeError("hook trouble")

def worker_exit(server, worker):
    note("worker_exit %d" % worker.pid)
"#,
    );
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    let worker = s.worker_pids()[0];
    let r = s.request(b"GET /pid HTTP/1.1\r\nHost: a\r\nX-Trace: abc\r\nConnection: close\r\n\r\n");
    assert_eq!(r.text(), worker.to_string());
    let text = wait_for_file(&record, "post_request /pid 200 /pid");
    assert!(
        text.contains(&format!("post_fork pid={worker} age=")),
        "{text}"
    );
    assert!(text.contains(&format!("server={}", s.pid())), "{text}");
    assert!(
        text.contains(&format!("post_worker_init {worker}")),
        "{text}"
    );
    assert!(text.contains("pre_request GET /pid abc"), "{text}");
    // A hook that raises is logged and the worker keeps serving.
    s.get("/boom-hook");
    s.wait_for_log("hook trouble", Duration::from_secs(5));
    assert_eq!(s.get("/").text(), "ok");
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    let text = wait_for_file(&record, "worker_exit");
    assert!(text.contains(&format!("worker_exit {worker}")), "{text}");
}

#[test]
fn master_hooks_are_called_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (record, conf) = hook_config(
        dir.path(),
        "master",
        r#"
import os
def on_starting(server):
    note("on_starting %d" % server.pid)

def when_ready(server):
    note("when_ready")

def pre_fork(server, worker):
    note("pre_fork age=%s" % worker.age)

def child_exit(server, worker):
    note("child_exit %d" % worker.pid)

def nworkers_changed(server, new_value, old_value):
    note("nworkers_changed %s %s" % (old_value, new_value))

def on_reload(server):
    note("on_reload")

def on_exit(server):
    note("on_exit")
    raise RuntimeError("a failing hook must not stop the master")
"#,
    );
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    let master = s.pid();
    let victim = s.worker_pids()[0];
    // SAFETY: killing a worker we started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    wait_for_file(&record, &format!("child_exit {victim}"));
    s.signal(libc::SIGTTIN);
    wait_for_file(&record, "nworkers_changed 1 2");
    s.signal(libc::SIGHUP);
    wait_for_file(&record, "on_reload");
    s.wait_for_log("Reloaded: generation 2", Duration::from_secs(20));
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(15)), Some(0));
    let text = wait_for_file(&record, "on_exit");
    let lines: Vec<&str> = text.lines().collect();
    // As in Gunicorn, the worker count is set (from None) before on_starting.
    assert_eq!(lines[0], "nworkers_changed None 1", "{text}");
    assert_eq!(lines[1], format!("on_starting {master}"), "{text}");
    assert_eq!(lines[2], "when_ready", "{text}");
    assert!(lines[3].starts_with("pre_fork age=0"), "{text}");
    assert!(text.contains(&format!("child_exit {victim}")), "{text}");
    assert_eq!(lines.last(), Some(&"on_exit"), "{text}");
    s.assert_log_has("a failing hook must not stop the master");
}

#[test]
fn pre_exec_runs_before_a_usr2_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("rgun.pid");
    let (record, conf) = hook_config(
        dir.path(),
        "exec",
        "def pre_exec(server):\n    note('pre_exec %d' % server.pid)\n",
    );
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .args([
            "-c",
            conf.to_str().unwrap(),
            "-p",
            pidfile.to_str().unwrap(),
        ])
        .start();
    let old = s.pid();
    s.signal(libc::SIGUSR2);
    let text = wait_for_file(&record, "pre_exec");
    assert_eq!(text.trim(), format!("pre_exec {old}"));
    // Clean up both masters.
    let start = Instant::now();
    let mut new_pid = None;
    while start.elapsed() < Duration::from_secs(20) && new_pid.is_none() {
        new_pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|p| *p != old);
        std::thread::sleep(Duration::from_millis(50));
    }
    let _cleanup = new_pid.map(crate::support::KillOnDrop);
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(15));
    if let Some(pid) = new_pid {
        // SAFETY: stopping the master this test caused to exist.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    assert!(
        new_pid.is_some(),
        "the new master never took over the pidfile"
    );
}

#[test]
fn config_from_a_python_module() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mysettings.py"),
        "workers = 2\nkeepalive = 11\n",
    )
    .unwrap();
    let out = crate::support::rgun()
        .args([
            "-c",
            "python:mysettings",
            "--print-config",
            "demo.app:application",
        ])
        .env("PYTHONPATH", dir.path())
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has_setting(&text, "keepalive", "11"), "{text}");
    assert!(has_setting(&text, "workers", "2"), "{text}");
}

#[test]
fn worker_abort_runs_on_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (record, conf) = hook_config(
        dir.path(),
        "abort",
        "def worker_abort(worker):\n    note('worker_abort %d' % worker.pid)\n",
    );
    let s = ServerBuilder::new("lifecycle_app:application")
        .args(["-c", conf.to_str().unwrap(), "-t", "1"])
        .start();
    let worker = s.worker_pids()[0];
    let mut c = s.connect();
    std::io::Write::write_all(&mut c, b"GET /sleep?30 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let text = wait_for_file(&record, "worker_abort");
    assert_eq!(text.trim(), format!("worker_abort {worker}"));
    s.wait_for_log("in application", Duration::from_secs(10));
}

#[test]
fn a_reload_rereads_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("env_app.py"),
        "import os\ndef application(e, sr):\n    sr('200 OK', [])\n    return [os.environ.get('GREETING', '-').encode()]\n",
    )
    .unwrap();
    let conf = dir.path().join("reload.conf.py");
    std::fs::write(&conf, "raw_env = ['GREETING=one']\n").unwrap();
    let s = ServerBuilder::new("env_app:application")
        .args([
            "-c",
            conf.to_str().unwrap(),
            "--chdir",
            dir.path().to_str().unwrap(),
        ])
        .start();
    assert_eq!(s.get("/").text(), "one");
    std::fs::write(&conf, "raw_env = ['GREETING=two']\n").unwrap();
    s.signal(libc::SIGHUP);
    s.wait_for_log("Reloaded: generation 2", Duration::from_secs(20));
    // The old worker is told to stop when the reload is logged; until it has read its
    // TERM it may still take a connection.
    let mut got = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            got = s.get("/").text();
            got == "two"
        }),
        "the reloaded workers answer {got:?}"
    );
    // A configuration that no longer parses fails the reload; the workers stay.
    std::fs::write(&conf, "workers = 'many'\n").unwrap();
    s.signal(libc::SIGHUP);
    s.wait_for_log(
        "setting 'workers' must be an integer",
        Duration::from_secs(20),
    );
    assert_eq!(s.get("/").text(), "two");
}

#[test]
fn secure_scheme_headers_from_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("scheme.conf.py");
    std::fs::write(&conf, "secure_scheme_headers = {'X-Scheme': 'https'}\n").unwrap();
    let s = ServerBuilder::new("pep3333:application")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    let scheme = |extra: &str| {
        s.request(
            format!("GET /environ HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .json()["wsgi.url_scheme"]
            .clone()
    };
    assert_eq!(scheme("X-Scheme: https\r\n"), "https");
    // Gunicorn's defaults are replaced, not added to.
    assert_eq!(scheme("X-Forwarded-Proto: https\r\n"), "http");
}

#[test]
fn a_hook_host_that_fails_to_start_says_so() {
    // The configuration file raises only in the hook host (its process title says
    // which process it is in); the master must say its hooks will not run, not report a
    // time-out.
    let dir = tempfile::tempdir().unwrap();
    let (_, conf) = hook_config(
        dir.path(),
        "host",
        r#"
if open("/proc/self/cmdline", "rb").read().startswith(b"rgun: hooks"):
    raise RuntimeError("hook host marker-4410")

def when_ready(server):
    note("when_ready")
"#,
    );
    let s = ServerBuilder::new("lifecycle_app:application")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    s.wait_for_log("marker-4410", Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = s.log();
            log.contains("has exited, so the") || log.contains("cannot send the")
        }),
        "{}",
        s.log()
    );
    assert!(!s.log().contains("did not complete"), "{}", s.log());
    assert_eq!(s.get("/").text(), "ok");
}

#[test]
fn a_request_hook_that_cannot_be_set_up_is_logged() {
    // Regression: when the `req` object for pre_request/post_request could not be
    // built, the hooks were skipped without a word.
    let dir = tempfile::tempdir().unwrap();
    let (record, conf) = hook_config(
        dir.path(),
        "req",
        r#"
import sys

class BrokenRequest:
    def __init__(self, *args):
        raise RuntimeError("req object marker-5521")

if "rgun_hooks" in sys.modules:
    sys.modules["rgun_hooks"].Request = BrokenRequest

def pre_request(worker, req):
    note("pre_request")
"#,
    );
    let s = ServerBuilder::new("lifecycle_app:application")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    assert_eq!(s.get("/").text(), "ok", "the request is still served");
    s.wait_for_log("marker-5521", Duration::from_secs(10));
    s.assert_log_has("pre_request/post_request hooks skip this request");
    assert!(!record.exists(), "pre_request ran with no req");
}
