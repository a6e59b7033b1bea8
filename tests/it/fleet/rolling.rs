//! A rolling deploy of a fleet, with real parts: Debian's HAProxy (scripts/test
//! installs it as root) in front of three rgun instances, checking each one's
//! `/readyz` on its operations listener. Under continuous load (keep-alive and fresh
//! connections, GETs and 1 MiB POSTs) the three are replaced one by one as Kubernetes
//! does: start the new one, wait until HAProxy sees it UP, TERM the old one, whose
//! shutdown delay is longer than the check interval, and wait for it to exit. Not one
//! request may fail. `bench/rolling.py` runs the same scenario against Gunicorn.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::ops_port;
use crate::support::{pass_as_fd3, read_response, skip, wait_until, Server, ServerBuilder};

const FLEET: usize = 3;
/// HAProxy checks every server this often (`inter`), and one failed check marks it
/// DOWN (`fall 1`): the shutdown delay must outlast that, with room for a loaded
/// machine.
const CHECK_INTERVAL_MS: u64 = 200;
const SHUTDOWN_DELAY_S: &str = "3";
const UPLOAD_BYTES: usize = 1 << 20;

/// HAProxy in the foreground on an inherited listener (`bind fd@3`), its runtime API
/// on a Unix socket; stopped by pid on drop.
struct Haproxy {
    child: Child,
    port: u16,
    admin: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    /// `servers` are the first instances' (port, operations port); the replacements
    /// get slots `new0`.. in maintenance, pointed at their instance when it starts.
    /// `None` after saying the test skips (no haproxy).
    fn start(test: &str, dir: &Path, servers: &[(u16, u16)]) -> Option<Haproxy> {
        let binary = Path::new("/usr/sbin/haproxy");
        if !binary.exists() {
            skip(
                test,
                "/usr/sbin/haproxy is missing (apt-get install haproxy)",
            );
            return None;
        }
        let admin = dir.join("admin.sock");
        let mut config = format!(
            "global\n  stats socket {admin} level admin\n  maxconn 1000\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  \
             timeout server 60s\n  timeout http-keep-alive 60s\n\
             frontend web\n  bind fd@3\n  default_backend fleet\n\
             backend fleet\n  balance roundrobin\n  option httpchk GET /readyz\n  \
             http-check expect status 200\n  \
             default-server inter {CHECK_INTERVAL_MS} fall 1 rise 1\n",
            admin = admin.display()
        );
        for (i, (port, ops)) in servers.iter().enumerate() {
            config.push_str(&format!(
                "  server old{i} 127.0.0.1:{port} check port {ops}\n"
            ));
        }
        for i in 0..servers.len() {
            config.push_str(&format!(
                "  server new{i} 127.0.0.1:9 check port 9 disabled\n"
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let mut cmd = Command::new(binary);
        cmd.arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        pass_as_fd3(&mut cmd, &listener);
        let child = cmd.spawn().expect("start haproxy");
        let haproxy = Haproxy { child, port, admin };
        let up = wait_until(Duration::from_secs(20), || {
            (0..servers.len()).all(|i| haproxy.status(&format!("old{i}")) == "UP")
        });
        assert!(up, "{}", haproxy.command("show stat"));
        Some(haproxy)
    }

    /// One runtime API command's answer.
    fn command(&self, line: &str) -> String {
        let Ok(mut s) = UnixStream::connect(&self.admin) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(format!("{line}\n").as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// A server's status as `show stat` gives it: UP, DOWN, MAINT...
    fn status(&self, server: &str) -> String {
        let stat = self.command("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let Some(col) = header.iter().position(|h| *h == "status") else {
            return String::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > col && f[0] == "fleet" && f[1] == server)
            .map(|f| f[col].to_owned())
            .unwrap_or_default()
    }

    fn wait_for(&self, server: &str, status: &str) {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(30), || {
            last = self.status(server);
            last == status
        });
        assert!(ok, "{server} is {last:?}, not {status}");
    }

    /// Slot `server` to the instance on `port` (checks on `ops`), out of maintenance.
    fn point(&self, server: &str, port: u16, ops: u16) {
        for line in [
            format!("set server fleet/{server} addr 127.0.0.1 port {port}"),
            format!("set server fleet/{server} check-port {ops}"),
            format!("set server fleet/{server} state ready"),
        ] {
            let answer = self.command(&line);
            assert!(
                !answer.to_lowercase().contains("error")
                    && !answer.to_lowercase().contains("unknown"),
                "{line}: {answer}"
            );
        }
    }
}

/// What one load client saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
}

struct Upload {
    body: Vec<u8>,
    answer: String,
}

impl Upload {
    fn new() -> Upload {
        let body: Vec<u8> = (0..UPLOAD_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        let digest: String = Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Upload {
            answer: format!("{UPLOAD_BYTES} {digest}"),
            body,
        }
    }
}

/// Requests through HAProxy until `stop`: on one keep-alive connection, or on a
/// fresh connection each; every fourth one a 1 MiB POST whose digest must come back.
fn client(port: u16, keep_alive: bool, stop: &AtomicBool, upload: &Upload) -> Tally {
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut kept: Option<BufReader<TcpStream>> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let post = n.is_multiple_of(4);
        let mut fail = |what: String| {
            tally
                .failed
                .push(format!("{:.3}s: {what}", started.elapsed().as_secs_f64()))
        };
        let mut conn = match kept.take() {
            Some(c) => c,
            None => match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    BufReader::new(s)
                }
                Err(e) => {
                    fail(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let close = if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        let head = if post {
            format!(
                "POST /upload HTTP/1.1\r\nHost: fleet\r\nContent-Length: {UPLOAD_BYTES}\r\n{close}\r\n"
            )
        } else {
            format!("GET / HTTP/1.1\r\nHost: fleet\r\n{close}\r\n")
        };
        let socket = conn.get_mut();
        let sent = socket.write_all(head.as_bytes()).and_then(|()| {
            if post {
                socket.write_all(&upload.body)
            } else {
                Ok(())
            }
        });
        if let Err(e) = sent {
            fail(format!("send: {e}"));
            continue;
        }
        match read_response(&mut conn, false) {
            Some(r) if r.status == 200 => {
                let text = r.text();
                let right = if post {
                    text == upload.answer
                } else {
                    text.starts_with("ok ")
                };
                if right {
                    tally.ok += 1;
                } else {
                    fail(format!("wrong answer: {text}"));
                }
                if keep_alive && r.header("connection") != Some("close") {
                    kept = Some(conn);
                }
            }
            Some(r) => fail(format!("{} {}", r.status, r.text().trim())),
            None => fail("no answer".into()),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tally
}

fn instance(app: &[&str]) -> (Server, u16) {
    let server = ServerBuilder::new(app[0])
        .args(app[1..].iter().copied())
        .workers(2)
        .args(["--metrics-bind", "127.0.0.1:0"])
        .args(["--shutdown-delay", SHUTDOWN_DELAY_S])
        .start();
    let ops = ops_port(&server);
    (server, ops)
}

/// The whole deploy for one application; panics with every failure seen.
fn rolling_deploy(test: &str, app: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut old: Vec<(Server, u16)> = (0..FLEET).map(|_| instance(app)).collect();
    let ports: Vec<(u16, u16)> = old.iter().map(|(s, ops)| (s.port, *ops)).collect();
    let Some(haproxy) = Haproxy::start(test, dir.path(), &ports) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let upload = Arc::new(Upload::new());
    let clients: Vec<_> = [true, true, true, false, false]
        .into_iter()
        .map(|keep_alive| {
            let (stop, upload, port) = (Arc::clone(&stop), Arc::clone(&upload), haproxy.port);
            std::thread::spawn(move || client(port, keep_alive, &stop, &upload))
        })
        .collect();
    // Every instance of the first fleet serves before the deploy starts.
    let serving = |s: &Server| !s.access_log().is_empty();
    assert!(wait_until(Duration::from_secs(30), || old
        .iter()
        .all(|(s, _)| serving(s))));

    let mut new = Vec::new();
    for (i, (mut retiring, _)) in old.drain(..).enumerate() {
        let (server, ops) = instance(app);
        haproxy.point(&format!("new{i}"), server.port, ops);
        haproxy.wait_for(&format!("new{i}"), "UP");
        retiring.signal(libc::SIGTERM);
        haproxy.wait_for(&format!("old{i}"), "DOWN");
        assert_eq!(
            retiring.wait_exit(Duration::from_secs(60)),
            Some(0),
            "{}",
            retiring.log()
        );
        new.push(server);
    }
    // The traffic moved: every new instance serves.
    assert!(wait_until(Duration::from_secs(30), || new
        .iter()
        .all(serving)));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok: u64 = tallies.iter().map(|t| t.ok).sum();
    let failed: Vec<&String> = tallies.iter().flat_map(|t| &t.failed).collect();
    let _ = writeln!(
        std::io::stderr().lock(),
        "rolling deploy {app:?}: {ok} requests served, {} failed, over {FLEET} replacements",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:#?}\nhaproxy:\n{}",
        failed.len(),
        ok + failed.len() as u64,
        std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default()
    );
}

#[test]
fn a_rolling_deploy_behind_haproxy_fails_no_request_wsgi() {
    rolling_deploy(
        "a_rolling_deploy_behind_haproxy_fails_no_request_wsgi",
        &["fleet_app:application", "--threads", "4"],
    );
}

#[test]
fn a_rolling_deploy_behind_haproxy_fails_no_request_asgi() {
    rolling_deploy(
        "a_rolling_deploy_behind_haproxy_fails_no_request_asgi",
        &["fleet_app:app", "-k", "asgi"],
    );
}
