//! Faults in workers: a worker out of descriptors, a new worker killed while it boots,
//! a crash after serving, a SIGSTOPped worker.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use super::{boot_server, metrics_text, reload_in_background, status};
use crate::support::{is_gone, read_response, wait_until, write_file, ServerBuilder};

/// Sets a process's soft RLIMIT_NOFILE (its hard limit unchanged); returns the old soft.
fn set_soft_nofile(pid: i32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads `new` and writes `old`, both valid for the call.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(
        rc,
        0,
        "prlimit get {pid}: {}",
        std::io::Error::last_os_error()
    );
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(
        rc,
        0,
        "prlimit set {pid}: {}",
        std::io::Error::last_os_error()
    );
    old.rlim_cur
}

/// Regression (issue 25, item 3): each worker logged `accept failed, pausing accepts:
/// Too many open files` every 100 ms (120 lines in 6 s with 2 workers).
#[test]
fn a_descriptor_shortage_logs_two_lines_and_shows_in_status_and_metrics() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .start();
    let workers = s.worker_pids();
    assert_eq!(workers.len(), 2);
    // Descriptors 0-2 are taken, so with a soft limit of 3 every accept fails EMFILE.
    let old: Vec<u64> = workers.iter().map(|&w| set_soft_nofile(w, 3)).collect();
    let clients: Vec<TcpStream> = (0..4).map(|_| s.connect()).collect();
    assert!(
        wait_until(Duration::from_secs(10), || {
            status(&s)["master"]["accept_failing"]["failures"]
                .as_u64()
                .is_some_and(|n| n >= 10)
        }),
        "status never showed the episode: {}\n{}",
        status(&s),
        s.log()
    );
    let st = status(&s);
    let failing = &st["master"]["accept_failing"];
    assert!(
        failing["error"]
            .as_str()
            .is_some_and(|e| e.contains("EMFILE")),
        "{st}"
    );
    let metrics = metrics_text(&s);
    assert!(metrics.contains("\nrgun_accept_failing 1\n"), "{metrics}");
    // The shortage ends: the waiting clients are served.
    for (&w, &soft) in workers.iter().zip(&old) {
        set_soft_nofile(w, soft);
    }
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let r = read_response(&mut BufReader::new(c), false).expect("served after the shortage");
        assert_eq!(r.status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), || status(&s)["master"]
            ["accept_failing"]
            .is_null()),
        "the episode never ended: {}",
        status(&s)
    );
    let st = status(&s);
    let errors = st["totals"]["accept_errors"].as_u64().unwrap_or(0);
    assert!(errors >= 10, "{st}");
    let metrics = metrics_text(&s);
    assert!(metrics.contains("\nrgun_accept_failing 0\n"), "{metrics}");
    assert!(
        metrics.contains(&format!("\nrgun_accept_errors_total {errors}\n")),
        "{metrics}"
    );
    let log = s.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("accept") && !l.contains("Listening"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("accepting connections fails: Too many open files"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("accepting connections works again")
            && lines[1].contains("accepts failed"),
        "{lines:#?}"
    );
}

/// Regression (issue 25, item 4): a new worker SIGKILLed while it booted failed the
/// whole reload; now it is booted again and the reload succeeds.
#[test]
fn a_new_worker_killed_while_booting_is_booted_again_and_the_reload_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let s = boot_server(dir.path());
    write_file(dir.path(), "slow", "");
    let reload = reload_in_background(&s);
    let mut victim = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            victim = status(&s)["workers"].as_array().and_then(|ws| {
                ws.iter()
                    .find(|w| w["generation"] == 2 && w["state"] == "booting")
                    .and_then(|w| w["pid"].as_i64())
            });
            victim.is_some()
        }),
        "no booting worker of generation 2: {}",
        status(&s)
    );
    let victim = victim.unwrap() as i32;
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let out = reload.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("generation 1 -> 2"),
        "{out:?}\n{}",
        s.log()
    );
    assert!(
        s.log().contains(
            "killed by SIGKILL before it was ready; booting another worker of generation 2"
        ),
        "{}",
        s.log()
    );
    let st = status(&s);
    let serving: Vec<&Value> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["generation"] == 2)
        .collect();
    assert_eq!(serving.len(), 2, "{st}");
}

/// The retry is bounded: code that kills itself on import fails the reload, and the
/// old generation keeps serving.
#[test]
fn a_boot_that_is_always_killed_fails_the_reload_after_a_few_tries() {
    let dir = tempfile::tempdir().unwrap();
    let s = boot_server(dir.path());
    write_file(dir.path(), "suicide", "");
    let out = reload_in_background(&s).join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("generation 1 keeps serving") && stderr.contains("SIGKILL"),
        "{stderr}"
    );
    let log = s.log();
    assert_eq!(
        log.matches("booting another worker of generation 2")
            .count(),
        3,
        "{log}"
    );
    assert_eq!(s.get("/").status, 200);
}

/// Regression (issue 25, item 5): a worker that crashed a second after it started was
/// put on the "failed early" back-off even though it had served.
#[test]
fn a_worker_that_served_then_crashed_is_replaced_without_back_off() {
    let s = ServerBuilder::new("lifecycle_app:application").start();
    let before = s.worker_pids();
    assert_eq!(s.get("/").status, 200);
    let mut c = s.connect();
    c.write_all(b"GET /crash HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let st = status(&s);
            st["workers"].as_array().is_some_and(|ws| {
                ws.len() == 1
                    && ws[0]["state"] == "idle"
                    && ws[0]["pid"].as_i64() != Some(i64::from(before[0]))
            })
        }),
        "no replacement: {}",
        status(&s)
    );
    let log = s.log();
    assert!(log.contains("exited with code 1"), "{log}");
    assert!(!log.contains("failed early"), "{log}");
}

/// Regression (issue 25, item 6): a SIGSTOPped worker was killed `--timeout` + 2 s
/// (and up to a second more) after it stopped; now at most `--timeout` + 1 s.
#[test]
fn a_stopped_worker_is_killed_within_timeout_plus_a_second() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["--timeout", "3"])
        .start();
    let victim = s.worker_pids()[0];
    let stopped = std::time::Instant::now();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(victim, libc::SIGSTOP) };
    let gone = || is_gone(victim);
    assert!(wait_until(Duration::from_secs(15), gone), "{}", s.log());
    // Not timed (the machine may be loaded): the bound is the master's, which kills a
    // stopped worker at its time-out with SIGKILL, without SIGABRT's 2 s grace first.
    eprintln!(
        "a stopped worker with --timeout 3 was killed {:?} after SIGSTOP",
        stopped.elapsed()
    );
    let log = s.log();
    assert!(
        log.contains(&format!(
            "WORKER TIMEOUT (pid:{victim}): stopped; killing it"
        )),
        "{log}"
    );
    assert!(
        !log.contains(&format!("WORKER TIMEOUT (pid:{victim})\n")),
        "SIGABRT first: {log}"
    );
    assert_eq!(s.get("/").status, 200);
}
