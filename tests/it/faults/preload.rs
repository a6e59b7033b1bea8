//! A `--preload` reload, where the master re-executes itself: TERM or SIGKILL in the
//! middle of it, PID 1 of a PID namespace, a broken configuration file, Gunicorn's
//! `gunicornc`, counters and a pending `scale --wait` carried across `execve`.

use std::process::Command;
use std::time::Duration;

use super::{metrics_text, reload_in_background, status, BOOT_APP};
use crate::support::{
    children_of, is_gone, rgunctl_bin, wait_until, write_file, Server, ServerBuilder,
};

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
    let (seen, out, s) = signal_during_a_preload_reload(libc::SIGTERM, 3);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_the_stop_abandoned_the_reload(&seen, &out, s);
}

/// A stop always stops: TERM during a `--preload` reload whose import hangs (an hour's
/// sleep) cuts the import short rather than waiting for it.
#[test]
fn term_during_a_preload_reload_whose_import_hangs_still_stops_the_tree() {
    let (seen, out, s) = signal_during_a_preload_reload(libc::SIGTERM, 3600);
    assert_the_stop_abandoned_the_reload(&seen, &out, s);
}

/// After TERM during a reload: `rgunctl reload` said the reload was abandoned, the
/// master exited 0, and every process of the tree `seen` is gone.
fn assert_the_stop_abandoned_the_reload(seen: &[i32], out: &std::process::Output, mut s: Server) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reload to generation 2 abandoned: the server is stopping"),
        "{stderr}"
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0), "{}", s.log());
    // graceful timeout (5 s) + 5 s
    assert_tree_gone(seen, &s, Duration::from_secs(10));
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
