//! `rgunctl top` in a real terminal: Debian's tmux runs it against an rgun under load,
//! `capture-pane` reads the screen, whose figures are checked against `status`; keys
//! scale, reload (a good deploy, then a broken one whose traceback is shown), show a
//! worker's stacks and quit. Also its plain modes: `--once --json`, and frames when
//! stdout is a pipe.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{apps_dir, rgunctl_bin, skip, wait_until, write_file, Server, ServerBuilder};

/// Requests to `port` until `stop` (at most two minutes): 3 in 4 answered 200, the rest
/// 404.
fn load(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
            let path = if sent % 4 == 3 { "/missing" } else { "/" };
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                );
                let _ = s.read_to_end(&mut Vec::new());
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    })
}

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let out = self.cmd(&["send-keys", "-t", "top", keys]);
        assert!(out.status.success(), "send-keys {keys}: {out:?}");
    }

    /// Waits (bounded) until the screen satisfies `f`; panics with the last screen.
    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(30), || {
            last = self.screen();
            f(&last)
        });
        assert!(ok, "{what}: not on the screen within 30 s:\n{last}");
        last
    }

    fn alive(&self) -> bool {
        self.cmd(&["has-session", "-t", "top"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The worker rows on a screen: (pid, generation, state, total requests).
fn rows(screen: &str, pids: &[i64]) -> Vec<(i64, u64, String, u64)> {
    screen
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let pid: i64 = cells.first()?.parse().ok()?;
            pids.contains(&pid).then(|| {
                (
                    pid,
                    cells[1].parse().unwrap(),
                    cells[2].to_owned(),
                    cells[4].parse().unwrap(),
                )
            })
        })
        .collect()
}

fn workers(status: &Value) -> Vec<(i64, u64)> {
    let mut w: Vec<(i64, u64)> = status["result"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["pid"].as_i64().unwrap(), w["requests"].as_u64().unwrap()))
        .collect();
    w.sort_unstable();
    w
}

fn start_server(code: &Path) -> Server {
    let app = std::fs::read_to_string(apps_dir().join("observed_app.py")).unwrap();
    write_file(code, "top_app.py", &app);
    ServerBuilder::new("top_app:application")
        .workers(2)
        .env("PYTHONPATH", code.to_str().unwrap())
        .start()
}

#[test]
fn rgunctl_top_in_tmux_shows_the_status_figures_and_its_keys_work() {
    let test = "rgunctl_top_in_tmux_shows_the_status_figures_and_its_keys_work";
    if Command::new("tmux").arg("-V").output().is_err() {
        return skip(test, "tmux is missing (apt-get install tmux)");
    }
    let code = tempfile::tempdir().unwrap();
    let server = start_server(code.path());
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(server.port, stop.clone());
    let tmux = Tmux {
        socket: server.dir.path().join("tmux.sock"),
    };
    let top = format!(
        "{} -s {} top",
        rgunctl_bin().display(),
        server.ctl_path.display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "45",
        &top,
    ]);
    assert!(out.status.success(), "tmux new-session: {out:?}");

    the_screen_matches_status(&tmux, &server);
    a_long_request_shows_on_its_row(&tmux, server.port);
    scale_and_sort_keys_work(&tmux, &server);
    the_reload_key_shows_results_and_tracebacks(&tmux, &server, code.path());
    the_stacks_key_shows_a_workers_stacks(&tmux, &server);

    // `q`: quit, and the terminal's session ends with it.
    tmux.keys("q");
    assert!(
        wait_until(Duration::from_secs(10), || !tmux.alive()),
        "{}",
        tmux.screen()
    );
    stop.store(true, Ordering::Relaxed);
    assert!(loader.join().unwrap() > 0);
}

/// The figures, against `status` taken just before and just after the screen: every
/// worker's total in between, generation 1, idle or busy; a request rate under load.
fn the_screen_matches_status(tmux: &Tmux, server: &Server) {
    let master = server.pid().to_string();
    let mut checked = false;
    let mut screen = String::new();
    for _ in 0..20 {
        let before = server.status();
        screen = tmux.wait_for("the header with a request rate", |s| {
            s.contains(&format!("master {master}")) && s.contains("req/s") && !s.contains("req/s -")
        });
        let after = server.status();
        let (b, a) = (workers(&before), workers(&after));
        let pids: Vec<i64> = b.iter().map(|w| w.0).collect();
        let shown = rows(&screen, &pids);
        if pids != a.iter().map(|w| w.0).collect::<Vec<_>>() || shown.len() != pids.len() {
            continue; // a worker changed in between: look again
        }
        for (pid, generation, state, total) in &shown {
            let lo = b.iter().find(|w| w.0 == *pid).unwrap().1;
            let hi = a.iter().find(|w| w.0 == *pid).unwrap().1;
            assert!(
                (lo..=hi).contains(total),
                "worker {pid}: {total} not in {lo}..={hi}\n{screen}"
            );
            assert_eq!(*generation, 1, "{screen}");
            assert!(["idle", "busy"].contains(&state.as_str()), "{screen}");
        }
        checked = true;
        break;
    }
    assert!(
        checked,
        "the workers on screen never matched status:\n{screen}"
    );
    assert!(
        screen.contains("generation 1") && screen.contains("target 2"),
        "{screen}"
    );
    assert!(screen.contains("phase running"), "{screen}");
    let rate: f64 = screen
        .split("req/s ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0);
    assert!(rate > 0.0, "no request rate under load:\n{screen}");
    eprintln!("rgunctl top under load:\n{screen}");
}

/// A long request in flight: its age, method, target and client on its row.
fn a_long_request_shows_on_its_row(tmux: &Tmux, port: u16) {
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /sleep?4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    });
    let long = tmux.wait_for("the long request on its worker's row", |s| {
        s.lines()
            .any(|l| l.trim_end().ends_with("GET /sleep?4 127.0.0.1") && l.contains(" busy "))
    });
    eprintln!("a long request in flight:\n{long}");
    slow.join().unwrap();
}

/// `+` adds a worker, `-` removes one, `>` and `<` move the sort.
fn scale_and_sort_keys_work(tmux: &Tmux, server: &Server) {
    tmux.keys("+");
    tmux.wait_for("the scale result", |s| s.contains("workers: 2 -> 3"));
    assert!(wait_until(Duration::from_secs(30), || {
        server.status()["result"]["master"]["workers_target"] == 3
    }));
    tmux.wait_for("three worker rows and the spawn event", |s| {
        s.contains("spawned (generation 1") && s.contains("workers: 3 ")
    });

    // `-`: one fewer; `>` moves the sort to the next columns (TOTAL, largest first).
    tmux.keys("-");
    tmux.wait_for("the scale down", |s| s.contains("workers: 3 -> 2"));
    for _ in 0..4 {
        tmux.keys(">");
    }
    let by_total = tmux.wait_for("the table sorted by total", |s| {
        s.contains("sorted by total") && s.contains("TOTALv")
    });
    let pids: Vec<i64> = workers(&server.status()).iter().map(|w| w.0).collect();
    let totals: Vec<u64> = rows(&by_total, &pids).iter().map(|r| r.3).collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{by_total}");
    tmux.keys("<");
    tmux.wait_for("sorted by req/s", |s| s.contains("sorted by req/s"));
}

/// `r`: a reload, its result, then a broken deploy's traceback.
fn the_reload_key_shows_results_and_tracebacks(tmux: &Tmux, server: &Server, code: &Path) {
    tmux.keys("r");
    tmux.wait_for("the reload result", |s| {
        s.contains("reloaded: generation 1 -> 2")
    });
    assert_eq!(server.status()["result"]["master"]["generation"], 2);
    write_file(
        code,
        "top_app.py",
        "import no_such_module_for_the_top_test\n",
    );
    tmux.keys("r");
    let failed = tmux.wait_for("the failed reload's traceback", |s| {
        s.contains("reload failed") && s.contains("no_such_module_for_the_top_test")
    });
    assert!(failed.contains("Traceback"), "{failed}");
    assert_eq!(server.status()["result"]["master"]["generation"], 2);
    tmux.keys("Escape");
    tmux.wait_for("the pane closed", |s| !s.contains("Esc or q close"));
}

/// `s`: the selected worker's stacks, once the screen shows the workers that serve
/// (the one selected then is alive: the rolled-back generation has gone).
fn the_stacks_key_shows_a_workers_stacks(tmux: &Tmux, server: &Server) {
    tmux.wait_for("the serving workers alone", |s| {
        let pids: Vec<i64> = workers(&server.status()).iter().map(|w| w.0).collect();
        s.contains("phase running") && rows(s, &pids).len() == pids.len() && !s.contains("booting")
    });
    tmux.keys("s");
    tmux.wait_for("a worker's stacks", |s| {
        s.contains("stacks of worker") && s.contains("Thread")
    });
    tmux.keys("q");
    tmux.wait_for("the stacks pane closed", |s| !s.contains("Esc or q close"));
}

#[test]
fn rgunctl_top_prints_plain_frames_without_a_terminal() {
    let code = tempfile::tempdir().unwrap();
    let server = start_server(code.path());
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(server.port, stop.clone());
    let sock = server.ctl_path.to_str().unwrap();
    // --once --json: one frame of figures over one interval, matching status.
    let before = server.status();
    let once = Command::new(rgunctl_bin())
        .args(["top", "--once", "--json", "-d", "0.5", "-s", sock])
        .output()
        .unwrap();
    let after = server.status();
    assert!(once.status.success(), "{once:?}");
    let frame: Value = serde_json::from_slice(&once.stdout).expect("--once --json prints JSON");
    let rate = frame["requests_per_s"].as_f64().unwrap();
    assert!(rate > 0.0, "{frame}");
    let classes: f64 = frame["class_per_s"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    assert!((classes - rate).abs() < 1e-6, "{frame}");
    assert!(
        frame["p99_s"].as_f64().unwrap() >= frame["p50_s"].as_f64().unwrap(),
        "{frame}"
    );
    assert!(frame["backlog"][1].as_u64().unwrap() >= 1, "{frame}");
    for w in frame["workers"].as_array().unwrap() {
        let pid = w["pid"].as_i64().unwrap();
        let lo = workers(&before).into_iter().find(|x| x.0 == pid).unwrap().1;
        let hi = workers(&after).into_iter().find(|x| x.0 == pid).unwrap().1;
        assert!(
            (lo..=hi).contains(&w["requests"].as_u64().unwrap()),
            "{frame}"
        );
        assert!(w["cpu_percent"].as_f64().is_some(), "{frame}");
    }

    // Into a pipe, without --batch: plain frames, no escape sequences; -n stops it.
    let piped = Command::new(rgunctl_bin())
        .args(["top", "-n", "2", "-d", "0.2", "-s", sock])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(piped.status.success(), "{piped:?}");
    let text = String::from_utf8(piped.stdout).unwrap();
    assert_eq!(text.matches("PID ").count(), 2, "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape sequences in a pipe:\n{text}"
    );
    assert!(text.contains(&format!("master {}", server.pid())), "{text}");

    // Bad values: one line, exit 2.
    let bad = Command::new(rgunctl_bin())
        .args(["top", "--once", "-d", "0", "-s", sock])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
}
