//! The logging settings on a reload, beside Gunicorn 27 (which re-runs its logger's
//! set-up on HUP): each server starts on one configuration file, the file is edited,
//! HUP, and the records of the master, the old worker and the new one are read back
//! from the files the two configurations name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{records, Record};
use crate::support::{ctl, run_bounded, venv, wait_until, Server, ServerBuilder};

const APP: &str = "log_reload_app:application";

/// One server's reload: the pids of the master and of the worker before and after.
struct Reloaded {
    master: u32,
    old: u32,
    new: u32,
    /// Requests each worker answered (each is one access line).
    answered_by_old: usize,
    answered_by_new: usize,
}

fn write_conf(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// One request; the pid of the worker that answered.
fn worker_pid(server: &Server) -> u32 {
    server.get("/").text().parse().expect("a pid")
}

/// Starts `rgun`/`gunicorn` on `first` (its error log at `first_log`), asks once, HUPs
/// with `second` in the file, asks until the new worker answers, waits for the old
/// one's exit record in `first_log`, then stops the server.
fn reload(gunicorn: bool, dir: &Path, first: &str, first_log: &Path, second: &str) -> Reloaded {
    let conf = dir.join("gunicorn.conf.py");
    write_conf(&conf, first);
    let builder = ServerBuilder::new(APP)
        .args(["-c", conf.to_str().unwrap()])
        .logs_from_config(first_log);
    let mut server = if gunicorn {
        builder.gunicorn().start()
    } else {
        builder.start()
    };
    let old = worker_pid(&server);
    let mut run = Reloaded {
        master: server.pid() as u32,
        old,
        new: old,
        answered_by_old: 1,
        answered_by_new: 0,
    };
    write_conf(&conf, second);
    server.signal(libc::SIGHUP);
    let swapped = wait_until(Duration::from_secs(30), || {
        let pid = worker_pid(&server);
        if pid == old {
            run.answered_by_old += 1;
            return false;
        }
        run.new = pid;
        run.answered_by_new += 1;
        true
    });
    let exited = format!("Worker exiting (pid: {old})");
    let old_gone = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(first_log).is_ok_and(|log| log.contains(&exited))
    });
    assert!(swapped && old_gone, "no new worker, or the old one stayed");
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(30));
    run
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn has(records: &[Record], pid: u32, text: &str) -> bool {
    records
        .iter()
        .any(|r| r.pid == pid && r.lines[0].contains(text))
}

/// The records after the master's `Hang up: Master` (the reload's start).
fn after_hangup(records: Vec<Record>, master: u32) -> Vec<Record> {
    let at = records
        .iter()
        .position(|r| r.pid == master && r.lines[0] == "Hang up: Master")
        .expect("the master's HUP record");
    records[at + 1..].to_vec()
}

fn server_names() -> [(&'static str, bool); 2] {
    [("rgun", false), ("gunicorn", true)]
}

#[test]
fn a_reload_moves_the_error_and_access_logs_as_gunicorn_does() {
    for (name, gunicorn) in server_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = |f: &str| dir.path().join(f);
        let conf = |n: u32| {
            format!(
                "loglevel = 'info'\nerrorlog = {:?}\naccesslog = {:?}\n",
                path(&format!("error{n}.log")),
                path(&format!("access{n}.log"))
            )
        };
        let run = reload(
            gunicorn,
            dir.path(),
            &conf(1),
            &path("error1.log"),
            &conf(2),
        );
        let (first, second) = (read(&path("error1.log")), read(&path("error2.log")));
        let context = format!("{name}:\n--- error1.log\n{first}--- error2.log\n{second}");
        let (first, second) = (records(&first), records(&second));
        // The old worker kept its log to the end; the new one never wrote the old.
        assert!(has(&first, run.old, "Worker exiting"), "{context}");
        assert!(!first.iter().any(|r| r.pid == run.new), "{context}");
        // The master moved at the reload: nothing of it in the old log after the HUP.
        let master_after = after_hangup(first, run.master);
        assert!(
            !master_after.iter().any(|r| r.pid == run.master),
            "{context}"
        );
        let booting = format!("Booting worker with pid: {}", run.new);
        assert!(has(&second, run.new, &booting), "{context}");
        assert!(has(&second, run.new, "app warning from"), "{context}");
        assert!(
            has(&second, run.master, "Shutting down: Master"),
            "{context}"
        );
        assert!(!second.iter().any(|r| r.pid == run.old), "{context}");
        let lines = |f: &str| read(&path(f)).lines().count();
        assert_eq!(
            (lines("access1.log"), lines("access2.log")),
            (run.answered_by_old, run.answered_by_new),
            "{name}: the access lines"
        );
    }
}

#[test]
fn a_reload_applies_a_lower_loglevel_to_the_master_and_the_new_workers_as_gunicorn_does() {
    for (name, gunicorn) in server_names() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("error.log");
        let conf = |level: &str| {
            format!(
                "loglevel = '{level}'\nerrorlog = {log:?}\naccesslog = {:?}\n",
                dir.path().join("access.log")
            )
        };
        let run = reload(gunicorn, dir.path(), &conf("debug"), &log, &conf("warning"));
        let text = read(&log);
        let context = format!("{name}:\n{text}");
        let all = records(&text);
        assert!(has(&all, run.old, "app info from"), "{context}");
        // The new worker logs nothing below WARNING from its first record; the old one
        // keeps its level until it goes, and once it has gone nobody logs below WARNING
        // (the master's own stop records included).
        let below = |r: &&Record| matches!(r.level.as_str(), "INFO" | "DEBUG");
        let new: Vec<&Record> = all.iter().filter(|r| r.pid == run.new).collect();
        assert!(!new.iter().any(below), "{context}");
        assert!(has(&all, run.new, "app warning from"), "{context}");
        let exited = all
            .iter()
            .position(|r| r.pid == run.old && r.lines[0].starts_with("Worker exiting"))
            .expect("the old worker's exit record");
        let late: Vec<&Record> = all[exited + 1..].iter().filter(below).collect();
        assert!(late.is_empty(), "{late:?}\n{context}");
        assert!(!text.contains("Shutting down: Master"), "{context}");
    }
}

#[test]
fn a_reload_applies_a_changed_access_log_format_to_the_new_workers_as_gunicorn_does() {
    for (name, gunicorn) in server_names() {
        let dir = tempfile::tempdir().unwrap();
        let access = dir.path().join("access.log");
        let conf = |tag: &str| {
            format!(
                "errorlog = {:?}\naccesslog = {access:?}\naccess_log_format = '{tag} %(m)s %(U)s %(s)s'\n",
                dir.path().join("error.log")
            )
        };
        let run = reload(
            gunicorn,
            dir.path(),
            &conf("first"),
            &dir.path().join("error.log"),
            &conf("second"),
        );
        let text = read(&access);
        let count = |line: &str| text.lines().filter(|l| *l == line).count();
        // The old worker wrote every line in the first format, the new one every line
        // in the second: nothing else is in the file.
        assert_eq!(
            (count("first GET / 200"), count("second GET / 200")),
            (run.answered_by_old, run.answered_by_new),
            "{name}:\n{text}"
        );
        assert_eq!(
            text.lines().count(),
            run.answered_by_old + run.answered_by_new,
            "{name}:\n{text}"
        );
    }
}

/// A `logconfig_dict` that writes `gunicorn.error` to `log` as `TAG LEVEL [PID] MESSAGE`,
/// with `handler` as the handler's class.
fn logconfig(tag: &str, log: &Path, handler: &str) -> String {
    format!(
        "errorlog = {log:?}\nlogconfig_dict = {{'version': 1, 'disable_existing_loggers': False, \
         'formatters': {{'f': {{'format': '{tag} %(levelname)s [%(process)d] %(message)s'}}}}, \
         'handlers': {{'h': {{'class': '{handler}', 'formatter': 'f', 'filename': {log:?}}}}}, \
         'root': {{'level': 'INFO', 'handlers': []}}, \
         'loggers': {{'gunicorn.error': {{'handlers': ['h'], 'level': 'INFO', 'propagate': False}}}}}}\n"
    )
}

/// `TAG LEVEL [PID] MESSAGE` lines as (tag, pid, message).
fn tagged(log: &str) -> Vec<(String, u32, String)> {
    log.lines()
        .filter_map(|line| {
            let (tag, rest) = line.split_once(' ')?;
            let (_level, rest) = rest.split_once(" [")?;
            let (pid, message) = rest.split_once("] ")?;
            Some((tag.to_owned(), pid.parse().ok()?, message.to_owned()))
        })
        .filter(|(tag, _, _)| tag.starts_with("FORMAT"))
        .collect()
}

#[test]
fn a_reload_applies_a_changed_logconfig_dict_format_as_gunicorn_does() {
    for (name, gunicorn) in server_names() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("error.log");
        let handler = "logging.FileHandler";
        let (first, second) = (
            logconfig("FORMAT1", &log, handler),
            logconfig("FORMAT2", &log, handler),
        );
        let run = reload(gunicorn, dir.path(), &first, &log, &second);
        let text = read(&log);
        let lines = tagged(&text);
        let tag_of = |pid: u32, text: &str| {
            lines
                .iter()
                .find(|(_, p, m)| *p == pid && m.contains(text))
                .map(|(tag, _, _)| tag.as_str())
        };
        let context = format!("{name}:\n{text}");
        assert_eq!(
            tag_of(run.old, "Booting worker"),
            Some("FORMAT1"),
            "{context}"
        );
        assert_eq!(
            tag_of(run.old, "Worker exiting"),
            Some("FORMAT1"),
            "{context}"
        );
        assert_eq!(
            tag_of(run.new, "Booting worker"),
            Some("FORMAT2"),
            "{context}"
        );
        // The application's records through `gunicorn.error` too.
        let app = |pid| tag_of(pid, "app warning from");
        assert_eq!(app(run.old), Some("FORMAT1"), "{context}");
        assert_eq!(app(run.new), Some("FORMAT2"), "{context}");
        let shutdown = tag_of(run.master, "Shutting down: Master");
        assert_eq!(shutdown, Some("FORMAT2"), "{context}");
        // Everything the master wrote after the HUP is in the new format.
        let hangup = lines
            .iter()
            .position(|(_, p, m)| *p == run.master && m == "Hang up: Master")
            .expect("the HUP record");
        let master_after: Vec<_> = lines[hangup + 1..]
            .iter()
            .filter(|(_, p, _)| *p == run.master)
            .collect();
        assert!(
            master_after.iter().all(|(tag, _, _)| tag == "FORMAT2"),
            "{context}"
        );
    }
}

/// The last `TAG` a line from `pid` was written with.
fn last_tag(log: &Path, pid: u32) -> Option<String> {
    tagged(&read(log))
        .into_iter()
        .rev()
        .find(|(_, p, _)| *p == pid)
        .map(|(tag, _, _)| tag)
}

#[test]
fn an_invalid_logconfig_dict_on_reload_is_refused_and_the_previous_logging_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log: PathBuf = dir.path().join("error.log");
    let conf = dir.path().join("gunicorn.conf.py");
    write_conf(&conf, &logconfig("FORMAT1", &log, "logging.FileHandler"));
    let server = ServerBuilder::new(APP)
        .args(["-c", conf.to_str().unwrap()])
        .logs_from_config(&log)
        .start();
    let serving = worker_pid(&server);
    write_conf(&conf, &logconfig("FORMAT2", &log, "logging.NoSuchHandler"));

    let run = ctl(&server, &["reload"]);
    assert_eq!(run.code, Some(1), "{} {}", run.stdout, run.stderr);
    let answer = run.stderr.trim();
    assert_eq!(answer.lines().count(), 1, "{answer}");
    assert!(
        answer.contains("logconfig_dict") && answer.contains("logging.NoSuchHandler"),
        "{answer}"
    );
    // The same line in the log, in the format in force.
    let master = server.pid() as u32;
    let logged = wait_until(Duration::from_secs(10), || {
        tagged(&read(&log)).iter().any(|(tag, p, m)| {
            tag == "FORMAT1"
                && *p == master
                && m.starts_with("reload not started: ")
                && m.contains("logging.NoSuchHandler")
        })
    });
    assert!(logged, "{}", read(&log));

    // Gunicorn's own gunicornc and a HUP are refused the same way; the old generation
    // serves and logs as before.
    let mut gunicornc = std::process::Command::new(venv().join("bin").join("gunicornc"));
    gunicornc
        .arg("-s")
        .arg(&server.ctl_path)
        .args(["-c", "reload"]);
    let run = run_bounded(gunicornc, Duration::from_secs(60));
    let answer = format!("{}{}", run.stdout, run.stderr);
    assert_ne!(run.code, Some(0), "{answer}");
    assert!(answer.contains("logging.NoSuchHandler"), "{answer}");
    server.signal(libc::SIGHUP);
    let refused_thrice = wait_until(Duration::from_secs(10), || {
        read(&log).matches("reload not started: ").count() == 3
    });
    assert!(refused_thrice, "{}", read(&log));
    assert_eq!(worker_pid(&server), serving);
    let mut server = server;
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(30));
    let text = read(&log);
    assert!(text.contains("Shutting down: Master"), "{text}");
    assert_eq!(last_tag(&log, master).as_deref(), Some("FORMAT1"), "{text}");
    assert_eq!(
        last_tag(&log, serving).as_deref(),
        Some("FORMAT1"),
        "{text}"
    );
}

#[test]
fn gunicorn_keeps_its_previous_logging_too_when_a_reloaded_logconfig_dict_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("error.log");
    let first = logconfig("FORMAT1", &log, "logging.FileHandler");
    let second = logconfig("FORMAT2", &log, "logging.NoSuchHandler");
    // Gunicorn goes on with the reload (new workers) under the previous logging;
    // rgun refuses the reload (the test above).
    let run = reload(true, dir.path(), &first, &log, &second);
    let text = read(&log);
    assert!(
        text.contains("reloading the logger configuration failed, keeping the previous one"),
        "{text}"
    );
    assert_eq!(
        last_tag(&log, run.master).as_deref(),
        Some("FORMAT1"),
        "{text}"
    );
    assert_eq!(
        last_tag(&log, run.new).as_deref(),
        Some("FORMAT1"),
        "{text}"
    );
}

#[test]
fn rgunctl_reload_moves_the_masters_error_log_and_a_failed_reload_moves_it_back() {
    // rgun only: a reload whose new workers cannot boot is rolled back.
    let dir = tempfile::tempdir().unwrap();
    let log = |n: u32| dir.path().join(format!("error{n}.log"));
    let conf = dir.path().join("gunicorn.conf.py");
    let write = |app: &str, n: u32| {
        write_conf(
            &conf,
            &format!("wsgi_app = '{app}'\nerrorlog = {:?}\n", log(n)),
        )
    };
    write(APP, 1);
    let server = ServerBuilder::new("")
        .args(["-c", conf.to_str().unwrap()])
        .logs_from_config(&log(1))
        .start();
    write("no_such_module_5521:application", 2);
    let failed = ctl(&server, &["reload"]);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    let (first, second) = (read(&log(1)), read(&log(2)));
    let context = format!("--- error1.log\n{first}--- error2.log\n{second}");
    // The master logged the reload's start and the new worker's failure in the new log,
    // the rollback in the serving one.
    assert!(
        second.contains("Reloading: booting generation 2"),
        "{context}"
    );
    assert!(second.contains("no_such_module_5521"), "{context}");
    assert!(
        first.contains("reload failed, generation 1 keeps serving"),
        "{context}"
    );
    assert!(!second.contains("keeps serving"), "{context}");

    write(APP, 3);
    ctl(&server, &["reload"]).assert_ok("reload");
    let third = read(&log(3));
    assert!(third.contains("Reloaded: generation 2 serving"), "{third}");
    let pid = worker_pid(&server);
    assert!(
        third.contains(&format!("Booting worker with pid: {pid}")),
        "{third}"
    );
}
