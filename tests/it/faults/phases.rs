//! The master's state machine (`master/lifecycle.rs`) over real processes: draining
//! refuses what would bring the server back, and a stop answers the reloads waiting.

use std::time::Duration;

use super::{boot_server, reload_in_background, status};
use crate::support::{is_gone, wait_until, write_file, Server, ServerBuilder};

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
    s.assert_log_has("Shutdown delay cut short by a quick stop");
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
