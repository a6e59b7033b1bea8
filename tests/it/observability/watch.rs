//! `rgunctl watch`: the events of a scale and a reload as they happen, as JSON lines
//! (`--json`) and as sentences.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::observed;
use crate::support::{ctl, rgunctl_bin, KillOnDrop, Server};

/// A running `rgunctl watch` and the lines it prints.
struct Watcher {
    lines: Receiver<String>,
    seen: Vec<String>,
    _process: KillOnDrop,
}

impl Watcher {
    fn start(server: &Server, json: bool) -> Watcher {
        let mut cmd = Command::new(rgunctl_bin());
        cmd.arg("-s").arg(&server.ctl_path);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .arg("watch")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run rgunctl watch");
        let stdout = child.stdout.take().unwrap();
        let process = KillOnDrop(child.id() as i32);
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
            let _ = child.wait();
        });
        let mut w = Watcher {
            lines: rx,
            seen: Vec::new(),
            _process: process,
        };
        w.wait_for(|l| l.contains("watching"), Duration::from_secs(10));
        w
    }

    /// Reads lines until one satisfies `f` (panics with what it saw after `limit`).
    fn wait_for(&mut self, f: impl Fn(&str) -> bool, limit: Duration) {
        if self.seen.iter().any(|l| f(l)) {
            return;
        }
        let start = Instant::now();
        while let Some(left) = limit.checked_sub(start.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = f(&line);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "not seen within {limit:?}; rgunctl watch printed:\n{}",
            self.seen.join("\n")
        );
    }

    fn events(&self) -> Vec<Value> {
        self.seen
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// `rgunctl ARGS`, which must succeed.
fn ctl_ok(server: &Server, args: &[&str]) {
    ctl(server, args).assert_ok(&format!("rgunctl {args:?}"));
}

fn is(event: &Value, name: &str) -> bool {
    event["event"] == name
}

#[test]
fn watch_prints_spawn_ready_exit_and_reload_events() {
    let server = observed(1, &[]);
    let mut json = Watcher::start(&server, true);
    let mut human = Watcher::start(&server, false);

    ctl_ok(&server, &["scale", "2", "--wait"]);
    ctl_ok(&server, &["reload"]);
    let ten = Duration::from_secs(10);
    // The old generation's two workers leave after the new one serves.
    let exited_for_reload = |l: &str| l.contains("\"worker_exited\"") && l.contains("\"reload\"");
    json.wait_for(
        |l| l.contains("\"reload_finished\""),
        Duration::from_secs(60),
    );
    json.wait_for(exited_for_reload, ten);
    let events = json.events();
    let count = |name: &str, f: &dyn Fn(&Value) -> bool| {
        events.iter().filter(|e| is(e, name) && f(e)).count()
    };
    assert_eq!(events[0]["event"], "watching", "{events:#?}");
    assert_eq!(events[0]["workers_target"], 1);
    let scale = events
        .iter()
        .find(|e| is(e, "scale"))
        .expect("a scale event");
    assert_eq!(
        (scale["previous"].as_u64(), scale["target"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(
        scale["trigger"].as_str().unwrap().starts_with("ctl uid"),
        "{scale}"
    );
    assert_eq!(
        count("worker_spawned", &|e| e["generation"] == 1),
        1,
        "{events:#?}"
    );
    assert_eq!(
        count("worker_ready", &|e| e["generation"] == 1),
        1,
        "{events:#?}"
    );
    let started = events
        .iter()
        .find(|e| is(e, "reload_started"))
        .expect("reload_started");
    assert_eq!(started["generation"], 2);
    assert_eq!(started["previous_generation"], 1);
    assert_eq!(
        count("worker_spawned", &|e| e["generation"] == 2),
        2,
        "{events:#?}"
    );
    assert_eq!(
        count("worker_ready", &|e| e["generation"] == 2),
        2,
        "{events:#?}"
    );
    let finished = events
        .iter()
        .position(|e| is(e, "reload_finished"))
        .unwrap();
    assert_eq!(events[finished]["generation"], 2);
    assert!(events[finished]["duration_ms"].is_u64());
    // Ready before finished; the old workers exit after it, with the reason.
    let last_ready = events.iter().rposition(|e| is(e, "worker_ready")).unwrap();
    assert!(last_ready < finished, "{events:#?}");
    let exit = events.iter().rposition(|e| is(e, "worker_exited")).unwrap();
    assert!(exit > finished, "{events:#?}");
    assert_eq!(events[exit]["generation"], 1);
    assert_eq!(events[exit]["code"], 0);
    for e in &events {
        assert!(e["time"].as_f64().is_some_and(|t| t > 1.6e9), "{e}");
    }

    human.wait_for(|l| l.contains("reload finished: generation 2 serves"), ten);
    human.wait_for(|l| l.contains("workers 1 -> 2 (ctl uid"), ten);
    human.wait_for(
        |l| l.contains("exited: reload (exit code 0, generation 1)"),
        ten,
    );

    // USR1's twin over the control socket.
    ctl_ok(&server, &["reopen-logs"]);
    json.wait_for(|l| l.contains("\"logs_reopened\""), ten);
}

#[test]
fn a_watcher_that_half_closed_still_gets_events_and_a_stalled_one_costs_nothing() {
    use std::io::{BufRead, Write};
    let server = observed(1, &[]);
    // As `echo '{"cmd":"watch"}' | socat - UNIX-CONNECT:...` does: send, then shut
    // the writing side.
    let mut raw = std::os::unix::net::UnixStream::connect(&server.ctl_path).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    raw.write_all(b"{\"id\":1,\"cmd\":\"watch\"}\n").unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let mut lines = BufReader::new(raw).lines();
    let ack: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ack["ok"], true, "{ack}");
    // A subscriber that never reads.
    let stalled = std::os::unix::net::UnixStream::connect(&server.ctl_path).unwrap();
    (&stalled)
        .write_all(b"{\"id\":1,\"cmd\":\"watch\"}\n")
        .unwrap();
    for n in ["2", "1", "2", "1"] {
        ctl_ok(&server, &["scale", n, "--wait"]);
    }
    let mut scales = 0;
    while scales < 4 {
        let line = lines.next().expect("an event").unwrap();
        let e: Value = serde_json::from_str(&line).unwrap();
        if e["event"] == "scale" {
            scales += 1;
        }
    }
    assert_eq!(server.status()["ok"], true);
    drop(stalled);
}
