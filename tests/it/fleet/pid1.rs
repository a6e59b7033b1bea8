//! rgun as PID 1 of a container (`unshare --pid --fork --mount-proc`, as root): an
//! orphan the application leaves behind is re-parented to the master and reaped
//! quietly — never logged as a failed worker, never a reason to stop or respawn.

use std::time::Duration;

use crate::support::{children_of, running_as_root, wait_until, ServerBuilder};

#[test]
fn an_orphaned_grandchild_exiting_3_is_reaped_quietly_by_rgun_as_pid_1() {
    if !running_as_root("an_orphaned_grandchild_exiting_3_is_reaped_quietly_by_rgun_as_pid_1") {
        return;
    }
    let server = ServerBuilder::new("orphan_app:application")
        .workers(2)
        .args(["--log-level", "debug"])
        .wrapped_in(&["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .start();
    // The master is PID 1 in its namespace: a worker's parent is 1.
    assert_eq!(server.get("/ppid").text(), "1");
    let unshare = server.pid();
    let master = children_of(unshare)[0];
    let workers_before = children_of(master);
    for _ in 0..4 {
        assert_eq!(server.get("/orphan").text(), "orphaned");
    }
    // Each grandchild exits with 3 a moment later; the master reaps it.
    let reaped = wait_until(Duration::from_secs(10), || {
        server
            .log()
            .matches(", not a worker (Some(3), None)")
            .count()
            >= 4
    });
    let log = server.log();
    assert!(reaped, "{log}");
    assert!(!log.contains("exited with code 3"), "{log}");
    assert!(!log.contains("Worker failed early"), "{log}");
    assert!(!log.contains("Shutting down"), "{log}");
    assert_eq!(server.get("/").status, 200);
    assert_eq!(children_of(master), workers_before);
    // No zombie is left behind in the namespace.
    let zombies: Vec<i32> = children_of(master)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    // TERM to the namespace's PID 1 is a graceful stop.
    // SAFETY: signalling the master this test started.
    unsafe { libc::kill(master, libc::SIGTERM) };
    let stopped = wait_until(Duration::from_secs(30), || {
        server.log().contains("Shutting down: Master")
    });
    assert!(stopped, "{}", server.log());
}
