//! Faults injected into a running server (issue 25): a worker out of descriptors, a
//! boot killed by a signal, a crash after serving, a stopped worker. Each test pins
//! what the server does and what the operator sees (log lines, `status`, metrics).

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    children_of, read_response, rgunctl_bin, wait_until, write_file, Server, ServerBuilder,
};

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

/// `status`'s result.
fn status(s: &Server) -> Value {
    s.status()["result"].clone()
}

/// The Prometheus exposition, through `rgunctl metrics`.
fn metrics_text(s: &Server) -> String {
    let out = Command::new(rgunctl_bin())
        .arg("-s")
        .arg(&s.ctl_path)
        .arg("metrics")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run rgunctl metrics");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// An app whose import sleeps while `slow` exists in its directory and kills itself
/// with SIGKILL while `suicide` does.
const BOOT_APP: &str = r#"
import os, signal, time
here = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(here, "slow")):
    time.sleep(2)
if os.path.exists(os.path.join(here, "suicide")):
    os.kill(os.getpid(), signal.SIGKILL)

def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"#;

fn boot_server(dir: &std::path::Path) -> Server {
    write_file(dir, "booted.py", BOOT_APP);
    ServerBuilder::new("booted:application")
        .workers(2)
        .arg("--chdir")
        .arg(dir.to_str().unwrap())
        .start()
}

fn reload_in_background(s: &Server) -> std::thread::JoinHandle<std::process::Output> {
    let mut cmd = Command::new(rgunctl_bin());
    cmd.arg("-s")
        .arg(&s.ctl_path)
        .arg("reload")
        .stdin(std::process::Stdio::null());
    std::thread::spawn(move || cmd.output().expect("run rgunctl reload"))
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
    let gone = || {
        std::fs::read_to_string(format!("/proc/{victim}/stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
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

/// A process and all its descendants, as /proc shows them now.
fn tree_of(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children_of(all[i]));
        i += 1;
    }
    all
}

/// Gone, or a zombie nobody will run again.
fn is_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|st| {
            st.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// A `--preload` server whose application takes `import_s` seconds to import once
/// `slow` exists, in the middle of a reload (the re-executed master importing) when
/// `signal` reaches the master. Returns every process of the tree seen, the reload's
/// `rgunctl` output, and the server (its master already signalled).
fn signal_during_a_preload_reload(
    signal: i32,
    import_s: u32,
) -> (Vec<i32>, std::process::Output, Server) {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "booted.py",
        &BOOT_APP.replace("sleep(2)", &format!("sleep({import_s})")),
    );
    let s = ServerBuilder::new("booted:application")
        .workers(2)
        .args(["--preload", "--graceful-timeout", "5"])
        .arg("--chdir")
        .arg(dir.path().to_str().unwrap())
        .start();
    write_file(dir.path(), "slow", "");
    let reload = reload_in_background(&s);
    s.wait_for_log("Re-executing the master", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let seen = tree_of(s.pid());
    assert!(seen.len() >= 3, "master and 2 workers: {seen:?}");
    s.signal(signal);
    let out = reload.join().unwrap();
    // The directory must outlive the processes that import from it.
    std::mem::forget(dir);
    (seen, out, s)
}

fn assert_tree_gone(seen: &[i32], s: &Server, limit: Duration) {
    let started = std::time::Instant::now();
    let all_gone = wait_until(limit, || seen.iter().all(|&p| is_gone(p)));
    let alive: Vec<i32> = seen.iter().copied().filter(|&p| !is_gone(p)).collect();
    assert!(
        all_gone,
        "still running after {limit:?}: {alive:?}\n{}",
        s.log()
    );
    eprintln!(
        "the whole tree was gone {:?} after the signal",
        started.elapsed()
    );
    // The last holder's descriptors close as it exits, which the kernel may finish a
    // moment after the process stops showing: the port is closed within the same limit.
    let rest = limit.saturating_sub(started.elapsed());
    assert!(
        wait_until(rest.max(Duration::from_secs(1)), || {
            std::net::TcpStream::connect(("127.0.0.1", s.port)).is_err()
        }),
        "something still listens on the port\n{}",
        s.log()
    );
}

/// Regression (issue 25, item 1): TERM during a `--preload` reload (now: while the
/// re-executed master imports the new code) stopped the old master, and the new one
/// then served on alone (a stopped service that answers;
/// "address already in use" at the next start); the reload said generation 1 kept
/// serving.
#[test]
fn term_during_a_preload_reload_stops_the_whole_tree_and_the_reload_says_so() {
    let (seen, out, mut s) = signal_during_a_preload_reload(libc::SIGTERM, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("reload to generation 2 abandoned: the server is stopping"),
        "{stderr}"
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0), "{}", s.log());
    // graceful timeout (5 s) + 5 s
    assert_tree_gone(&seen, &s, Duration::from_secs(10));
}

/// A stop always stops: TERM during a `--preload` reload whose import hangs (an hour's
/// sleep) cuts the import short rather than waiting for it.
#[test]
fn term_during_a_preload_reload_whose_import_hangs_still_stops_the_tree() {
    let (seen, out, mut s) = signal_during_a_preload_reload(libc::SIGTERM, 3600);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reload to generation 2 abandoned: the server is stopping"),
        "{stderr}"
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0), "{}", s.log());
    // graceful timeout (5 s) + 5 s
    assert_tree_gone(&seen, &s, Duration::from_secs(10));
}

/// The same family: SIGKILL of the master during a `--preload` reload left the
/// half-started new master serving on its own.
#[test]
fn kill_of_the_master_during_a_preload_reload_leaves_no_process() {
    let (seen, _out, mut s) = signal_during_a_preload_reload(libc::SIGKILL, 3);
    assert_eq!(
        s.wait_exit(Duration::from_secs(10)),
        None,
        "killed, no status"
    );
    assert_tree_gone(&seen, &s, Duration::from_secs(10));
}

/// Regression (issue 25, item 0), in a container: rgun as PID 1 of a PID namespace
/// stays PID 1 through a `--preload` reload (it used to exit, ending the container,
/// while a new master served as a child of nobody).
#[test]
fn a_preload_reload_keeps_pid_1_in_a_pid_namespace() {
    if !crate::support::running_as_root("a_preload_reload_keeps_pid_1_in_a_pid_namespace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "booted.py", BOOT_APP);
    let mut s = ServerBuilder::new("booted:application")
        .workers(2)
        // `unshare`, the process that starts rgun, waits for it (and kills it if it
        // dies itself).
        .wrapped_in(&["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .args(["--preload"])
        .arg("--chdir")
        .arg(dir.path().to_str().unwrap())
        .start();
    let pid = |s: &Server| status(s)["master"]["pid"].clone();
    assert_eq!(pid(&s), 1, "{}", status(&s));
    write_file(dir.path(), "slow", "");
    let out = reload_in_background(&s).join().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    assert_eq!(pid(&s), 1, "{}", status(&s));
    assert_eq!(status(&s)["master"]["generation"], 2);
    // `unshare`, which started rgun and waits for it, saw it run throughout.
    assert!(s.child.try_wait().unwrap().is_none(), "{}", s.log());
    assert_eq!(s.get("/").status, 200);
    // (`unshare` ignores TERM while it waits: stop through the control socket.)
    let stop = Command::new(rgunctl_bin())
        .arg("-s")
        .arg(&s.ctl_path)
        .arg("stop")
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    assert_eq!(s.wait_exit(Duration::from_secs(15)), Some(0), "{}", s.log());
}

// ---------------------------------------------------------------------------------
// The master's state machine (`master/lifecycle.rs`) over real processes
// ---------------------------------------------------------------------------------

/// Waits (bounded) until `status` says the master is in `state`.
fn wait_for_state(s: &Server, state: &str) {
    assert!(
        wait_until(Duration::from_secs(20), || status(s)["master"]["state"]
            == state),
        "never {state}: {}\n{}",
        status(s),
        s.log()
    );
}

/// Once draining, nothing brings the server back: a reload is refused, USR2 starts no
/// second master; and a quick stop overtakes the graceful one (the delay is 60 s).
#[test]
fn draining_refuses_reloads_and_usr2_and_a_quick_stop_overtakes_it() {
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["--shutdown-delay", "60"])
        .start();
    let workers = s.worker_pids();
    s.signal(libc::SIGTERM);
    wait_for_state(&s, "draining");
    let reload = reload_in_background(&s).join().unwrap();
    let stderr = String::from_utf8_lossy(&reload.stderr);
    assert_eq!(reload.status.code(), Some(1), "{reload:?}");
    assert!(stderr.contains("the server is stopping"), "{stderr}");
    s.signal(libc::SIGUSR2);
    s.wait_for_log(
        "USR2 ignored: the server is stopping",
        Duration::from_secs(20),
    );
    let mut children = s.worker_pids();
    children.sort_unstable();
    let mut expected = workers.clone();
    expected.sort_unstable();
    assert_eq!(children, expected, "no second master, no new worker");
    assert_eq!(status(&s)["master"]["state"], "draining");
    s.signal(libc::SIGINT);
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0), "{}", s.log());
    assert!(
        s.log().contains("Shutdown delay cut short by a quick stop"),
        "{}",
        s.log()
    );
    for w in workers {
        assert!(is_gone(w), "worker {w} outlived its master");
    }
}

/// A stop abandons the reload in progress and the one queued behind it: each waiting
/// `rgunctl reload` is answered (failed: the server is stopping), and the server exits.
/// USR2 during the reload is refused.
#[test]
fn a_stop_answers_the_running_and_the_queued_reload_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = boot_server(dir.path());
    write_file(dir.path(), "slow", "");
    let first = reload_in_background(&s);
    wait_for_state(&s, "reloading");
    let second = reload_in_background(&s);
    s.wait_for_log("Reload queued", Duration::from_secs(20));
    // One change at a time: no second master in the middle of a reload.
    s.signal(libc::SIGUSR2);
    s.wait_for_log(
        "USR2 ignored: a reload is in progress",
        Duration::from_secs(20),
    );
    s.signal(libc::SIGTERM);
    let first = first.join().unwrap();
    let second = second.join().unwrap();
    let (e1, e2) = (
        String::from_utf8_lossy(&first.stderr),
        String::from_utf8_lossy(&second.stderr),
    );
    assert_eq!(first.status.code(), Some(1), "{first:?}");
    assert!(
        e1.contains("reload to generation 2 abandoned: the server is stopping"),
        "{e1}"
    );
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(
        e2.contains("reload not started: the server is stopping"),
        "{e2}"
    );
    assert_eq!(s.wait_exit(Duration::from_secs(40)), Some(0), "{}", s.log());
}

/// A `--preload` reload reads the configuration file before the master re-executes:
/// a broken one fails the reload with its error and nothing changes (a re-executed
/// master that could not read it would have had to exit, and the server with it).
#[test]
fn a_preload_reload_with_a_broken_configuration_file_fails_and_the_server_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(&conf, "workers = 2\n").unwrap();
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .args(["--preload", "-c", conf.to_str().unwrap()])
        .start();
    let master = status(&s)["master"]["pid"].clone();
    let workers = {
        let mut w = s.worker_pids();
        w.sort_unstable();
        w
    };
    std::fs::write(&conf, "workers = 2\nthis is not python\n").unwrap();
    let out = reload_in_background(&s).join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("the configuration cannot be read") && stderr.contains("gunicorn.conf.py"),
        "{stderr}"
    );
    assert!(!s.log().contains("Re-executing the master"), "{}", s.log());
    let st = status(&s);
    assert_eq!(st["master"]["pid"], master, "{st}");
    assert_eq!(st["master"]["generation"], 1, "{st}");
    assert_eq!(st["master"]["state"], "running", "{st}");
    let mut now = s.worker_pids();
    now.sort_unstable();
    assert_eq!(now, workers);
    assert_eq!(s.get("/").status, 200);
    // Mended, the next reload goes through, in place.
    std::fs::write(&conf, "workers = 2\n").unwrap();
    let out = reload_in_background(&s).join().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    let st = status(&s);
    assert_eq!(st["master"]["pid"], master, "{st}");
    assert_eq!(st["master"]["generation"], 2, "{st}");
    assert!(s.child.try_wait().unwrap().is_none());
}

/// Gunicorn's own `gunicornc` asking a `--preload` rgun to reload: answered, and the
/// master re-executes in place (its pid kept) with the new generation serving.
#[test]
fn gunicornc_reload_of_a_preload_server_keeps_the_master() {
    let gunicornc = crate::support::venv().join("bin").join("gunicornc");
    assert!(gunicornc.exists(), "{} is missing", gunicornc.display());
    let s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["--preload"])
        .start();
    let master = status(&s)["master"]["pid"].clone();
    let out = Command::new(&gunicornc)
        .arg("-s")
        .arg(&s.ctl_path)
        .args(["-c", "reload", "-j"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reloading"),
        "{out:?}"
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            let st = status(&s);
            st["master"]["generation"] == 2 && st["master"]["state"] == "running"
        }),
        "{}\n{}",
        status(&s),
        s.log()
    );
    assert_eq!(status(&s)["master"]["pid"], master);
    assert_eq!(s.get("/").status, 200);
}

/// The sum of a counter family's samples in a Prometheus exposition.
fn counter_sum(metrics: &str, family: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Counters only grow, also across a `--preload` reload's re-execution: `status`'s
/// request total and `/metrics`' `rgun_requests_total` and `rgun_reloads_total` go on
/// from where the old image left them.
#[test]
fn counters_go_on_across_a_preload_reload() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["--preload"])
        .start();
    for _ in 0..30 {
        assert_eq!(s.get("/").status, 200);
    }
    let before = metrics_text(&s);
    let served = counter_sum(&before, "rgun_requests_total");
    assert!(served >= 30, "{before}");
    assert!(status(&s)["totals"]["requests"].as_u64() >= Some(30));
    let out = reload_in_background(&s).join().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    let after = metrics_text(&s);
    assert!(
        counter_sum(&after, "rgun_requests_total") >= served,
        "{before}\n{after}"
    );
    assert!(
        after.contains("rgun_reloads_total{result=\"ok\"} 1"),
        "{after}"
    );
    let st = status(&s);
    assert!(st["totals"]["requests"].as_u64() >= Some(served), "{st}");
    assert_eq!(st["totals"]["reloads"], 1, "{st}");
}

/// A `scale --wait` still waiting when a `--preload` reload re-executes the master is
/// carried across `execve` and answered once the count is reached (workers become
/// ready only once the file `go` exists, made after the master re-executed).
#[test]
fn a_scale_wait_pending_across_a_preload_reload_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gunicorn.conf.py");
    let go = dir.path().join("go");
    std::fs::write(
        &conf,
        format!(
            "import os, time\ndef post_worker_init(worker):\n    while not os.path.exists({go:?}):\n        time.sleep(0.05)\n"
        ),
    )
    .unwrap();
    std::fs::write(&go, "").unwrap();
    let s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["--preload", "-c", conf.to_str().unwrap()])
        .start();
    std::fs::remove_file(&go).unwrap();
    let master = status(&s)["master"]["pid"].clone();
    let mut scale = Command::new(rgunctl_bin());
    scale
        .arg("-s")
        .arg(&s.ctl_path)
        // Bounded: unanswered, it would wait for ever.
        .args(["--timeout", "60", "scale", "3", "--wait"])
        .stdin(std::process::Stdio::null());
    let scale = std::thread::spawn(move || scale.output().expect("run rgunctl scale"));
    assert!(
        wait_until(Duration::from_secs(20), || status(&s)["workers"]
            .as_array()
            .is_some_and(|ws| ws.len() == 3)),
        "{}",
        status(&s)
    );
    let reload = reload_in_background(&s);
    s.wait_for_log("Re-executing the master", Duration::from_secs(20));
    std::fs::write(&go, "").unwrap();
    let scaled = scale.join().unwrap();
    assert!(scaled.status.success(), "{scaled:?}\n{}", s.log());
    let reloaded = reload.join().unwrap();
    assert!(reloaded.status.success(), "{reloaded:?}");
    let st = status(&s);
    assert_eq!(st["master"]["pid"], master, "{st}");
    assert_eq!(st["master"]["workers_target"], 3, "{st}");
}
