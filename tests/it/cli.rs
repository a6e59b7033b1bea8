//! The command line: Gunicorn's spellings, one-line errors with exit status 2, and
//! start-up failures that explain themselves and exit instead of looping.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{repo_root, ServerBuilder};

fn rgun(args: &[&str]) -> (i32, String, String) {
    let out = crate::support::rgun()
        .args(args)
        .current_dir(repo_root())
        .env_remove("WEB_CONCURRENCY")
        .stdin(Stdio::null())
        .output()
        .expect("run rgun");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_values_are_one_line_and_exit_2() {
    for (args, needle) in [
        (&["--no-such-flag", "app:app"][..], "--no-such-flag"),
        (&["-w", "many", "app:app"], "--workers"),
        (&["--bind", "host:notaport", "app:app"], "--bind"),
        (&["--log-level", "loud", "app:app"], "--log-level"),
        (
            &["--forwarded-allow-ips", "not-an-ip", "app:app"],
            "--forwarded-allow-ips",
        ),
        (&[], "MODULE:CALLABLE"),
    ] {
        let (code, _, err) = rgun(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?} printed more than one line:\n{err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn version_and_help() {
    let (code, out, _) = rgun(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("rgun "), "{out}");
    let (code, out, _) = rgun(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--bind",
        "--workers",
        "--threads",
        "--keep-alive",
        "--limit-request-field_size",
        "--access-logformat",
        "--forwarded-allow-ips",
        "--graceful-timeout",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn bad_web_concurrency_is_a_clear_error() {
    let out = crate::support::rgun()
        .args(["-b", "127.0.0.1:0", "demo.app:application"])
        .env("WEB_CONCURRENCY", "lots")
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WEB_CONCURRENCY"));
}

#[test]
fn unimportable_app_prints_the_traceback_and_exits() {
    let start = Instant::now();
    let mut s = ServerBuilder::new("broken_app:application")
        .workers(2)
        .no_wait()
        .start();
    let code = s.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(4), "{}", s.log());
    assert!(start.elapsed() < Duration::from_secs(10));
    let log = s.log();
    assert!(log.contains("Traceback"), "{log}");
    assert!(
        log.contains("ModuleNotFoundError: No module named 'this_module_does_not_exist'"),
        "{log}"
    );
    assert!(log.contains("App failed to load"), "{log}");
}

#[test]
fn missing_callable_names_it() {
    let mut s = ServerBuilder::new("echo:nope").no_wait().start();
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(4));
    s.assert_log_has("failed to find attribute 'nope' in 'echo'");
}

#[test]
fn factory_with_literal_arguments() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("factory_app.py"),
        "def create_app(greeting, punct='!'):\n    def app(environ, start_response):\n        start_response('200 OK', [])\n        return [(greeting + punct).encode()]\n    return app\n",
    )
    .unwrap();
    let s = ServerBuilder::new("factory_app:create_app('hi', punct='?')")
        .args(["--chdir", dir.path().to_str().unwrap()])
        .start();
    assert_eq!(s.get("/").text(), "hi?");
}

#[test]
fn binds_unix_socket_and_ipv6_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rgun.sock");
    let mut s = ServerBuilder::new("pep3333:application")
        .own_bind()
        .args([
            "-b",
            &format!("unix:{}", sock.display()),
            "-b",
            "[::1]:0",
            "-e",
            "RGUN_TEST_FILE=/etc/hostname",
        ])
        .start();
    let mut c = std::os::unix::net::UnixStream::connect(&sock).expect("unix socket accepts");
    use std::io::Write;
    c.write_all(b"GET /environ HTTP/1.1\r\nHost: unix\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = crate::support::read_response(&mut std::io::BufReader::new(c), false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["REMOTE_ADDR"], "");
    s.assert_log_has("Listening at: http://[::1]:");
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!sock.exists(), "the unix socket file is removed on exit");
}

#[test]
fn chdir_puts_the_directory_on_sys_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("elsewhere_app.py"),
        "def application(e, sr):\n    sr('200 OK', [])\n    return [b'found']\n",
    )
    .unwrap();
    let s = ServerBuilder::new("elsewhere_app")
        .args(["--chdir", dir.path().to_str().unwrap()])
        .start();
    assert_eq!(s.get("/").text(), "found");
}

#[test]
fn compat_doc_matches_the_code() {
    let doc = std::fs::read_to_string(repo_root().join("docs/gunicorn-compat.md")).unwrap();
    let row = |name: &str| {
        doc.lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .map(str::to_owned)
    };
    // Settings Gunicorn does not have are named, with their flag, in the paragraph
    // "rgun adds:" below the table.
    let rgun_adds = doc
        .split("rgun adds:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_default();
    // Every setting the configuration file accepts is documented as supported, with
    // the flag it maps to (wsgi_app is the positional argument).
    for (name, flag, _) in rgun::config::file::SETTINGS {
        if rgun_adds.contains(&format!("`{name}`")) {
            assert!(
                rgun_adds.contains(flag),
                "{name}: flag {flag} not in 'rgun adds'"
            );
            continue;
        }
        let line = row(name)
            .unwrap_or_else(|| panic!("setting {name} missing from docs/gunicorn-compat.md"));
        assert!(
            line.contains("| same |")
                || line.contains("| same, not compared |")
                || line.contains("| different |"),
            "{name} is supported but documented as {line}"
        );
        if *name != "wsgi_app" {
            assert!(
                line.contains(flag.trim_start_matches("--")),
                "{name}: flag {flag} not in {line}"
            );
        }
    }
    // Settings documented as supported are ones the code knows.
    for line in doc.lines().filter(|l| {
        l.starts_with("| `") && (l.contains("| same |") || l.contains("| same, not compared |"))
    }) {
        let name = line.split('`').nth(1).unwrap();
        let known = rgun::config::file::SETTINGS
            .iter()
            .any(|(n, _, _)| *n == name)
            || rgun::hooks::WORKER_HOOKS.contains(&name)
            || [
                "config",
                "check_config",
                "print_config",
                "TERM",
                "INT, QUIT",
                "TTIN, TTOU",
                "USR1",
                "USR2",
                "WINCH",
            ]
            .contains(&name);
        assert!(
            known,
            "{name} is documented as supported but the code does not know it"
        );
    }
    for hook in rgun::hooks::WORKER_HOOKS {
        assert!(
            row(hook).is_some_and(|l| l.contains("| same") && l.contains(" |")),
            "hook {hook}"
        );
    }
    // "same" is a claim a side-by-side test backs: the row names a test that runs
    // rgun and Gunicorn, and that file exists.
    for line in doc.lines().filter(|l| l.contains("| same |")) {
        let tests: Vec<&str> = line
            .split('`')
            .filter(|s| s.starts_with("tests/it/compat/") || *s == "tests/it/startup.rs")
            .collect();
        assert!(!tests.is_empty(), "'same' names no comparing test: {line}");
        for test in tests {
            let text = std::fs::read_to_string(repo_root().join(test))
                .unwrap_or_else(|e| panic!("{test}: {e}"));
            let runs_gunicorn = text.contains("gunicorn()") || text.contains("both(");
            assert!(runs_gunicorn, "{test} does not run Gunicorn");
        }
    }
}

#[test]
fn configuration_reference_is_generated_from_the_code() {
    let committed = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    assert_eq!(
        committed,
        rgun::config::reference::config_reference(),
        "docs/configuration.md is stale: run `rgun --generate config-reference > docs/configuration.md`"
    );
    // Every setting a configuration file accepts is in the reference.
    for (name, _, _) in rgun::config::file::SETTINGS {
        assert!(
            committed.contains(&format!("`{name}`")),
            "{name} missing from the reference"
        );
    }
}

#[test]
fn man_page_and_completions_are_generated() {
    let run = |what: &str| {
        let out = crate::support::rgun()
            .args(["--generate", what])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{what}");
        String::from_utf8(out.stdout).unwrap()
    };
    let man = run("man");
    assert!(
        man.contains(".TH rgun 1") && man.contains("graceful\\-timeout"),
        "{man}"
    );
    for shell in ["bash", "zsh", "fish"] {
        assert!(run(shell).contains("--max-requests"), "{shell}");
    }
}

/// A configuration file (in a fresh directory) with `text`, checked with
/// `--check-config`: (exit status, stderr).
fn check_with_config_file(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(&conf, text).unwrap();
    let (code, _, err) = rgun(&[
        "-c",
        conf.to_str().unwrap(),
        "--check-config",
        "demo.app:application",
    ]);
    (code, err)
}

#[test]
fn absurd_numbers_are_refused_naming_the_setting() {
    // Regression: these panicked ("overflow when adding duration to instant", a modulo
    // of zero for the jitter) once the server ran; now they are refused up front.
    const HUGE: &str = "18446744073709551615";
    for (args, flag) in [
        (&["--timeout", HUGE][..], "--timeout"),
        (&["--keep-alive", HUGE], "--keep-alive"),
        (&["--graceful-timeout", HUGE], "--graceful-timeout"),
        (&["--timeout", "2147484"], "--timeout"),
        (
            &["--max-requests", "10", "--max-requests-jitter", HUGE],
            "--max-requests-jitter",
        ),
        (&["--max-requests", HUGE], "--max-requests"),
        (&["--max-worker-rss", HUGE], "--max-worker-rss"),
        (&["--backlog=-5"], "--backlog"),
    ] {
        let mut all = args.to_vec();
        all.extend(["--check-config", "demo.app:application"]);
        let (code, _, err) = rgun(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    // The largest accepted values run.
    let (code, _, err) = rgun(&[
        "--timeout",
        "2147483",
        "--max-requests",
        "1000000000000",
        "--max-requests-jitter",
        "1000000000000",
        "--check-config",
        "demo.app:application",
    ]);
    assert_eq!(code, 0, "{err}");
    // From a configuration file: exit 1, and the line names the file's setting.
    for (text, name) in [
        ("timeout = 2**64 - 1\n", "'timeout'"),
        ("keepalive = 10**30\n", "'keepalive'"),
        ("max_requests_jitter = 2**64 - 1\n", "'max_requests_jitter'"),
        ("workers = 0\n", "'workers'"),
    ] {
        let (code, err) = check_with_config_file(text);
        assert_eq!(code, 1, "{text}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{text}: {err}");
        assert!(err.contains(&format!("setting {name}")), "{text}: {err}");
    }
}

#[test]
fn worker_classes_rgun_cannot_run_are_refused() {
    // Regression: a `-k` value rgun cannot honour was ignored (then, before the ASGI
    // worker, `-k uvicorn.workers.UvicornWorker` served an ASGI app 500s).
    for class in [
        "gunicorn.workers.ggevent.GeventWorker",
        "gevent",
        "eventlet",
        "tornado",
    ] {
        let (code, _, err) = rgun(&["-k", class, "--check-config", "demo.app:application"]);
        assert_eq!(code, 2, "{class}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{class}: {err}");
        assert!(err.contains(class), "{class}: {err}");
        let (code, err) = check_with_config_file(&format!("worker_class = {class:?}\n"));
        assert_eq!(code, 1, "{class}: {err}");
        assert!(
            err.contains("'worker_class'") && err.contains(class),
            "{class}: {err}"
        );
    }
    for class in [
        "sync",
        "gthread",
        "gunicorn.workers.sync.SyncWorker",
        "gunicorn.workers.gthread.ThreadWorker",
    ] {
        let (code, _, err) = rgun(&["-k", class, "--check-config", "demo.app:application"]);
        assert_eq!(code, 0, "{class}: {err}");
    }
}

/// The README's bullet that begins with `start`, up to the next bullet.
fn section<'a>(text: &'a str, start: &str) -> &'a str {
    let from = text.find(start).unwrap_or_else(|| panic!("no {start:?}"));
    let rest = &text[from + start.len()..];
    &rest[..rest.find("\n- **").unwrap_or(rest.len())]
}

/// The `--long` flags named in backquotes in `text` (`-b/--bind` gives `--bind`).
fn named_flags(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('-'))
        .flat_map(|s| s.split('/'))
        .filter_map(|s| s.split_whitespace().next())
        .filter(|s| s.starts_with("--"))
        .collect()
}

/// The backquoted spans of `text` (its code), in order.
fn quoted(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn readme_and_migration_guide_describe_what_rgun_does() {
    let read = |path: &str| std::fs::read_to_string(repo_root().join(path)).unwrap();
    let (readme, guide) = (read("README.md"), read("docs/migrating-from-gunicorn.md"));

    readmes_flags_are_in_help(&readme);
    readmes_worker_classes_run_or_are_refused(&readme, &guide);
    guides_ignored_and_json_log_flags_hold(&guide);

    // pyproject.toml's description says what the README's first line says.
    let pyproject = read("pyproject.toml");
    let description = pyproject
        .lines()
        .find_map(|l| l.strip_prefix("description = "))
        .expect("pyproject.toml's description");
    for word in ["WSGI", "ASGI", "HTTP/2", "WebSockets", "TLS", "Gunicorn"] {
        assert!(description.contains(word), "its description: {word}");
    }
}

/// Every flag the README's "What works today" names, rgun's --help has.
fn readmes_flags_are_in_help(readme: &str) {
    let (_, help, _) = rgun(&["--help"]);
    let flags = named_flags(section(
        readme,
        "- **Gunicorn's command line and config files.**",
    ));
    assert!(flags.len() > 30, "{flags:?}");
    for flag in ["--bind", "--workers", "--log-config-json", "--help"] {
        assert!(flags.contains(&flag), "{flag} not found in {flags:?}");
    }
    for flag in &flags {
        let spelled = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
            .any(|word| word == *flag);
        assert!(spelled, "README names {flag}, --help does not");
    }
}

/// Every worker class the README names runs its kind of application, and the guide
/// names it too; the classes it says are refused are refused, naming them.
fn readmes_worker_classes_run_or_are_refused(readme: &str, guide: &str) {
    let workers = section(readme, "- **WSGI and ASGI workers.**");
    let classes: Vec<&str> = quoted(workers)
        .into_iter()
        .map(|s| s.strip_prefix("-k ").unwrap_or(s))
        .filter(|s| {
            s.ends_with("Worker")
                || s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .collect();
    assert_eq!(
        classes,
        [
            "sync",
            "gthread",
            "asgi",
            "uvicorn.workers.UvicornWorker",
            "uvicorn_worker.UvicornWorker",
            "uvicorn.workers.UvicornH11Worker",
            "gevent",
            "eventlet",
        ],
        "the README's worker classes"
    );
    for class in classes {
        let asgi = class == "asgi" || class.contains("vicorn");
        let app = if asgi {
            "asgi_app:app"
        } else {
            "demo.app:application"
        };
        let args = [
            "-k",
            class,
            "--pythonpath",
            "tests/apps",
            "--check-config",
            app,
        ];
        let (code, _, err) = rgun(&args);
        if class == "gevent" || class == "eventlet" {
            assert_ne!(code, 0, "-k {class}");
            assert!(
                err.contains(class) && err.trim_end().lines().count() == 1,
                "{err}"
            );
        } else {
            assert_eq!(code, 0, "README's -k {class}: {err}");
            assert!(
                guide.contains(&format!("`{class}`")),
                "the guide omits {class}"
            );
        }
    }
}

/// The flags the guide says are accepted and ignored are, as it spells them;
/// --log-config-json works, as the guide says; --log-config is one line naming it.
fn guides_ignored_and_json_log_flags_hold(guide: &str) {
    let (_, rest) = guide
        .split_once("On the command line, ")
        .expect("the guide's accepted-and-ignored flags");
    let (ignored, _) = rest
        .split_once(" are accepted and ignored")
        .expect("the guide's accepted-and-ignored flags");
    let ignored = quoted(ignored);
    assert!(ignored.len() >= 5, "{ignored:?}");
    for spelling in ignored.iter().flat_map(|s| s.split('/')) {
        let mut args: Vec<&str> = spelling.split_whitespace().collect();
        if args == ["--worker-tmp-dir"] {
            args.push("/dev/shm");
        }
        args.extend(["--check-config", "demo.app:application"]);
        let (code, _, err) = rgun(&args);
        assert_eq!(code, 0, "the guide says {spelling} is accepted: {err}");
    }
    // --log-config-json works, as the guide says; --log-config is one line naming it.
    let json = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(json.path(), r#"{"version": 1}"#).unwrap();
    let json = json.path().to_str().unwrap();
    let args = [
        "--log-config-json",
        json,
        "--check-config",
        "demo.app:application",
    ];
    let (code, _, err) = rgun(&args);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = rgun(&["--log-config", "x.ini", "demo.app:application"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--log-config-json"), "{err}");
    assert!(
        guide.contains("`--log-config-json`"),
        "the guide's --log-config-json"
    );
}
