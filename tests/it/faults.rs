//! Faults injected into a running server (issue 25): a worker out of descriptors, a
//! boot killed by a signal, a crash after serving, a stopped worker. Each test pins
//! what the server does and what the operator sees (log lines, `status`, metrics).

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{read_response, rgunctl_bin, wait_until, Server, ServerBuilder};

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
