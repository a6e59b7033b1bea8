//! Autoscaling (`--workers-min`/`--workers-max`) against a real server: a burst of
//! keep-alive clients driven from this test adds workers, the clients spread onto them
//! (rebalancing), the idle window brings the count back to the floor, and no request
//! fails on the way; operators pin, resume and move the floor; `status`, `watch`,
//! `history` and `/metrics` show the bounds and the decisions.
//!
//! Worker counts are read from `status` and waited for (bounded); the figures that
//! depend on the machine's speed (how fast the count rose) are printed, not asserted.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{read_response, wait_until, Server, ServerBuilder};

/// The done-when's burst: 32 keep-alive clients for 30 s.
const CLIENTS: usize = 32;
const BURST: Duration = Duration::from_secs(30);

/// What the clients saw.
#[derive(Default)]
struct Outcome {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Responses that closed their connection (`Connection: close`): the client
    /// reconnected.
    closed: AtomicU64,
}

/// Keep-alive clients sending `path` back to back until stopped.
struct Burst {
    stop: Arc<AtomicBool>,
    outcome: Arc<Outcome>,
    threads: Vec<JoinHandle<()>>,
}

impl Burst {
    fn start(port: u16, path: &str) -> Burst {
        let stop = Arc::new(AtomicBool::new(false));
        let outcome = Arc::new(Outcome::default());
        let threads = (0..CLIENTS)
            .map(|_| {
                let (stop, outcome) = (Arc::clone(&stop), Arc::clone(&outcome));
                let ask = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
                std::thread::spawn(move || client(port, &ask, &stop, &outcome))
            })
            .collect();
        Burst {
            stop,
            outcome,
            threads,
        }
    }

    fn finish(self) -> Arc<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
        self.outcome
    }
}

/// One client: a request, its answer, again on the same connection; a new
/// connection when an answer closes it. A request without a complete 200 answer is
/// a failure.
fn client(port: u16, ask: &str, stop: &AtomicBool, outcome: &Outcome) {
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (stream, reader) = match conn.as_mut() {
            Some(c) => c,
            None => {
                let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
                    outcome.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let reader = BufReader::new(s.try_clone().expect("clone"));
                conn.insert((s, reader))
            }
        };
        let answer = stream
            .write_all(ask.as_bytes())
            .ok()
            .and_then(|()| read_response(reader, false));
        match answer {
            Some(r) if r.status == 200 => {
                outcome.ok.fetch_add(1, Ordering::Relaxed);
                if r.header("connection") == Some("close") {
                    outcome.closed.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
            _ => {
                outcome.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// The serving generation's workers that are up (not booting, not leaving), with
/// their connections, oldest first.
fn serving(status: &Value) -> Vec<(i64, u64)> {
    let generation = &status["result"]["master"]["generation"];
    let mut ws: Vec<(f64, i64, u64)> = status["result"]["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter(|w| &w["generation"] == generation)
                .filter(|w| w["state"] == "idle" || w["state"] == "busy")
                .map(|w| {
                    (
                        -w["age_s"].as_f64().unwrap_or(0.0),
                        w["pid"].as_i64().unwrap_or(0),
                        w["connections"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ws.sort_by(|a, b| a.0.total_cmp(&b.0));
    ws.into_iter().map(|(_, p, c)| (p, c)).collect()
}

fn master(status: &Value) -> &Value {
    &status["result"]["master"]
}

/// Runs the done-when's scenario on `server`: idle, the burst on `path`, idle until the
/// floor again. Returns the log of what was seen, for the assertions' messages.
fn burst_scenario(server: &Server, path: &str) {
    let status = server.status();
    let m = master(&status);
    assert_eq!(m["workers_min"], 1, "{status}");
    assert_eq!(m["workers_max"], 6, "{status}");
    assert_eq!(m["autoscale"], "on", "{status}");
    assert_eq!(serving(&status).len(), 1, "idle at the floor: {status}");

    let started = Instant::now();
    let burst = Burst::start(server.port, path);
    let mut four_after = None;
    let mut spread = None;
    let mut most = 0;
    while started.elapsed() < BURST {
        let status = server.status();
        let up = serving(&status);
        most = most.max(up.len());
        if up.len() >= 4 && four_after.is_none() {
            four_after = Some(started.elapsed());
        }
        // A few seconds after the scale-up, where the connections are.
        if let Some(at) = four_after {
            if spread.is_none() && started.elapsed() >= at + Duration::from_secs(3) {
                spread = Some(up.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcome = burst.finish();
    let ended = Instant::now();
    println!(
        "burst on {path}: 4 workers after {four_after:?}, at most {most}; connections per worker (oldest first, 3 s later): {spread:?}; {} ok, {} failed, {} closed by rebalancing or retiring",
        outcome.ok.load(Ordering::Relaxed),
        outcome.failed.load(Ordering::Relaxed),
        outcome.closed.load(Ordering::Relaxed)
    );
    assert!(
        most >= 4,
        "at most {most} workers during the burst; log:\n{}",
        server.log()
    );
    let spread = spread.expect("observed 3 s after reaching 4 workers");
    let newest = spread.last().expect("workers");
    assert!(
        spread.iter().filter(|(_, c)| *c > 0).count() >= 3,
        "the clients stayed where they were: {spread:?}"
    );
    assert!(
        newest.1 > 0,
        "the newest worker holds no client: {spread:?}"
    );

    // Idle: back to the floor within the idle window (5 s here) and its settling.
    let mut last = Value::Null;
    let floor = wait_until(Duration::from_secs(60), || {
        last = server.status();
        master(&last)["workers_target"] == 1 && serving(&last).len() == 1
    });
    assert!(
        floor,
        "not back to 1 worker: {last}\nlog:\n{}",
        server.log()
    );
    println!("back to 1 worker {:?} after the burst", ended.elapsed());
    let d = &master(&last)["last_decision"];
    assert_eq!(d["direction"], "down", "{last}");
    assert_eq!(d["to"], 1, "{last}");
    assert!(
        d["reason"].as_str().unwrap_or("").contains("busy for 5 s"),
        "{last}"
    );
    assert_eq!(
        outcome.failed.load(Ordering::Relaxed),
        0,
        "failed requests; log:\n{}",
        server.log()
    );
    assert!(outcome.ok.load(Ordering::Relaxed) > 0);
}

/// `app` starting with one worker, autoscaled between 1 and `max` workers, one idle
/// for `idle` seconds retired.
fn autoscaled(app: &str, max: &str, idle: &str) -> ServerBuilder {
    ServerBuilder::new(app)
        .workers(1)
        .args(["--workers-min", "1", "--workers-max", max])
        .args(["--workers-idle", idle])
}

#[test]
fn a_sync_burst_adds_workers_spreads_clients_and_returns_to_the_floor() {
    let server = autoscaled("lifecycle_app:application", "6", "5")
        .args(["--keep-alive", "30"])
        .start();
    burst_scenario(&server, "/sleep?0.02");
    let log = server.log();
    assert!(log.contains("Autoscaling up from 1 to"), "{log}");
    assert!(log.contains("Rebalancing"), "{log}");
}

#[test]
fn an_asgi_burst_whose_handler_blocks_the_loop_adds_workers() {
    let server = autoscaled("asgi_app:app", "6", "5")
        .args(["-k", "asgi", "--keep-alive", "30"])
        .start();
    burst_scenario(&server, "/block?0.005");
}

/// One control request on a fresh connection; its answer line.
fn control(server: &Server, request: &str) -> Value {
    let mut c = UnixStream::connect(&server.ctl_path).expect("control socket");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    c.write_all(b"\n").unwrap();
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn operators_pin_resume_and_move_the_floor_and_every_view_shows_it() {
    let server = autoscaled("lifecycle_app:application", "4", "1").start();
    // A watcher from the start.
    let mut watch = UnixStream::connect(&server.ctl_path).unwrap();
    watch.write_all(b"{\"id\":1,\"cmd\":\"watch\"}\n").unwrap();
    let events = BufReader::new(watch.try_clone().unwrap());

    // `scale 3` pins: paused, and 3 workers stay though they are idle past the window.
    let answer = control(&server, r#"{"id":2,"cmd":"scale","workers":3,"wait":true}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    let status = server.status();
    assert_eq!(master(&status)["autoscale"], "paused", "{status}");
    std::thread::sleep(Duration::from_secs(3));
    let status = server.status();
    assert_eq!(master(&status)["workers_target"], 3, "pinned: {status}");
    assert!(master(&status).get("last_decision").is_none(), "{status}");

    // `scale auto`: the idle workers go, down to the floor.
    let answer = control(&server, r#"{"id":3,"cmd":"scale","auto":true}"#);
    assert_eq!(answer["result"]["autoscale"], "on", "{answer}");
    let mut last = Value::Null;
    let floor = wait_until(Duration::from_secs(30), || {
        last = server.status();
        master(&last)["workers_target"] == 1
    });
    assert!(floor, "{last}");
    assert_eq!(
        master(&last)["last_decision"]["direction"],
        "down",
        "{last}"
    );

    // TTIN raises the floor, and the target with it.
    server.signal(libc::SIGTTIN);
    let raised = wait_until(Duration::from_secs(10), || {
        last = server.status();
        master(&last)["workers_min"] == 2 && master(&last)["workers_target"] == 2
    });
    assert!(raised, "{last}");

    // History and /metrics carry the decisions.
    let history = control(&server, r#"{"id":4,"cmd":"history"}"#);
    let triggers: Vec<&str> = history["result"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["trigger"].as_str())
        .collect();
    assert!(
        triggers.iter().any(|t| t.starts_with("autoscale: ")),
        "{history}"
    );
    let metrics = control(&server, r#"{"id":5,"cmd":"metrics"}"#);
    let text = metrics["result"]["text"].as_str().unwrap();
    for line in [
        "rgun_workers_min 2",
        "rgun_workers_max 4",
        "rgun_workers_target 2",
        "rgun_autoscale_paused 0",
        "rgun_autoscale_decisions_total{direction=\"down\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }

    // The watcher saw the pause, the resume and the decision.
    let seen = read_events_until(events, |e| {
        e["event"] == "scale"
            && e["trigger"]
                .as_str()
                .is_some_and(|t| t.starts_with("autoscale: "))
    });
    assert!(
        seen.iter()
            .any(|e| e["event"] == "autoscale" && e["state"] == "paused"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| e["event"] == "autoscale" && e["state"] == "on"),
        "{seen:?}"
    );

    // `rgunctl status` says it in words.
    let out = std::process::Command::new(crate::support::rgunctl_bin())
        .args(["-s"])
        .arg(&server.ctl_path)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("autoscale on  floor 2  ceiling 4  target 2; last down 3 -> 1"),
        "{text}"
    );
}

/// Event lines until one matches `done` (bounded by the socket's read time-out).
fn read_events_until(
    mut events: BufReader<UnixStream>,
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    events
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    let mut line = String::new();
    while events.read_line(&mut line).is_ok_and(|n| n > 0) {
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        line.clear();
        let end = done(&v);
        seen.push(v);
        if end {
            break;
        }
    }
    seen
}
