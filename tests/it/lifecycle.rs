//! The master's process lifecycle: graceful and quick stops, replacing dead workers,
//! back-off when they cannot boot, TTIN/TTOU, and workers recycled by --max-requests.
//! USR2 upgrades and systemd notify in `upgrade`.

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use crate::support::{read_response, wait_until, ServerBuilder};

mod dev_reload;
mod upgrade;

#[test]
fn term_finishes_requests_in_flight_then_exits_0() {
    let mut s = ServerBuilder::new("lifecycle_app:application").start();
    let mut c = s.connect();
    c.write_all(b"GET /sleep?1.5 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    s.wait_for_request_in_flight(Duration::from_secs(10));
    s.signal(libc::SIGTERM);
    let mut reader = BufReader::new(c);
    let r = read_response(&mut reader, false).expect("the request in flight completes");
    assert_eq!(r.text(), "slept");
    assert!(
        read_response(&mut reader, false).is_none(),
        "a draining worker closes keep-alive connections"
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(s.log().contains("Shutting down: Master"));
}

#[test]
fn graceful_timeout_bounds_the_stop() {
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .args(["--graceful-timeout", "1"])
        .start();
    let mut c = s.connect();
    c.write_all(b"GET /sleep?30 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    s.wait_for_request_in_flight(Duration::from_secs(10));
    let start = Instant::now();
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        start.elapsed()
    );
}

#[test]
fn int_is_a_quick_stop() {
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .start();
    let workers = s.worker_pids();
    let mut c = s.connect();
    c.write_all(b"GET /sleep?30 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    s.wait_for_request_in_flight(Duration::from_secs(10));
    let start = Instant::now();
    s.signal(libc::SIGINT);
    s.wait_exit(Duration::from_secs(10));
    // Far below the 30 s request and the 30 s graceful time-out.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "quick stop took {:?}",
        start.elapsed()
    );
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z"),
            "worker {pid} survived"
        );
    }
}

#[test]
fn dead_worker_is_replaced() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .start();
    let before = s.worker_pids();
    assert_eq!(before.len(), 2);
    // SAFETY: killing a worker we started.
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let now = s.worker_pids();
            now.len() == 2 && !now.contains(&before[0])
        }),
        "worker not replaced: {:?}",
        s.worker_pids()
    );
    assert_eq!(s.get("/").text(), "ok");
}

#[test]
fn failing_respawns_back_off_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("broken");
    let s = ServerBuilder::new("lifecycle_app:application")
        .env("RGUN_FAIL_MARKER", marker.to_str().unwrap())
        .start();
    std::fs::write(&marker, "x").unwrap();
    let victim = s.worker_pids()[0];
    // SAFETY: killing a worker we started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let failure = "broken deploy: marker file present";
    s.wait_for_log(failure, Duration::from_secs(20));
    let first = s.log().matches(failure).count();
    std::thread::sleep(Duration::from_secs(3));
    let attempts = s.log().matches(failure).count() - first;
    assert!(
        attempts <= 6,
        "{attempts} more boot attempts in 3 s: no back-off"
    );
    assert!(
        s.child_alive(),
        "the master must survive boot failures after start"
    );
    std::fs::remove_file(&marker).unwrap();
    assert!(
        wait_until(Duration::from_secs(40), || s.worker_pids().len() == 1
            && s.log().matches("Booting worker").count() >= 2),
        "no recovery:\n{}",
        s.log()
    );
    let r = s.request(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.text(), "ok");
}

#[test]
fn ttin_and_ttou_change_the_worker_count() {
    let s = ServerBuilder::new("lifecycle_app:application").start();
    s.signal(libc::SIGTTIN);
    // Two signals the master has not yet read would count as one.
    assert!(
        wait_until(Duration::from_secs(10), || s.worker_pids().len() == 2),
        "{:?}",
        s.worker_pids()
    );
    s.signal(libc::SIGTTIN);
    assert!(
        wait_until(Duration::from_secs(10), || s.worker_pids().len() == 3),
        "{:?}",
        s.worker_pids()
    );
    s.signal(libc::SIGTTOU);
    assert!(
        wait_until(Duration::from_secs(10), || s.worker_pids().len() == 2),
        "{:?}",
        s.worker_pids()
    );
}

#[test]
fn max_requests_recycles_workers_without_failed_requests() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["--max-requests", "5"])
        .start();
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = s.request(b"GET /pid HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
        pids.insert(r.text());
    }
    assert!(pids.len() >= 4, "workers were not recycled: {pids:?}");
}

#[test]
fn threads_serve_requests_concurrently() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .args(["--threads", "4"])
        .start();
    // A slow request on one thread does not stall a fast one.
    let mut slow = s.connect();
    slow.write_all(b"GET /sleep?3 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(s.get("/").text(), "ok");
    let fast = start.elapsed();
    assert!(
        fast < Duration::from_secs(2),
        "fast request waited {fast:?} behind the slow one"
    );
    let r = read_response(&mut BufReader::new(slow), false).unwrap();
    assert_eq!(r.text(), "slept");
    // Four sleeping requests overlap instead of queueing: about 2 s with 4 threads,
    // 4 s if one of them had to wait for a thread.
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut c = s.connect();
            c.write_all(b"GET /sleep?2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    for c in clients {
        let r = read_response(&mut BufReader::new(c), false).unwrap();
        assert_eq!(r.text(), "slept");
    }
    let four = start.elapsed();
    assert!(
        four < Duration::from_millis(3500),
        "4 x 2 s sleeps took {four:?} with 4 threads"
    );
}

#[test]
fn hung_request_is_aborted_with_its_stack_logged_and_replaced() {
    hung_request_is_aborted(1);
}

#[test]
fn hung_request_on_a_pool_thread_is_aborted_the_same_way() {
    hung_request_is_aborted(4);
}

/// A request stuck past `--timeout`: its client gets a 500 with `Connection: close`
/// (Gunicorn's answer; not an empty reply), the log names the request and shows the
/// stuck source line, and the master replaces the worker.
fn hung_request_is_aborted(threads: u32) {
    let s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["-t", "2", "--threads", &threads.to_string()])
        .start();
    let before = s.worker_pids();
    let mut hung = s.connect();
    hung.write_all(b"GET /sleep?60 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // Other requests keep succeeding meanwhile (the other worker serves them).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(s.request(b"GET / HTTP/1.0\r\n\r\n").text(), "ok");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.wait_for_log("WORKER TIMEOUT", Duration::from_secs(10));
    hung.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut hung, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 500 ") && answer.contains("Connection: close"),
        "the hung client's answer: {answer:?}"
    );
    // The worker's entry names the request; its stack shows the stuck source line.
    s.wait_for_log(
        "serving GET /sleep?60 for 127.0.0.1",
        Duration::from_secs(10),
    );
    s.wait_for_log("in application", Duration::from_secs(10));
    let log = s.log();
    assert!(log.contains("lifecycle_app.py"), "{log}");
    assert!(
        log.contains("time.sleep(float(environ[\"QUERY_STRING\"]"),
        "no source line in the stack: {log}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let now = s.worker_pids();
            now.len() == 2 && now.iter().filter(|p| before.contains(p)).count() == 1
        }),
        "the hung worker was not replaced: {:?} -> {:?}",
        before,
        s.worker_pids()
    );
}

#[test]
fn usr1_reopens_logs_without_losing_lines() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .start();
    for _ in 0..5 {
        assert_eq!(s.get("/").status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || s
        .access_log()
        .lines()
        .count()
        == 5));
    let rotated = s.dir.path().join("access.log.1");
    std::fs::rename(&s.access_path, &rotated).unwrap();
    std::fs::rename(&s.log_path, s.dir.path().join("error.log.1")).unwrap();
    s.signal(libc::SIGUSR1);
    // Requests after the signal land in the new files, none is lost in between.
    assert!(wait_until(Duration::from_secs(10), || {
        s.get("/");
        s.access_log().lines().count() >= 3
    }));
    let old = std::fs::read_to_string(&rotated).unwrap();
    let total = old.lines().count() + s.access_log().lines().count();
    assert!(old.lines().count() >= 5, "{old}");
    assert!(total >= 8, "lines lost across the rotation: {total}");
    // An existing worker writes to the new error log too.
    let worker = s.worker_pids()[0];
    // SAFETY: stopping a worker we started.
    unsafe { libc::kill(worker, libc::SIGTERM) };
    s.wait_for_log(
        &format!("[{worker}] [INFO] Worker exiting"),
        Duration::from_secs(10),
    );
}

#[test]
fn max_worker_rss_replaces_a_bloated_worker_gracefully() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .args(["--max-worker-rss", "45"])
        .start();
    let before = s.worker_pids();
    assert_eq!(s.get("/grow").text(), "grown");
    // Bounds for a loaded machine (a passing run takes a second or two): the master
    // measures once a second, and the replacement boots a whole interpreter.
    s.wait_for_log(
        "over --max-worker-rss 45 (45 MiB); replacing it",
        Duration::from_secs(60),
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            let now = s.worker_pids();
            now.len() == 1 && now[0] != before[0]
        }),
        "not replaced: {before:?} -> {:?}",
        s.worker_pids()
    );
    for _ in 0..20 {
        assert_eq!(s.request(b"GET / HTTP/1.0\r\n\r\n").text(), "ok");
    }
}

#[test]
fn reload_flag_restarts_workers_when_the_code_changes() {
    let dir = tempfile::tempdir().unwrap();
    let write = |version: &str| {
        let text =
            format!("def application(e, sr):\n    sr('200 OK', [])\n    return [b'{version}']\n");
        let tmp = dir.path().join("live_app.py.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.path().join("live_app.py")).unwrap();
    };
    write("one");
    let s = ServerBuilder::new("live_app:application")
        .args(["--reload", "--chdir", dir.path().to_str().unwrap()])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .start();
    assert_eq!(s.get("/").text(), "one");
    // Modification times have a granularity; make sure the new one differs.
    std::thread::sleep(Duration::from_millis(1100));
    write("two");
    assert!(
        wait_until(Duration::from_secs(15), || s
            .request(b"GET / HTTP/1.0\r\n\r\n")
            .text()
            == "two"),
        "still the old code:\n{}",
        s.log()
    );
    s.assert_log_has("live_app.py modified");
}

#[test]
fn regression_an_app_error_does_not_leave_the_worker_looking_stuck() {
    let s = ServerBuilder::new("pep3333:application")
        .args(["-t", "2"])
        .start();
    let before = s.worker_pids();
    assert_eq!(s.get("/error").status, 500);
    std::thread::sleep(Duration::from_secs(4));
    assert!(!s.log().contains("WORKER TIMEOUT"), "{}", s.log());
    assert_eq!(s.worker_pids(), before);
}

#[test]
fn regression_steady_threaded_traffic_is_not_a_timeout() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let s = ServerBuilder::new("lifecycle_app:application")
        .args(["--threads", "4", "-t", "2"])
        .start();
    let port = s.port;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut failures = 0;
                while !stop.load(Ordering::Relaxed) {
                    let ok = std::net::TcpStream::connect(("127.0.0.1", port))
                        .ok()
                        .and_then(|mut c| {
                            c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                            c.write_all(b"GET /sleep?0.3 HTTP/1.0\r\n\r\n").ok()?;
                            read_response(&mut BufReader::new(c), false)
                        });
                    if ok.map(|r| r.status) != Some(200) {
                        failures += 1;
                    }
                }
                failures
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let failures: i32 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(failures, 0, "{}", s.log());
    assert!(!s.log().contains("WORKER TIMEOUT"), "{}", s.log());
}

#[test]
fn regression_a_flood_of_blank_lines_is_refused() {
    let s = ServerBuilder::new("lifecycle_app:application").start();
    let mut c = s.connect();
    let blank = vec![b'\n'; 8192];
    let _ = c.write_all(&blank);
    let r = read_response(&mut BufReader::new(c), false).expect("an error response");
    assert_eq!(r.status, 400);
    // A couple of blank lines before a request are fine (RFC 9112 2.2).
    assert_eq!(s.request(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n").text(), "ok");
}

#[test]
fn regression_workers_do_not_outlive_a_killed_master() {
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .start();
    let workers = s.worker_pids();
    s.signal(libc::SIGKILL);
    s.wait_exit(Duration::from_secs(5));
    let gone = |p: &i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |st| st.contains(") Z"))
    };
    assert!(
        wait_until(Duration::from_secs(10), || workers.iter().all(gone)),
        "orphaned workers: {workers:?}"
    );
}

#[test]
fn preload_warns_when_the_application_started_threads() {
    // Forking a process with other threads running can deadlock the child on a lock
    // one of them held; Gunicorn-style servers warn, naming the count.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("threaded.py"),
        "import threading, time\n\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n\n\ndef application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n",
    )
    .unwrap();
    let s = ServerBuilder::new("threaded:application")
        .args(["--preload", "--chdir", dir.path().to_str().unwrap()])
        .start();
    assert_eq!(s.get("/").text(), "ok");
    let log = s.log();
    assert!(log.contains("the master has 2 threads"), "{log}");
    // Without threads, no warning.
    let quiet = ServerBuilder::new("lifecycle_app:application")
        .arg("--preload")
        .start();
    assert!(
        !quiet.log().contains("threads (the application"),
        "{}",
        quiet.log()
    );
}
