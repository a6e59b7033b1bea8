//! Slow-client immunity: hostile or merely slow clients must not stop one worker with one
//! thread from answering an honest client promptly, and must not cost unbounded memory.
//!
//! Every test runs `tests/apps/hostile_app.py` with one worker, under `--threads 1`,
//! again under `--threads 4`, and once more with every one of Gunicorn's lenient-parsing
//! switches on (`Mode::lenient`), so a single
//! connection that managed to hold the worker would show up as an honest request that
//! waits (we assert < 3 s, a bound that tolerates a loaded CI machine yet is far below
//! how long the hostile clients keep going, and print the latency). Covered:
//! - slowloris: 60 connections dribbling a request head byte by byte (and again with
//!   Gunicorn's lenient-parsing switches on, the heads folded);
//! - a 100 KB POST body dribbled a few KB at a time, which must still arrive intact;
//! - 3,000 idle connections (more than `--worker-connections`' default of 1000);
//! - a 200 MiB streamed upload, hashed by the app in `read(65536)` pieces, with the
//!   master's and worker's RSS sampled every 50 ms (growth must stay < 64 MiB);
//! - a client that pipelines 300 slow requests at once: the worker serves one request
//!   per connection per turn, so an honest request is answered before the pipeline ends;
//! - clients that vanish in the middle of a large streamed response: the iterable's
//!   `close()` must be called and the worker must keep serving.
//!
//! All loops are bounded in time; every socket has read/write time-outs. The clients
//! that are heavy rather than slow (the upload, the vanishing streams, the pipeline)
//! are in `heavy`.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::{read_response, Server, ServerBuilder};

/// The bound an honest request must be answered within, whatever the other clients do.
const HONEST_LIMIT: Duration = Duration::from_secs(3);

/// Gunicorn's lenient-parsing switches, all of them.
const LENIENT: [&str; 5] = [
    "--permit-obsolete-folding",
    "--strip-header-spaces",
    "--permit-unconventional-http-method",
    "--casefold-http-method",
    "--permit-unconventional-http-version",
];

/// How a scenario's server runs: its `--threads`, and whether every lenient-parsing
/// switch is on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mode {
    pub threads: u32,
    pub lenient: bool,
}

impl Mode {
    /// `hostile_app` with one worker in this mode.
    fn builder(self) -> ServerBuilder {
        let builder = ServerBuilder::new("hostile_app:application")
            .workers(1)
            .args(["--threads", &self.threads.to_string()]);
        if self.lenient {
            builder.args(LENIENT)
        } else {
            builder
        }
    }
}

fn start(mode: Mode) -> Server {
    mode.builder().start()
}

/// Each scenario runs three times: with `--threads 1` (the application on the event
/// loop's thread), with `--threads 4` (a pool of Python threads beside the loop), and
/// with `--threads 1` and every lenient-parsing switch on (no switch may cost the
/// server its immunity).
macro_rules! both_thread_modes {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Mode;
            #[test]
            fn threads_1() {
                super::$scenario(Mode { threads: 1, lenient: false })
            }
            #[test]
            fn threads_4() {
                super::$scenario(Mode { threads: 4, lenient: false })
            }
            #[test]
            fn lenient_switches_on() {
                super::$scenario(Mode { threads: 1, lenient: true })
            }
        }
    )*};
}

mod heavy;
mod readers;

/// One honest `GET /ping` on a fresh connection; returns how long it took end to end
/// (connect, send, full response).
pub(super) fn honest_ping(server: &Server) -> Duration {
    let started = Instant::now();
    let mut s = server.connect();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send honest request");
    let resp = read_response(&mut BufReader::new(s), false).unwrap_or_else(|| {
        panic!(
            "no response to the honest request after {:?}; log:\n{}",
            started.elapsed(),
            server.log()
        )
    });
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "honest request: {}", resp.text());
    assert_eq!(resp.body, b"pong");
    took
}

/// Several honest requests; each must beat `HONEST_LIMIT`. Returns the slowest.
fn honest_pings(server: &Server, what: &str, n: usize, gap: Duration) -> Duration {
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let took = honest_ping(server);
        println!("{what}: honest GET #{i} answered in {took:?}");
        assert!(
            took < HONEST_LIMIT,
            "{what}: honest request #{i} took {took:?} (limit {HONEST_LIMIT:?})"
        );
        worst = worst.max(took);
        thread::sleep(gap);
    }
    worst
}

/// The SHA-256 of `data` in lowercase hex, as the app's `/digest` reports it.
fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes (xorshift64*), produced a chunk at a time so that
/// large uploads are never held in memory by the test.
struct ByteGen(u64);

impl ByteGen {
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
    }
}

/// Parses the app's `/digest` answer: "<length> <sha256 hex> <pieces>".
fn parse_digest(text: &str) -> (u64, String, u64) {
    let mut it = text.split_whitespace();
    let len = it
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad digest answer {text:?}"));
    let hex = it
        .next()
        .unwrap_or_else(|| panic!("bad digest answer {text:?}"))
        .to_owned();
    let pieces = it
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad digest answer {text:?}"));
    (len, hex, pieces)
}

// ---------------------------------------------------------------------------------------

/// 60 slowloris connections keep a request head open by dribbling one header byte per
/// connection every ~150 ms; the honest client is still answered in under a second, and
/// afterwards every slowloris connection, once it completes its head, is served too
/// (which proves the server really held them open the whole time).
fn slowloris_heads_do_not_block_honest_requests(mode: Mode) {
    slowloris(start(mode), b"\r\nConnection: close\r\n\r\n");
}

/// The same with Gunicorn's lenient-parsing switches all on, the slow heads folded:
/// each goes through the lenient path once complete, and is served.
#[test]
fn slowloris_with_every_lenient_switch_on() {
    let server = start(Mode {
        threads: 1,
        lenient: true,
    });
    slowloris(server, b"\r\n  folded\r\nConnection : close\r\n\r\n");
}

fn slowloris(server: Server, finish: &'static [u8]) {
    const SLOW: usize = 60;
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut s = server.connect();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .expect("send partial head");
            s
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let dribbled = Arc::new(AtomicUsize::new(0));
    let dribbler = {
        let (stop, dribbled) = (Arc::clone(&stop), Arc::clone(&dribbled));
        thread::spawn(move || {
            // Bounded: at most 10 s of dribbling, whatever happens in the main thread.
            let started = Instant::now();
            let mut failures = Vec::new();
            let mut round = 0u32;
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(10) {
                for (i, s) in slow.iter_mut().enumerate() {
                    if let Err(e) = s.write_all(b"a") {
                        failures.push(format!("connection {i}, round {round}: {e}"));
                    }
                }
                dribbled.fetch_add(1, Ordering::SeqCst);
                round += 1;
                thread::sleep(Duration::from_millis(100 + u64::from(round % 3) * 50));
            }
            (slow, failures)
        })
    };

    // Let the dribbling get going, then measure honest requests while it goes on.
    let started = Instant::now();
    while dribbled.load(Ordering::SeqCst) < 3 && started.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
    let rounds_before = dribbled.load(Ordering::SeqCst);
    let worst = honest_pings(&server, "slowloris", 5, Duration::from_millis(200));
    let rounds_after = dribbled.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let (mut slow, failures) = dribbler.join().expect("dribbler thread");
    println!("slowloris: {SLOW} connections, {rounds_after} dribble rounds, worst honest latency {worst:?}");
    assert!(
        rounds_before >= 3 && rounds_after > rounds_before,
        "the dribbling was not under way ({rounds_before} -> {rounds_after})"
    );
    assert!(
        failures.is_empty(),
        "the server dropped slowloris connections early: {failures:?}"
    );

    // Now complete every slowloris head: each must get its answer.
    for s in &mut slow {
        s.write_all(finish).expect("finish the slow head");
    }
    for (i, s) in slow.into_iter().enumerate() {
        let resp = read_response(&mut BufReader::new(s), false).unwrap_or_else(|| {
            panic!(
                "slowloris connection {i} got no response; log:\n{}",
                server.log()
            )
        });
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, &b"pong"[..]),
            "slowloris connection {i}"
        );
    }
}

/// A 100 KB POST body dribbled 4 KB at a time: honest requests are answered meanwhile,
/// and the slow upload then arrives intact (length and SHA-256 checked by the app).
fn slow_post_body_does_not_block_honest_requests(mode: Mode) {
    const BODY: usize = 100 * 1024;
    const PIECE: usize = 4 * 1024;
    let server = start(mode);
    let mut body = vec![0u8; BODY];
    ByteGen(0x5eed_0001).fill(&mut body);
    let want = sha256_hex(&body);

    let mut s = server.connect();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("POST /digest HTTP/1.1\r\nHost: localhost\r\nContent-Length: {BODY}\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("send head");
    let done = Arc::new(AtomicBool::new(false));
    let pinged = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let uploader = {
        let (done, pinged, sent) = (Arc::clone(&done), Arc::clone(&pinged), Arc::clone(&sent));
        let mut w = s.try_clone().unwrap();
        thread::spawn(move || {
            // 25 pieces, 100 ms apart; the last one only once the honest requests are
            // done (bounded), so they are measured while the body is still arriving
            // however slowly this machine runs them.
            let pieces = body.chunks(PIECE).count();
            for (i, piece) in body.chunks(PIECE).enumerate() {
                if i + 1 == pieces {
                    let waited = Instant::now();
                    while !pinged.load(Ordering::SeqCst)
                        && waited.elapsed() < Duration::from_secs(30)
                    {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
                w.write_all(piece).expect("dribble a body piece");
                sent.fetch_add(piece.len(), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    thread::sleep(Duration::from_millis(400));
    let worst = honest_pings(&server, "slow body", 5, Duration::from_millis(150));
    let sent_at_end = sent.load(Ordering::SeqCst);
    pinged.store(true, Ordering::SeqCst);
    assert!(
        !done.load(Ordering::SeqCst) && sent_at_end > 0 && sent_at_end < BODY,
        "the honest requests were not measured while the body was still arriving ({sent_at_end} of {BODY} bytes sent)"
    );
    uploader.join().expect("uploader thread");

    let started = Instant::now();
    let resp = read_response(&mut BufReader::new(s), false)
        .unwrap_or_else(|| panic!("no response to the slow upload; log:\n{}", server.log()));
    assert_eq!(resp.status, 200, "slow upload: {}", resp.text());
    let (len, hex, _) = parse_digest(&resp.text());
    println!(
        "slow body: worst honest latency {worst:?}; upload answered {:?} after its last byte",
        started.elapsed()
    );
    assert_eq!(len, BODY as u64, "body length seen by the app");
    assert_eq!(hex, want, "body SHA-256 seen by the app");
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit; returns the limit.
pub(crate) fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim),
            0,
            "getrlimit"
        );
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
            0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
    }
    lim.rlim_cur
}

/// 3,000 connections that connect and send nothing (three times the default
/// `--worker-connections`): an honest request is still answered within `HONEST_LIMIT`.
fn three_thousand_idle_connections_do_not_block_honest_requests(mode: Mode) {
    const IDLE: usize = 3000;
    let limit = raise_nofile();
    assert!(
        limit >= IDLE as u64 + 200,
        "RLIMIT_NOFILE hard limit is {limit}: too low to hold {IDLE} client sockets (raise it with ulimit -Hn)"
    );
    let server = start(mode);
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    let mut slowest = Duration::ZERO;
    for i in 0..IDLE {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {i} idle connections opened in 20 s"
        );
        // Paced, so the test's connects do not outrun the worker's accept loop by the
        // whole backlog (an overflow costs a 1 s SYN retransmit per connection).
        if i % 50 == 49 {
            thread::sleep(Duration::from_millis(10));
        }
        let t = Instant::now();
        idle.push(server.connect());
        slowest = slowest.max(t.elapsed());
    }
    let opened_in = started.elapsed();
    // Give the worker a moment to accept everything in its backlog.
    thread::sleep(Duration::from_millis(300));
    let worst = honest_pings(&server, "3000 idle", 3, Duration::from_millis(100));

    // Informational: how many idle sockets the server has closed (evicted) so far.
    let mut closed = 0;
    for s in &idle {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match (&*s).read(&mut b) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(_) => panic!("an idle connection received data"),
            Err(_) => closed += 1,
        }
    }
    println!("3000 idle: opened in {opened_in:?} (slowest connect {slowest:?}); worst honest latency {worst:?}; {closed} of {IDLE} idle sockets closed by the server");
    drop(idle);
    // The worker is still healthy once the crowd is gone.
    let took = honest_ping(&server);
    assert!(took < HONEST_LIMIT, "after the idle crowd left: {took:?}");
}

both_thread_modes!(
    slowloris_heads_do_not_block_honest_requests,
    slow_post_body_does_not_block_honest_requests,
    three_thousand_idle_connections_do_not_block_honest_requests
);
