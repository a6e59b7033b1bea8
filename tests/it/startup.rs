//! Start-up as a Gunicorn user meets it, each observation made against rgun and against
//! Gunicorn 27 and compared: `$PORT` as the default bind, `SERVER_SOFTWARE` in
//! `os.environ`, negative numbers given with a space, a configuration file that raises
//! (file and line), `-c` given a directory, and an address in use (retried five times
//! a second apart, each attempt logged).

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    apps_dir, gunicorn_bin, has_setting, read_response, repo_root, wait_until, Response,
    ServerBuilder,
};

/// The venv's Gunicorn for its command line alone (no control socket: several run at
/// once), with the test apps importable.
fn gunicorn() -> Command {
    let mut cmd = Command::new(gunicorn_bin());
    cmd.arg("--no-control-socket")
        .arg("--pythonpath")
        .arg(apps_dir())
        .env_remove("PORT");
    cmd
}

/// A port nobody listens on right now (bound on all addresses, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").expect("bind an ephemeral port");
    l.local_addr().unwrap().port()
}

/// One `GET path` to 127.0.0.1:port; `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<Response> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    read_response(&mut std::io::BufReader::new(s), false)
}

/// `GET path` on `port`, retried (bounded) until something answers.
fn get_when_serving(port: u16, path: &str) -> Response {
    let mut answer = None;
    let served = wait_until(Duration::from_secs(60), || {
        answer = get(port, path);
        answer.is_some()
    });
    assert!(served, "nothing serves on {port}");
    answer.unwrap()
}

/// `rgun ARGS` or `gunicorn ARGS` run to completion: (status, stderr).
fn run(mut cmd: Command, args: &[&str]) -> (Option<i32>, String) {
    let out = cmd
        .args(args)
        .current_dir(repo_root())
        .env_remove("WEB_CONCURRENCY")
        .stdin(Stdio::null())
        .output()
        .expect("run the server's command line");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rgun_cmd() -> Command {
    let mut cmd = crate::support::rgun();
    cmd.arg("--no-control-socket").env_remove("PORT");
    cmd
}

/// The `bind = [...]` line of `--print-config`, its value only.
fn printed_bind(mut cmd: Command, port: Option<&str>, args: &[&str]) -> String {
    if let Some(p) = port {
        cmd.env("PORT", p);
    }
    let out = cmd
        .args(args)
        .args(["--print-config", "demo.app:application"])
        .current_dir(repo_root())
        .output()
        .expect("--print-config");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some("bind"))
        .and_then(|l| l.split_once('='))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no bind line in:\n{text}"))
}

#[test]
fn port_in_the_environment_is_the_default_bind_as_in_gunicorn() {
    // The setting: PORT gives 0.0.0.0:$PORT when no bind is given; a bind wins.
    for (port, args, want) in [
        (Some("5000"), &[][..], "['0.0.0.0:5000']"),
        (Some("5000"), &["-b", "127.0.0.1:9"][..], "['127.0.0.1:9']"),
        (None, &[][..], "['127.0.0.1:8000']"),
    ] {
        let ours = printed_bind(rgun_cmd(), port, args);
        let theirs = printed_bind(gunicorn(), port, args);
        assert_eq!(ours, theirs, "PORT={port:?} {args:?}");
        assert_eq!(ours, want, "PORT={port:?} {args:?}");
    }
    // The servers: both listen on every address at $PORT and say so.
    let (ours_port, theirs_port) = (free_port(), free_port());
    let rgun = ServerBuilder::new("server_software:application")
        .own_bind()
        .env("PORT", &ours_port.to_string())
        .start();
    let theirs = ServerBuilder::new("server_software:application")
        .own_bind()
        .env("PORT", &theirs_port.to_string())
        .gunicorn()
        .start();
    get_when_serving(theirs_port, "/");
    assert_eq!(get(ours_port, "/").map(|r| r.status), Some(200));
    for (log, port) in [(rgun.log(), ours_port), (theirs.log(), theirs_port)] {
        assert!(
            log.contains(&format!("Listening at: http://0.0.0.0:{port}")),
            "{log}"
        );
    }
    // A PORT that is no port number stops both, naming it.
    let mut cmd = rgun_cmd();
    cmd.env("PORT", "eighty");
    let (code, err) = run(cmd, &["--check-config", "demo.app:application"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("PORT=\"eighty\""), "{err}");
    // (Gunicorn's --check-config does not look at binds: start it; it stops at once.)
    let mut cmd = gunicorn();
    cmd.env("PORT", "eighty");
    let (code, err) = run(cmd, &["demo.app:application"]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("'eighty' is not a valid port number"), "{err}");
}

#[test]
fn server_software_is_in_os_environ_as_in_gunicorn() {
    let rgun = ServerBuilder::new("server_software:application").start();
    let theirs = ServerBuilder::new("server_software:application")
        .gunicorn()
        .start();
    let ours = rgun.get("/").json();
    let theirs = theirs.get("/").json();
    for seen in [&ours, &theirs] {
        // Set before the application is imported, and the request's environ agrees.
        assert!(seen["import"].is_string(), "{seen}");
        assert_eq!(seen["import"], seen["os_environ"], "{seen}");
        assert_eq!(seen["os_environ"], seen["environ"], "{seen}");
    }
    // The idioms applications use to tell they run under Gunicorn agree.
    for idiom in ["contains_gunicorn", "starts_with_gunicorn"] {
        assert_eq!(ours[idiom], theirs[idiom], "{idiom}: {ours} vs {theirs}");
        assert_eq!(ours[idiom], true, "{idiom}: {ours}");
    }
    assert_eq!(theirs["environ"], "gunicorn/27.0.1", "{theirs}");
    assert_eq!(
        ours["environ"],
        format!("gunicorn/27.0.1 (rgun/{})", env!("CARGO_PKG_VERSION")),
        "{ours}"
    );
}

/// The environ keys Gunicorn sets that rgun does not, and why.
const ENVIRON_KEYS_NOT_SET: [(&str, &str); 2] = [
    (
        "gunicorn.socket",
        "the client socket belongs to rgun's event loop in Rust; there is no Python socket",
    ),
    ("wsgi.early_hints", "103 Early Hints are not sent (yet)"),
];

#[test]
fn os_environ_and_environ_keys_are_gunicorns() {
    // The review of what an application finds: every name in os.environ (at import
    // and while serving) and in a request's environ, rgun's against Gunicorn's.
    let rgun = ServerBuilder::new("environ_keys:application").start();
    let gunicorn = ServerBuilder::new("environ_keys:application")
        .gunicorn()
        .start();
    let path = "/a/b?c=d";
    let (ours, theirs) = (rgun.get(path).json(), gunicorn.get(path).json());
    let names = |v: &serde_json::Value, k: &str| -> std::collections::BTreeSet<String> {
        v[k].as_array()
            .unwrap_or_else(|| panic!("{k}: {v}"))
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    };
    for key in ["import", "now"] {
        assert_eq!(
            names(&ours, key),
            names(&theirs, key),
            "os.environ at {key}"
        );
    }
    let (ours, theirs) = (names(&ours, "environ"), names(&theirs, "environ"));
    let extra: Vec<_> = ours.difference(&theirs).collect();
    assert!(
        extra.is_empty(),
        "environ keys Gunicorn does not set: {extra:?}"
    );
    let missing: Vec<_> = theirs.difference(&ours).cloned().collect();
    let known: Vec<String> = ENVIRON_KEYS_NOT_SET
        .iter()
        .map(|(k, _)| (*k).to_owned())
        .collect();
    assert_eq!(missing, known, "environ keys rgun does not set");
}

#[test]
fn negative_numbers_after_a_space_are_range_errors_as_in_gunicorn() {
    // Regression: `--threads -1` read `-1` as an unknown flag ("unexpected argument").
    for args in [
        &["--threads", "-1"][..],
        &["-t", "-5"],
        &["-w", "-2"],
        &["--max-requests", "-3"],
        &["--backlog", "-4"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--check-config", "demo.app:application"]);
        let (code, err) = run(rgun_cmd(), &all);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("invalid value '{}'", args[1])) && err.contains("is not in"),
            "{args:?}: {err}"
        );
        // Gunicorn refuses the value too (not the flag), with its own wording.
        let (code, err) = run(gunicorn(), &all);
        assert_ne!(code, Some(0), "gunicorn {args:?}: {err}");
        assert!(
            !err.contains("unrecognized arguments"),
            "gunicorn {args:?}: {err}"
        );
    }
}

/// `-c CONF --check-config demo.app:application`, for rgun and Gunicorn alike.
fn check_config_args(conf: &str) -> [&str; 4] {
    ["-c", conf, "--check-config", "demo.app:application"]
}

/// A directory with `gunicorn.conf.py` holding `text`.
fn config_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gunicorn.conf.py"), text).unwrap();
    dir
}

#[test]
fn a_configuration_file_that_raises_names_its_file_and_line_as_in_gunicorn() {
    for (text, error, line) in [
        (
            "workers = 1\n\nratio = 1 / 0\n",
            "ZeroDivisionError: division by zero",
            3,
        ),
        ("workers = 1\nbind = (\n", "SyntaxError", 2),
        (
            "import os\nworkers = int(os.environ['NO_SUCH_VARIABLE'])\n",
            "KeyError: 'NO_SUCH_VARIABLE'",
            2,
        ),
    ] {
        let dir = config_dir(text);
        let conf = dir.path().join("gunicorn.conf.py");
        let conf = conf.to_str().unwrap();
        let args = check_config_args(conf);
        let (code, ours) = run(rgun_cmd(), &args);
        let (their_code, theirs) = run(gunicorn(), &args);
        assert_eq!(code, Some(1), "{ours}");
        assert_eq!(their_code, Some(1), "{theirs}");
        for err in [&ours, &theirs] {
            // The traceback's frame in the file, its source line, the exception.
            assert!(
                err.contains(&format!("File \"{conf}\", line {line}")),
                "{text:?}: {err}"
            );
            assert!(err.contains(error), "{text:?}: {err}");
            let source = text.lines().nth(line - 1).unwrap().trim();
            assert!(err.contains(source), "{text:?}: {err}");
        }
        // rgun's first line says it all: the file, the line, the error.
        let first = ours.lines().next().unwrap();
        assert!(
            first.starts_with(&format!("rgun: {conf}: line {line}: ")) && first.contains(error),
            "{first}"
        );
        // Not rgun's own machinery.
        assert!(!ours.contains("rgun_config_loader"), "{ours}");
    }
}

#[test]
fn config_given_a_directory_says_so() {
    let dir = config_dir("workers = 1\n");
    let path = dir.path().to_str().unwrap();
    let (code, ours) = run(rgun_cmd(), &check_config_args(path));
    assert_eq!(code, Some(1), "{ours}");
    assert_eq!(ours.trim_end().lines().count(), 1, "{ours}");
    assert!(ours.contains("is a directory"), "{ours}");
    assert!(
        ours.contains(&format!("did you mean {path}/gunicorn.conf.py?")),
        "{ours}"
    );
    // Gunicorn fails too, with a traceback ending in IsADirectoryError.
    let (code, theirs) = run(gunicorn(), &check_config_args(path));
    assert_eq!(code, Some(1), "{theirs}");
    assert!(theirs.contains("Is a directory"), "{theirs}");
}

/// How many lines of `log` report a failed attempt to bind `port`.
fn bind_attempts(log: &str, port: u16, marker: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(marker) && l.contains(&port.to_string()))
        .count()
}

#[test]
fn an_address_in_use_is_tried_five_times_as_in_gunicorn() {
    // Held by the test for good: both servers try five times, then exit 1.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut rgun = ServerBuilder::new("demo.app:application")
        .own_bind()
        .no_wait()
        .args(["-b", &bind])
        .start();
    let mut theirs_server = ServerBuilder::new("demo.app:application")
        .own_bind()
        .no_wait()
        .args(["-b", &bind])
        .gunicorn()
        .start();
    assert_eq!(rgun.wait_exit(Duration::from_secs(60)), Some(1));
    let ours_took = started.elapsed();
    assert_eq!(theirs_server.wait_exit(Duration::from_secs(60)), Some(1));
    let log = rgun.log();
    assert_eq!(bind_attempts(&log, port, "(attempt"), 5, "{log}");
    assert!(log.contains("(attempt 5 of 5)"), "{log}");
    // Four pauses of a second between five attempts.
    assert!(ours_took >= Duration::from_secs(4), "{ours_took:?}\n{log}");
    let theirs = theirs_server.log();
    assert_eq!(
        bind_attempts(&theirs, port, "Connection in use"),
        5,
        "{theirs}"
    );
    // Both say who starts before the attempts.
    for log in [&log, &theirs] {
        let first = log.lines().next().unwrap_or_default();
        assert!(first.contains("] [INFO] Starting "), "{log}");
    }
    drop(held);
}

#[test]
fn a_quick_restart_gets_the_port_once_it_is_free() {
    // The previous process still holds the port when the new one starts, and lets go
    // of it after the first failed attempt: the retry takes it and the server serves.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let rgun = ServerBuilder::new("demo.app:application")
        .own_bind()
        .no_wait()
        .args(["-b", &format!("127.0.0.1:{port}")])
        .start();
    assert!(
        wait_until(Duration::from_secs(30), || rgun
            .log()
            .contains("(attempt 1 of 5); retrying in 1 second")),
        "{}",
        rgun.log()
    );
    drop(held);
    rgun.wait_for_log("All 1 workers ready", Duration::from_secs(30));
    assert_eq!(get(port, "/").map(|r| r.status), Some(200));
    assert!(rgun.child_alive());
}

#[test]
fn procfile_command_lines_are_accepted_as_by_gunicorn() {
    // Flags seen in Procfiles and start scripts of real apps: each is accepted by
    // both servers (rgun ignores those it has no use for).
    for args in [
        &["--log-file", "-"][..],
        &[
            "--access-logfile=-",
            "--error-logfile=-",
            "--log-level=info",
        ],
        &["--enable-stdio-inheritance"],
        &["-R", "--capture-output"],
        &["--worker-tmp-dir", "/dev/shm", "--no-sendfile"],
        &["--header-map", "drop"],
        &[
            "--forwarded-allow-ips=*",
            "--timeout",
            "120",
            "--keep-alive",
            "5",
        ],
        &["--workers=3", "--threads=2", "--worker-class=gthread"],
        &[
            "--max-requests",
            "1000",
            "--max-requests-jitter",
            "50",
            "--preload",
        ],
    ] {
        let mut all = args.to_vec();
        all.extend(["--check-config", "demo.app:application"]);
        let (code, err) = run(rgun_cmd(), &all);
        assert_eq!(code, Some(0), "rgun {args:?}: {err}");
        let (code, err) = run(gunicorn(), &all);
        assert_eq!(code, Some(0), "gunicorn {args:?}: {err}");
    }
    // A header map rgun does not do is one line naming it.
    let (code, err) = run(
        rgun_cmd(),
        &[
            "--header-map",
            "refuse",
            "--check-config",
            "demo.app:application",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("refuse"), "{err}");
}

#[test]
fn a_configuration_file_with_what_rgun_does_anyway_is_accepted_as_by_gunicorn() {
    // Settings from real apps' gunicorn.conf.py that ask for what rgun does anyway:
    // accepted by both, and rgun warns about none of them.
    let dir = config_dir(
        "worker_tmp_dir = '/dev/shm'\ncapture_output = True\nenable_stdio_inheritance = True\n\
         sendfile = False\nheader_map = 'drop'\nworkers = 2\n",
    );
    let conf = dir.path().join("gunicorn.conf.py");
    let args = check_config_args(conf.to_str().unwrap());
    let (code, ours) = run(rgun_cmd(), &args);
    assert_eq!(code, Some(0), "{ours}");
    assert!(!ours.contains("warning"), "{ours}");
    let (code, theirs) = run(gunicorn(), &args);
    assert_eq!(code, Some(0), "{theirs}");
    // The effective values, by Gunicorn's names.
    let out = crate::support::print_config_of(rgun_cmd(), &conf);
    let printed = String::from_utf8_lossy(&out.stdout);
    for (name, value) in [
        ("worker_tmp_dir", "/dev/shm"),
        ("capture_output", "True"),
        ("sendfile", "False"),
    ] {
        assert!(has_setting(&printed, name, value), "{name}: {printed}");
    }
    // A header map rgun does not do is the file's error, naming the setting.
    let dir = config_dir("header_map = 'refuse'\n");
    let conf = dir.path().join("gunicorn.conf.py");
    let args = check_config_args(conf.to_str().unwrap());
    let (code, ours) = run(rgun_cmd(), &args);
    assert_eq!(code, Some(1), "{ours}");
    assert!(
        ours.contains("header_map") && ours.contains("refuse"),
        "{ours}"
    );
}
