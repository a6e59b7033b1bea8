//! Handing the service on: systemd's notify messages in order, USR2 starting a new
//! master on the same sockets without a failed request, and USR2 under systemd handing
//! MAINPID to the new master.

use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{read_response, wait_until, Server, ServerBuilder};

#[test]
fn systemd_notify_messages_arrive_in_order() {
    notify_messages_in_order(&[]);
}

/// The same across a `--preload` reload, which re-executes the master in place: the
/// new image goes on notifying (and pinging the watchdog) for the same pid.
#[test]
fn systemd_notify_messages_arrive_in_order_across_a_preload_reload() {
    notify_messages_in_order(&["--preload"]);
}

fn notify_messages_in_order(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .args(args.iter().copied())
        .start();
    let mut messages: Vec<String> = Vec::new();
    let next = |skip_watchdog: bool| loop {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notify message");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if skip_watchdog && m == "WATCHDOG=1" {
            continue;
        }
        return m;
    };
    let ready = next(true);
    assert!(
        ready.starts_with("READY=1\nSTATUS=generation 1, 2 of 2 workers ready"),
        "{ready}"
    );
    assert_eq!(
        next(false),
        "WATCHDOG=1",
        "the watchdog is pinged while workers are ready"
    );
    s.signal(libc::SIGHUP);
    messages.push(next(true));
    messages.push(next(true));
    assert!(
        messages[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{messages:?}"
    );
    assert!(
        messages[1].starts_with("READY=1\nSTATUS=generation 2"),
        "{messages:?}"
    );
    assert_eq!(
        next(false),
        "WATCHDOG=1",
        "the watchdog is still pinged after the reload"
    );
    s.signal(libc::SIGTERM);
    assert_eq!(next(true), "STOPPING=1");
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
}

/// Two clients sending `GET /` on new connections to `port` until `stop`, counting
/// the 200s in `ok` and the rest in `failed`.
fn two_clients_requesting(
    port: u16,
    stop: &Arc<AtomicBool>,
    (ok, failed): (&Arc<AtomicUsize>, &Arc<AtomicUsize>),
) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(stop), Arc::clone(ok), Arc::clone(failed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let answered = std::net::TcpStream::connect(("127.0.0.1", port))
                        .ok()
                        .and_then(|mut c| {
                            c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                            c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                                .ok()?;
                            read_response(&mut BufReader::new(c), false)
                        });
                    match answered {
                        Some(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect()
}

/// The pid of the new master a USR2 to `s` started, once it has written `pidfile` and
/// its two workers are ready (20 s at most).
fn new_master_ready(s: &Server, pidfile: &Path, old_pid: i32) -> i32 {
    let mut found = None;
    wait_until(Duration::from_secs(20), || {
        found = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|p| *p != old_pid);
        found.is_some() && s.log().matches("All 2 workers ready").count() >= 2
    });
    found.expect("a new master wrote the pidfile")
}

#[test]
fn usr2_starts_a_new_master_on_the_same_sockets_without_failed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("rgun.pid");
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .workers(2)
        .args(["-p", pidfile.to_str().unwrap()])
        .start();
    let old_pid = s.pid();
    let port = s.port;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = two_clients_requesting(port, &stop, (&ok, &failed));
    s.signal(libc::SIGUSR2);
    let new_pid = new_master_ready(&s, &pidfile, old_pid);
    let _cleanup = crate::support::KillOnDrop(new_pid);
    assert!(
        std::fs::read_to_string(format!("{}.oldbin", pidfile.display()))
            .unwrap()
            .contains(&old_pid.to_string())
    );
    // The new master owns the control socket now: a HUP to the old one is refused
    // (`lifecycle::decide`), and its workers stay.
    let sorted = |mut pids: Vec<i32>| {
        pids.sort_unstable();
        pids
    };
    let workers = sorted(s.worker_pids());
    s.signal(libc::SIGHUP);
    s.wait_for_log(
        "reload not started: a new master (USR2) is starting or has taken over",
        Duration::from_secs(20),
    );
    assert_eq!(sorted(s.worker_pids()), workers);
    // The old master stops; the new one goes on serving on the same sockets.
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(15)), Some(0));
    let before = ok.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(10), || ok.load(Ordering::Relaxed)
            > before + 20),
        "the new master does not answer"
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    // SAFETY: stopping the master the test caused to exist.
    unsafe { libc::kill(new_pid, libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(10), || !pidfile.exists()),
        "the new master did not stop"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok, some failed\n{}",
        ok.load(Ordering::Relaxed),
        s.log()
    );
}

#[test]
fn usr2_under_systemd_hands_mainpid_to_the_new_master() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let pidfile = dir.path().join("rgun.pid");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .args(["-p", pidfile.to_str().unwrap()])
        .start();
    s.signal(libc::SIGUSR2);
    let mut messages = Vec::new();
    let mainpid = loop {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("notify messages");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Some(rest) = m.strip_prefix("MAINPID=") {
            assert!(rest.contains("\nREADY=1"), "{m}");
            break rest.lines().next().unwrap().trim().parse::<i32>().unwrap();
        }
        messages.push(m);
    };
    let _cleanup = crate::support::KillOnDrop(mainpid);
    assert_ne!(mainpid, s.pid());
    s.wait_for_log(
        &format!("New master {mainpid} is ready"),
        Duration::from_secs(10),
    );
    let _ = messages;
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(15));
    // SAFETY: stopping the master this test caused to exist.
    unsafe { libc::kill(mainpid, libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(10), || !pidfile.exists()));
}
