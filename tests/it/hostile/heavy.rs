//! Clients that are heavy rather than slow: a 200 MiB upload (bounded memory), clients
//! that vanish in the middle of a large streamed response (`close()` is called), and a
//! client that pipelines 300 requests (one request per turn of the loop).

use std::io::{BufReader, ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{hex, honest_ping, parse_digest, sha256_hex, start, ByteGen, Mode, HONEST_LIMIT};
use crate::support::{read_response, rss_bytes, Server};

/// Sums the RSS of the given pids.
fn rss_sum(pids: &[i32]) -> u64 {
    pids.iter().map(|&p| rss_bytes(p)).sum()
}

/// A 200 MiB upload streamed from a generator arrives intact (length and SHA-256 from
/// the app's `read(65536)` loop) while master + worker RSS grows by less than 64 MiB.
fn huge_upload_is_streamed_with_bounded_memory(mode: Mode) {
    const TOTAL: u64 = 200 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    const MAX_GROWTH: u64 = 64 * 1024 * 1024;
    let server = start(mode);
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 1, "expected one worker, got {workers:?}");
    let mut pids = vec![server.pid()];
    pids.extend(&workers);

    // Warm up the paths involved (spill file, hashlib) with a 2 MiB upload.
    let mut warm = vec![0u8; 2 * 1024 * 1024];
    ByteGen(7).fill(&mut warm);
    let mut raw = format!("POST /digest HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", warm.len()).into_bytes();
    raw.extend_from_slice(&warm);
    let resp = server.request(&raw);
    assert_eq!(
        parse_digest(&resp.text()).1,
        sha256_hex(&warm),
        "warm-up upload"
    );
    drop((warm, raw));
    thread::sleep(Duration::from_millis(200));
    let before = rss_sum(&pids);
    assert!(before > 0, "cannot read RSS of {pids:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, pids) = (Arc::clone(&stop), pids.clone());
        thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0u32);
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(150) {
                peak = peak.max(rss_sum(&pids));
                samples += 1;
                thread::sleep(Duration::from_millis(50));
            }
            (peak, samples)
        })
    };

    let started = Instant::now();
    let mut s = server.connect();
    // Generous: memory and integrity are what is checked here, not speed (a debug
    // build on a loaded machine).
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("POST /digest HTTP/1.1\r\nHost: localhost\r\nContent-Length: {TOTAL}\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("send head");
    let mut gen = ByteGen(0xdead_beef);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = TOTAL;
    while left > 0 {
        let n = (left as usize).min(CHUNK);
        gen.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        s.write_all(&buf[..n]).unwrap_or_else(|e| {
            panic!(
                "upload failed with {left} bytes left: {e}; log:\n{}",
                server.log()
            )
        });
        left -= n as u64;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "upload too slow: {left} bytes left after {:?}",
            started.elapsed()
        );
    }
    let sent_in = started.elapsed();
    let want = hex(&hasher.finalize());
    let resp = read_response(&mut BufReader::new(s), false)
        .unwrap_or_else(|| panic!("no response to the 200 MiB upload; log:\n{}", server.log()));
    let answered_in = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (peak, samples) = sampler.join().expect("sampler thread");

    assert_eq!(resp.status, 200, "upload: {}", resp.text());
    let (len, hex, pieces) = parse_digest(&resp.text());
    let growth = peak.saturating_sub(before);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "200 MiB upload: sent in {sent_in:?}, answered in {answered_in:?}; RSS master+worker before {:.1} MiB, \
         peak {:.1} MiB ({samples} samples), growth {:.1} MiB; app read {pieces} pieces",
        mib(before),
        mib(peak),
        mib(growth)
    );
    assert_eq!(len, TOTAL, "length seen by the app");
    assert_eq!(hex, want, "SHA-256 seen by the app");
    assert!(
        pieces >= TOTAL / 65536,
        "the app read the body in {pieces} pieces, expected >= {}",
        TOTAL / 65536
    );
    assert!(
        samples >= 5,
        "too few RSS samples ({samples}) to judge memory"
    );
    assert!(
        growth < MAX_GROWTH,
        "server RSS grew by {:.1} MiB during the upload (limit 64 MiB)",
        mib(growth)
    );
}

/// What the app recorded about one `/stream` response.
fn stream_record(server: &Server, tag: &str) -> Option<serde_json::Value> {
    let list = server.get("/closed").json();
    list.as_array()
        .expect("a list")
        .iter()
        .find(|r| r["tag"] == tag)
        .cloned()
}

/// Waits (bounded) until the `/stream` response tagged `tag` has had `close()` called.
pub(super) fn wait_closed(server: &Server, tag: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let rec = stream_record(server, tag);
        if let Some(r) = &rec {
            if r["closed"] == true {
                println!(
                    "abandoned stream {tag}: close() seen after {:?}: {r}",
                    started.elapsed()
                );
                return r.clone();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "close() of the {tag} iterable not called within 5 s (record {rec:?}); log:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Clients that send a request and vanish before reading a large streamed response
/// (256 MiB, far more than socket buffers hold): the worker notices, calls the
/// iterable's `close()` without producing the whole body, and keeps serving.
fn client_gone_mid_stream_closes_iterable_and_server_keeps_serving(mode: Mode) {
    const CHUNKS: u64 = 4096; // 64 KiB each: 256 MiB
    let server = start(mode);

    // 1. Reads the head and a little of the body, then closes (unread data: RST).
    let mut s = server.connect();
    s.write_all(
        format!("GET /stream?n={CHUNKS}&tag=partial HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut first = [0u8; 4096];
    s.read_exact(&mut first)
        .expect("the start of the streamed response");
    assert!(
        first.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..64])
    );
    thread::sleep(Duration::from_millis(200));
    drop(s);
    let rec = wait_closed(&server, "partial");
    assert!(
        rec["produced"].as_u64().unwrap() < CHUNKS,
        "the whole body was produced for a client that left: {rec}"
    );

    // 2. Sends the request and closes at once, reading nothing.
    let mut s = server.connect();
    s.write_all(
        format!("GET /stream?n={CHUNKS}&tag=immediate HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    drop(s);
    let rec = wait_closed(&server, "immediate");
    assert!(
        rec["produced"].as_u64().unwrap() < CHUNKS,
        "the whole body was produced for a client that left: {rec}"
    );

    // The worker is still serving: honest requests, and a complete small stream.
    let took = honest_ping(&server);
    assert!(took < HONEST_LIMIT, "after abandoned streams: {took:?}");
    let resp = server.get("/stream?n=4&tag=complete");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body.len(),
        4 * 65536,
        "a complete stream after the abandoned ones"
    );
    let rec = wait_closed(&server, "complete");
    assert_eq!(rec["produced"], 4);
    println!("after abandoned streams: honest GET in {took:?}");
}

/// A client that pipelines many requests (or, alike, one that sends its next request
/// the moment it has the previous answer) gets one request per turn of the worker's
/// loop, not the loop: an honest request sent after the whole pipeline is answered
/// while most of the pipeline is still pending.
fn pipelining_client_does_not_hold_the_worker(mode: Mode) {
    const PIPELINED: usize = 300;
    let server = start(mode);
    let mut greedy = server.connect();
    greedy
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let pipeline = "GET /work?ms=10 HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(PIPELINED);
    greedy
        .write_all(pipeline.as_bytes())
        .expect("send the pipeline");
    // The worker is now busy with the pipeline (300 × 10 ms): even a test thread that
    // stalls for a second cannot see half of it done first unless it was all served
    // before the honest request.
    thread::sleep(Duration::from_millis(50));
    let took = honest_ping(&server);

    // Whatever the greedy client has received so far is all answers that came first.
    greedy.set_nonblocking(true).unwrap();
    let mut early = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match greedy.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => early.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading the pipelined answers: {e}"),
        }
    }
    let answered_first = count(&early, b"HTTP/1.1 200");
    println!(
        "pipelining: honest GET answered in {took:?} with {answered_first} of {PIPELINED} pipelined requests done"
    );
    assert!(
        answered_first < PIPELINED / 2,
        "the honest request waited for {answered_first} of {PIPELINED} pipelined requests"
    );

    // The rest of the pipeline is still served, in order, completely.
    greedy.set_nonblocking(false).unwrap();
    greedy
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(std::io::Cursor::new(early).chain(greedy));
    for i in 0..PIPELINED {
        let resp = read_response(&mut reader, false)
            .unwrap_or_else(|| panic!("pipelined request {i} got no answer"));
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"done"[..]));
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

both_thread_modes!(
    huge_upload_is_streamed_with_bounded_memory,
    client_gone_mid_stream_closes_iterable_and_server_keeps_serving,
    pipelining_client_does_not_hold_the_worker
);
