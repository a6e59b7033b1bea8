//! A server's life in its error log, beside Gunicorn's: start-up, TTIN, TTOU, USR1
//! and each way to stop (TERM, INT, QUIT), for the WSGI worker classes; start-up and
//! TERM for a Uvicorn worker class. Every record
//! is compared in order by level, by who wrote it (master or worker) and by text, with
//! numbers (pids, ports, versions) left out and rgun's own additional records set
//! aside (`RGUN_ONLY`, each with why).

use std::time::Duration;

use super::{digits_as_n, records, APP};
use crate::support::{wait_until, Server, ServerBuilder};

/// Records rgun writes that Gunicorn does not, all of them additions beside
/// Gunicorn's records (a parser of Gunicorn's lines meets each of those too).
const RGUN_ONLY: [(&str, &str); 4] = [
    (
        "All N workers ready",
        "the moment the generation is ready (systemd's READY=1), which Gunicorn does not know",
    ),
    (
        "Stopping (",
        "whether the stop is graceful or quick, said once by the master",
    ),
    (
        "Number of workers: ",
        "TTIN/TTOU's new target (Gunicorn logs it only as a statsd gauge at debug level)",
    ),
    (
        "Control socket: ",
        "where rgunctl finds this instance (Gunicorn 27's control socket is off in its run)",
    ),
];

/// Records Gunicorn 27 writes that rgun does not.
const GUNICORN_ONLY: [(&str, &str); 2] = [
    (
        "Worker (pid:N) was sent SIGTERM!",
        "Gunicorn's gthread worker ends by the TERM it was sent, and Gunicorn says so; \
         rgun's workers finish their requests and exit with status 0",
    ),
    (
        "Worker (pid:N) was sent SIGUSRN!",
        "Gunicorn warns, for each worker, that it passed USR1 on; rgun passes it on quietly \
     (a warning for a routine log rotation would count in gunicorn.log.warning)",
    ),
];

/// `(who, level, text)` for each record, numbers as `N` and the server's name and
/// version as `SERVER`.
fn shapes(server: &Server) -> Vec<(String, String, String)> {
    let master = u32::try_from(server.pid()).unwrap();
    records(&server.log())
        .into_iter()
        .map(|r| {
            let who = if r.pid == master { "master" } else { "worker" };
            let mut text = String::new();
            for c in r.lines.join("\n").chars() {
                if !c.is_ascii_digit() {
                    text.push(c);
                } else if !text.ends_with('N') {
                    text.push('N');
                }
            }
            for name in ["Starting rgun N.N.N", "Starting gunicorn N.N.N"] {
                text = text.replace(name, "Starting SERVER");
            }
            (who.to_owned(), r.level, text)
        })
        .filter(|(_, _, text)| {
            let set_aside = RGUN_ONLY.iter().chain(&GUNICORN_ONLY);
            !set_aside.into_iter().any(|(s, _)| text.starts_with(s))
        })
        .collect()
}

/// How many records of `server`'s log start with `text`.
fn count(server: &Server, text: &str) -> usize {
    records(&server.log())
        .iter()
        .filter(|r| r.lines[0].starts_with(text))
        .count()
}

/// Runs one life: start, TTIN, TTOU, USR1, then `stop`; the records' shapes.
fn one_life(args: &[&str], gunicorn: bool, stop: i32) -> Vec<(String, String, String)> {
    let mut builder = ServerBuilder::new(APP)
        .own_bind()
        .workers(1)
        .args(["-b", "127.0.0.1:0"])
        .args(args.iter().copied());
    if gunicorn {
        builder = builder.gunicorn();
    }
    let mut server = builder.start();
    let limit = Duration::from_secs(30);
    let imported = |n| wait_until(limit, || count(&server, "compat_app imported") == n);
    assert!(imported(1), "{}", server.log());
    server.signal(libc::SIGTTIN);
    let grew = wait_until(limit, || count(&server, "Booting worker with pid") == 2);
    assert!(grew && imported(2), "TTIN: {}", server.log());
    server.signal(libc::SIGTTOU);
    let shrank = wait_until(limit, || count(&server, "Worker exiting (pid") == 1);
    assert!(shrank, "TTOU: {}", server.log());
    server.signal(libc::SIGUSR1);
    let reopened = wait_until(limit, || count(&server, "Handling signal: usr1") == 1);
    assert!(reopened, "USR1: {}", server.log());
    server.signal(stop);
    assert_eq!(server.wait_exit(limit), Some(0), "{}", server.log());
    shapes(&server)
}

#[test]
fn start_up_signals_and_stops_log_as_in_gunicorn() {
    for (args, class) in [
        (&[][..], "sync"),
        (&["-k", "gthread", "--threads", "2"][..], "gthread"),
    ] {
        for (stop, name) in [
            (libc::SIGTERM, "term"),
            (libc::SIGINT, "int"),
            (libc::SIGQUIT, "quit"),
        ] {
            let rgun = one_life(args, false, stop);
            let gunicorn = one_life(args, true, stop);
            assert_eq!(rgun, gunicorn, "-k {class}, stopped by {name}");
            let master = |text: &str| ("master".into(), "INFO".into(), text.to_owned());
            // What the comparison covered, in rgun's words.
            for line in [
                master("Starting SERVER"),
                master(&format!("Using worker: {class}")),
                master("Handling signal: ttin"),
                master("Handling signal: ttou"),
                master(&format!("Handling signal: {name}")),
                master("Shutting down: Master"),
            ] {
                assert!(rgun.contains(&line), "{line:?} in {rgun:#?}");
            }
        }
    }
}

/// A Uvicorn worker class's life: under Gunicorn the worker writes Uvicorn's records
/// (`Started server process [N]`, the lifespan's, `Shutting down`, `Finished server
/// process [N]`) where a sync worker writes `Worker exiting`; rgun writes the same.
#[test]
fn a_uvicorn_worker_class_logs_uvicorns_records_as_in_gunicorn() {
    let life = |gunicorn: bool| {
        let mut builder = ServerBuilder::new("compat_app:asgi")
            .workers(1)
            .args(["-k", "uvicorn.workers.UvicornWorker"]);
        if gunicorn {
            builder = builder.gunicorn();
        }
        let mut server = builder.start();
        let limit = Duration::from_secs(30);
        let started = wait_until(limit, || {
            count(&server, "Application startup complete.") == 1
        });
        assert!(started, "{}", server.log());
        assert_eq!(server.get("/").status, 200);
        server.signal(libc::SIGTERM);
        assert_eq!(server.wait_exit(limit), Some(0), "{}", server.log());
        // (The harness hands rgun its listener as fd://N: `Listening at` is compared
        // by start_up_signals_and_stops_log_as_in_gunicorn.)
        let mut life = shapes(&server);
        life.retain(|(_, _, text)| !text.starts_with("Listening at: "));
        life
    };
    let rgun = life(false);
    assert_eq!(rgun, life(true), "rgun, then gunicorn");
    let worker = |text: &str| ("worker".into(), "INFO".into(), text.to_owned());
    // What the comparison covered, in rgun's words, in this order.
    let expected = [
        worker("Booting worker with pid: N"),
        worker("compat_app imported"),
        worker("Started server process [N]"),
        worker("Waiting for application startup."),
        worker("Application startup complete."),
        worker("Shutting down"),
        worker("Waiting for application shutdown."),
        worker("Application shutdown complete."),
        worker("Finished server process [N]"),
    ];
    let seen: Vec<_> = rgun.iter().filter(|r| r.0 == "worker").cloned().collect();
    assert_eq!(seen, expected, "{rgun:#?}");
}

/// The records from the worker's boot on, each as (who, level, first line with
/// numbers as N), and the exit status, of a server whose worker cannot load `app`.
fn failed_start(app: &str, gunicorn: bool) -> (Option<i32>, Vec<(String, String, String)>) {
    let mut builder = ServerBuilder::new(app).no_wait().workers(1);
    if gunicorn {
        builder = builder.gunicorn();
    }
    let mut server = builder.start();
    let code = server.wait_exit(Duration::from_secs(60));
    let master = u32::try_from(server.pid()).unwrap();
    let all = records(&server.log());
    let booted = all
        .iter()
        .position(|r| r.lines[0].starts_with("Booting worker"))
        .unwrap_or_else(|| panic!("no boot in {}", server.log()));
    let seen = all[booted..]
        .iter()
        .map(|r| {
            let who = if r.pid == master { "master" } else { "worker" };
            (who.to_owned(), r.level.clone(), digits_as_n(&r.lines[0]))
        })
        .collect();
    (code, seen)
}

/// A worker that cannot load the application stops the server: the worker's records,
/// then the master's `exited with code N.`, `Shutting down: Master`, `Reason: ...`,
/// all errors, as in Gunicorn; the exit status is the worker's.
#[test]
fn a_worker_that_cannot_load_the_application_stops_the_server_as_in_gunicorn() {
    let record = |who: &str, level: &str, text: &str| (who.into(), level.into(), text.into());
    let tail = |code: &str, reason: &str| {
        vec![
            record("worker", "INFO", "Worker exiting (pid: N)"),
            record(
                "master",
                "ERROR",
                &format!("Worker (pid:N) exited with code {code}."),
            ),
            record("master", "ERROR", "Shutting down: Master"),
            record("master", "ERROR", &format!("Reason: {reason}")),
        ]
    };
    // The callable is not in the module: the same status, reason and records after
    // the import (Gunicorn prints its message bare, rgun logs it with the traceback).
    let (code, rgun) = failed_start("compat_app:no_such_callable", false);
    let (their_code, theirs) = failed_start("compat_app:no_such_callable", true);
    assert_eq!((code, their_code), (Some(4), Some(4)));
    let after_import = |seen: &[(String, String, String)]| {
        let at = seen
            .iter()
            .position(|r| r.2 == "compat_app imported")
            .unwrap();
        seen[at + 1..]
            .iter()
            .filter(|r| r.2 != "Exception in worker process")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(after_import(&rgun), after_import(&theirs), "{rgun:#?}");
    assert_eq!(after_import(&rgun), tail("N", "App failed to load."));
    // The module raises on import: the worker's record and traceback, then the same
    // master records, except the status: Gunicorn tells an import that raised
    // (3, "Worker failed to boot.") from a callable not found (4); rgun's 4 means the
    // application failed to load either way (docs/gunicorn-compat.md).
    let (code, rgun) = failed_start("broken_app:application", false);
    let (their_code, theirs) = failed_start("broken_app:application", true);
    assert_eq!((code, their_code), (Some(4), Some(3)));
    let mut expected = vec![
        record("worker", "INFO", "Booting worker with pid: N"),
        record("worker", "ERROR", "Exception in worker process"),
    ];
    assert_eq!(
        rgun,
        [expected.clone(), tail("N", "App failed to load.")].concat()
    );
    expected.extend(tail("N", "Worker failed to boot."));
    assert_eq!(theirs, expected);
}
