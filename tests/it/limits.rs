//! `--worker-connections`: a worker at its limit leaves new clients in the kernel's
//! backlog (they are not reset), does not spin on the listener while it waits, and
//! takes them as soon as a connection closes.

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use crate::support::{read_response, ServerBuilder};

/// User plus system CPU time of a process, in clock ticks (/proc/PID/stat).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

#[test]
fn a_full_worker_waits_for_room_without_spinning() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .args(["--worker-connections", "1", "--threads", "2"])
        .start();
    let worker = s.worker_pids()[0];
    // The one connection the worker may hold, away on a pool thread inside a request:
    // it cannot be evicted to make room, and the event loop stays free to run.
    let mut first = s.connect();
    first
        .write_all(b"GET /sleep?4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.wait_for_request_in_flight(Duration::from_secs(10));
    // The second waits in the backlog; a worker that kept trying to accept it would
    // burn a CPU meanwhile.
    let mut second = s.connect();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(worker);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(worker) - before;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used < per_second / 5,
        "a full worker used {used} ticks of CPU in 2 s ({per_second}/s): it spins on the listener"
    );
    // The first request completes and its connection closes: room for the second.
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = read_response(&mut BufReader::new(first), false).expect("first answered");
    assert_eq!(r.text(), "slept");
    let started = Instant::now();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = read_response(&mut BufReader::new(second), false).expect("second answered");
    assert_eq!(r.text(), "ok");
    println!(
        "full worker: {used} ticks in 2 s while full; second client answered {:?} after room",
        started.elapsed()
    );
}
