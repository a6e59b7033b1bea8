//! Each control command, scaling, the bad-input matrix, the socket file and rgunctl.

use super::*;

// ---------------------------------------------------------------------------------
// 1. Every command over the raw socket
// ---------------------------------------------------------------------------------

#[test]
fn every_command_over_one_raw_connection() {
    let mut server = ServerBuilder::new("echo:application").workers(2).start();
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut c = Raw::connect(&server.ctl_path);

    // Several requests in one write, answered in order, ids of any JSON type echoed.
    c.send(
        b"{\"id\":1,\"cmd\":\"ping\"}\n{\"id\":\"two\",\"cmd\":\"status\"}\n{\"id\":[3],\"cmd\":\"config\"}\n{\"cmd\":\"history\"}\n",
    );
    let ping = ok(&c.recv(), &json!(1));
    assert_eq!(ping["pid"], json!(server.pid()));
    assert!(
        ping["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{ping}"
    );

    let st = ok(&c.recv(), &json!("two"));
    let m = &st["master"];
    assert_eq!(m["pid"], json!(server.pid()), "{st}");
    assert_eq!(m["version"], ping["version"]);
    let started_at = m["started_at"].as_f64().expect("started_at");
    assert!(
        started_at <= t0 + 1.0 && started_at > t0 - 120.0,
        "started_at {started_at} vs now {t0}"
    );
    assert!(
        m["uptime_s"]
            .as_f64()
            .is_some_and(|u| (0.0..120.0).contains(&u)),
        "{m}"
    );
    assert_eq!(m["app"], json!("echo:application"));
    assert!(m["binds"].as_array().is_some_and(|b| b.len() == 1), "{m}");
    assert_eq!(m["generation"], json!(1));
    assert_eq!(m["workers_target"], json!(2));
    assert_eq!(m["state"], json!("running"));
    let workers = st["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{st}");
    let mut pids: Vec<i64> = Vec::new();
    for w in workers {
        pids.push(w["pid"].as_i64().expect("pid"));
        assert_eq!(w["generation"], json!(1), "{w}");
        assert_eq!(w["state"], json!("idle"), "{w}");
        assert!(w["age_s"].as_f64().is_some_and(|a| a >= 0.0), "{w}");
        assert!(w["requests"].as_u64().is_some(), "{w}");
        assert!(w["connections"].as_u64().is_some(), "{w}");
        assert!(w["current_request_s"].is_null(), "idle worker: {w}");
        assert!(
            w["last_heartbeat_s"]
                .as_f64()
                .is_some_and(|h| (0.0..30.0).contains(&h)),
            "{w}"
        );
        assert!(w["rss_bytes"].as_u64().is_some_and(|r| r > 0), "{w}");
    }
    pids.sort();
    let mut real: Vec<i64> = server.worker_pids().into_iter().map(i64::from).collect();
    real.sort();
    assert_eq!(pids, real, "status workers vs the master's children");
    let totals = &st["totals"];
    for k in [
        "requests",
        "workers_spawned",
        "workers_exited",
        "timeouts",
        "reloads",
    ] {
        assert!(totals[k].as_u64().is_some(), "totals.{k}: {st}");
    }
    assert_eq!(totals["workers_spawned"], json!(2));
    assert_eq!(totals["reloads"], json!(0));

    let config = ok(&c.recv(), &json!([3]));
    assert_eq!(config["wsgi_app"], json!("echo:application"), "{config}");
    assert_eq!(config["workers"], json!(2), "{config}");
    assert_eq!(
        config["control_socket"],
        json!(server.ctl_path.to_str().unwrap())
    );
    assert_eq!(config["control_socket_mode"], json!("0600"));

    let history = ok(&c.recv(), &Value::Null);
    assert_eq!(history["entries"], json!([]), "{history}");

    // Requests are counted.
    for _ in 0..3 {
        assert_eq!(server.get("/x").status, 200);
    }
    let counted = wait_until(Duration::from_secs(5), || {
        let st = ok(&c.call(json!({"id": 4, "cmd": "status"})), &json!(4));
        st["totals"]["requests"].as_u64() == Some(3)
    });
    assert!(counted, "status totals.requests never reached 3");

    // reopen_logs: a rotated error log is recreated.
    let rotated = server.log_path.with_extension("log.1");
    std::fs::rename(&server.log_path, &rotated).unwrap();
    assert_eq!(
        ok(&c.call(json!({"id": 5, "cmd": "reopen_logs"})), &json!(5)),
        json!({})
    );
    assert!(
        server.log_path.exists(),
        "reopen_logs did not recreate the error log"
    );

    // kill: that worker is replaced by a new pid.
    let victim = pids[0];
    assert_eq!(
        ok(
            &c.call(json!({"id": 6, "cmd": "kill", "pid": victim})),
            &json!(6)
        ),
        json!({})
    );
    let replaced = wait_until(Duration::from_secs(20), || {
        let now = server.worker_pids();
        now.len() == 2 && !now.contains(&(victim as i32))
    });
    assert!(
        replaced,
        "worker {victim} not replaced; log:\n{}",
        server.log()
    );

    // scale: absolute with wait, then relative without.
    let r = ok(
        &c.call(json!({"id": 7, "cmd": "scale", "workers": 3, "wait": true})),
        &json!(7),
    );
    assert_eq!(r["target"], json!(3), "{r}");
    assert_eq!(server.worker_pids().len(), 3);
    let r = ok(
        &c.call(json!({"id": 8, "cmd": "scale", "delta": -2})),
        &json!(8),
    );
    assert_eq!(r, json!({"previous": 3, "target": 1}));
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 1),
        "scale to 1 did not converge"
    );

    // reload (waits by default).
    let r = ok(&c.call(json!({"id": 9, "cmd": "reload"})), &json!(9));
    assert_eq!(r["generation"], json!(2), "{r}");
    assert_eq!(r["previous_generation"], json!(1), "{r}");
    assert!(r["duration_ms"].as_u64().is_some(), "{r}");
    let st = ok(&c.call(json!({"id": 10, "cmd": "status"})), &json!(10));
    assert_eq!(st["master"]["generation"], json!(2));
    assert_eq!(
        st["master"]["workers_target"],
        json!(1),
        "target survives reload"
    );
    assert_eq!(st["totals"]["reloads"], json!(1));

    // history: the scale changes and the reload, with triggers and outcomes.
    let h = ok(&c.call(json!({"id": 11, "cmd": "history"})), &json!(11));
    let entries = h["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["scale", "scale", "reload"], "{h}");
    for e in entries {
        assert_eq!(e["trigger"], json!("ctl uid 0"), "{e}");
        assert_eq!(e["outcome"], json!("ok"), "{e}");
        assert!(e["started_at"].as_f64().is_some_and(|s| s > 0.0), "{e}");
    }
    assert!(entries[2]["duration_ms"].as_u64().is_some(), "{h}");
    assert_eq!(entries[0]["detail"], json!({"previous": 2, "target": 3}));

    // stop: answered, then the daemon exits 0 and removes its socket.
    assert_eq!(
        ok(&c.call(json!({"id": 12, "cmd": "stop"})), &json!(12)),
        json!({})
    );
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(c.try_recv().is_none(), "connection closed after stop");
    assert!(!server.ctl_path.exists(), "control socket left behind");
}

// ---------------------------------------------------------------------------------
// 2. rgunctl scale / kill
// ---------------------------------------------------------------------------------

#[test]
fn rgunctl_scale_wait_scale_down_and_kill() {
    let server = ServerBuilder::new("echo:application").workers(1).start();
    let run = ctl(&server, &["scale", "4", "--wait"]);
    run.assert_ok("scale 4 --wait");
    assert_eq!(server.worker_pids().len(), 4, "after scale 4 --wait");
    let st = status(&server.ctl_path);
    let idle = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == json!("idle"))
        .count();
    assert_eq!(idle, 4, "{st}");
    assert_eq!(st["master"]["workers_target"], json!(4));

    let before = server.worker_pids();
    let run = ctl(&server, &["scale", "1"]);
    run.assert_ok("scale 1");
    assert!(
        run.stdout.contains("4") && run.stdout.contains("1"),
        "{}",
        run.stdout
    );
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 1),
        "scale 1 did not converge: {:?}; log:\n{}",
        server.worker_pids(),
        server.log()
    );
    let gone: Vec<i32> = before
        .iter()
        .copied()
        .filter(|p| !server.worker_pids().contains(p))
        .collect();
    assert_eq!(gone.len(), 3);
    assert!(
        wait_until(Duration::from_secs(10), || gone
            .iter()
            .all(|p| proc_state(*p).is_none())),
        "retired workers not reaped: {:?}",
        gone.iter().map(|p| (p, proc_state(*p))).collect::<Vec<_>>()
    );
    assert_no_zombie_children(&server);
    assert_eq!(server.get("/").status, 200);

    let victim = server.worker_pids()[0];
    let run = ctl(&server, &["kill", &victim.to_string()]);
    run.assert_ok("kill");
    let replaced = wait_until(Duration::from_secs(20), || {
        let now = server.worker_pids();
        now.len() == 1 && now[0] != victim
    });
    assert!(
        replaced,
        "killed worker not replaced; log:\n{}",
        server.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || proc_state(victim).is_none()),
        "killed worker not reaped"
    );
    assert!(wait_until(Duration::from_secs(20), || status(
        &server.ctl_path
    )["workers"][0]["state"]
        == json!("idle")));
    assert_eq!(server.get("/").status, 200);
    assert_no_zombie_children(&server);
}

// ---------------------------------------------------------------------------------
// 3. Scaling under load
// ---------------------------------------------------------------------------------

#[test]
fn scaling_1_to_5_under_load_fails_no_request() {
    let (_code, server) = deploy_server(1, "v1");
    let load = Load::start(server.port);
    for round in 0..4 {
        ctl(&server, &["scale", "5", "--wait"]).assert_ok("scale 5 --wait");
        assert_eq!(server.worker_pids().len(), 5, "round {round}");
        ctl(&server, &["scale", "1", "--wait"]).assert_ok("scale 1 --wait");
        assert!(
            wait_until(Duration::from_secs(20), || server.worker_pids().len() == 1),
            "round {round}: scale 1 did not converge"
        );
    }
    let stats = load.finish();
    eprintln!(
        "scaling under load: {} ok, {} reconnects",
        stats.ok, stats.reconnects
    );
    assert_no_failures(&stats, &server);
    assert_no_zombie_children(&server);
}

/// Sockets a process holds open, from /proc.
fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The deterministic form of the failures the load tests above can hit: a worker told
/// to stop (scale down, reload, kill) keeps a connection it accepted but has not yet
/// read from; the request that then arrives must be answered, not dropped.
#[test]
fn a_connection_accepted_before_a_graceful_stop_is_still_served() {
    let (_code, server) = deploy_server(1, "v1");
    let worker = server.worker_pids()[0];
    let before = socket_fds(worker);
    let s = server.connect();
    assert!(
        wait_until(Duration::from_secs(5), || socket_fds(worker) > before),
        "the worker never accepted the connection"
    );
    ctl(&server, &["kill", &worker.to_string()]).assert_ok("kill");
    let stopping = wait_until(Duration::from_secs(10), || {
        status(&server.ctl_path)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["pid"] == json!(worker) && w["state"] == json!("stopping"))
    });
    assert!(stopping, "worker {worker} never reported stopping");
    assert_eq!(
        proc_state(worker).map(|c| c != 'Z'),
        Some(true),
        "worker gone too early"
    );
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send the request");
    let resp = read_response(&mut r, false);
    assert!(
        resp.as_ref().is_some_and(|r| r.status == 200),
        "a request on a connection the stopping worker {worker} had accepted got {:?}; log:\n{}",
        resp.map(|r| (r.status, r.text())),
        server.log()
    );
}

// ---------------------------------------------------------------------------------
// 7. Bad input
// ---------------------------------------------------------------------------------

#[test]
fn bad_input_gets_errors_and_the_connection_stays_usable() {
    let server = ServerBuilder::new("echo:application").workers(1).start();
    let path = server.ctl_path.clone();
    let mut c = Raw::connect(&path);
    let cases: &[(&[u8], Value, &str)] = &[
        (b"{nope\n", Value::Null, "bad_request"),
        (b"\xff\xfe\x00garbage\n", Value::Null, "bad_request"),
        (b"[1,2]\n", Value::Null, "bad_request"),
        (b"\"ping\"\n", Value::Null, "bad_request"),
        (b"{}\n", Value::Null, "bad_request"),
        (b"{\"id\":1,\"cmd\":5}\n", json!(1), "bad_request"),
        (
            b"{\"id\":2,\"cmd\":\"dance\"}\n",
            json!(2),
            "unknown_command",
        ),
        (
            b"{\"id\":3,\"cmd\":\"scale\",\"workers\":-5}\n",
            json!(3),
            "bad_request",
        ),
        (
            b"{\"id\":4,\"cmd\":\"scale\",\"workers\":\"many\"}\n",
            json!(4),
            "bad_request",
        ),
        (
            b"{\"id\":5,\"cmd\":\"scale\",\"workers\":0}\n",
            json!(5),
            "bad_request",
        ),
        (
            b"{\"id\":6,\"cmd\":\"scale\",\"workers\":100000}\n",
            json!(6),
            "bad_request",
        ),
        (
            b"{\"id\":7,\"cmd\":\"scale\",\"workers\":2.5}\n",
            json!(7),
            "bad_request",
        ),
        (b"{\"id\":8,\"cmd\":\"scale\"}\n", json!(8), "bad_request"),
        (
            b"{\"id\":9,\"cmd\":\"scale\",\"delta\":0}\n",
            json!(9),
            "bad_request",
        ),
        (
            b"{\"id\":10,\"cmd\":\"scale\",\"delta\":-5}\n",
            json!(10),
            "bad_request",
        ),
        (
            b"{\"id\":11,\"cmd\":\"scale\",\"workers\":2,\"delta\":1}\n",
            json!(11),
            "bad_request",
        ),
        (
            b"{\"id\":12,\"cmd\":\"scale\",\"workers\":2,\"wait\":\"yes\"}\n",
            json!(12),
            "bad_request",
        ),
        (
            b"{\"id\":13,\"cmd\":\"reload\",\"wait\":1}\n",
            json!(13),
            "bad_request",
        ),
        (
            b"{\"id\":14,\"cmd\":\"stop\",\"mode\":\"now\"}\n",
            json!(14),
            "bad_request",
        ),
        (b"{\"id\":15,\"cmd\":\"kill\"}\n", json!(15), "bad_request"),
        (
            b"{\"id\":16,\"cmd\":\"kill\",\"pid\":\"1\"}\n",
            json!(16),
            "bad_request",
        ),
        (
            b"{\"id\":17,\"cmd\":\"kill\",\"pid\":-1}\n",
            json!(17),
            "bad_request",
        ),
        (
            b"{\"id\":18,\"cmd\":\"kill\",\"pid\":1}\n",
            json!(18),
            "failed",
        ),
        (
            b"{\"id\":19,\"cmd\":\"ping\",\"extra\":true}\n",
            json!(19),
            "bad_request",
        ),
    ];
    for (line, id, code) in cases {
        c.send(line);
        let resp = c.recv();
        assert_eq!(
            err_code(&resp, id),
            *code,
            "{}: {resp}",
            String::from_utf8_lossy(line)
        );
    }
    // Blank lines are ignored and CRLF is accepted.
    c.send(b"\n  \r\n{\"id\":20,\"cmd\":\"ping\"}\r\n");
    ok(&c.recv(), &json!(20));
    // The daemon did nothing it was not asked to.
    let st = ok(&c.call(json!({"id": 21, "cmd": "status"})), &json!(21));
    assert_eq!(st["master"]["workers_target"], json!(1));
    assert_eq!(st["master"]["state"], json!("running"));

    // Over-long lines: one error each, then the connection works.
    let mut long = vec![b'a'; 100 * 1024];
    long.push(b'\n');
    c.send(&long);
    let resp = c.recv();
    assert_eq!(err_code(&resp, &Value::Null), "bad_request", "{resp}");
    ok(&c.call(json!({"id": 22, "cmd": "ping"})), &json!(22));
    // A valid-looking JSON request padded past 64 KiB.
    let padded = format!(
        "{{\"id\":23,\"cmd\":\"ping\",\"pad\":\"{}\"}}\n",
        "x".repeat(70 * 1024)
    );
    c.send(padded.as_bytes());
    assert_eq!(err_code(&c.recv(), &Value::Null), "bad_request");
    ok(&c.call(json!({"id": 24, "cmd": "ping"})), &json!(24));
    // A 2 MiB line in small pieces, then a request on the same write.
    let mut huge = vec![b'{'; 2 * 1024 * 1024];
    huge.extend_from_slice(b"\n{\"id\":25,\"cmd\":\"ping\"}\n");
    for chunk in huge.chunks(7000) {
        c.send(chunk);
    }
    assert_eq!(err_code(&c.recv(), &Value::Null), "bad_request");
    ok(&c.recv(), &json!(25));
    // Exactly 64 KiB is still allowed.
    let body = "{\"id\":26,\"cmd\":\"ping\",\"pad\":\"";
    let fill = 64 * 1024 - body.len() - 2;
    let exact = format!("{body}{}\"}}", "y".repeat(fill));
    assert_eq!(exact.len(), 64 * 1024);
    c.send(format!("{exact}\n").as_bytes());
    // (an unknown argument, but judged as a request, not as an over-long line)
    let resp = c.recv();
    assert_eq!(err_code(&resp, &json!(26)), "bad_request", "{resp}");

    // A half-written line, completed later; others are served meanwhile.
    c.send(b"{\"id\":\"half\",\"cmd\":");
    std::thread::sleep(Duration::from_millis(200)); // let the daemon see the partial line
    ok(
        &Raw::connect(&path).call(json!({"id": "other", "cmd": "ping"})),
        &json!("other"),
    );
    c.send(b"\"ping\"}\n");
    ok(&c.recv(), &json!("half"));

    // A client that connects and never writes does not block anyone.
    let _silent = UnixStream::connect(&path).unwrap();
    ok(
        &Raw::connect(&path).call(json!({"id": "after-silent", "cmd": "ping"})),
        &json!("after-silent"),
    );

    // Clients that vanish: before reading many answers, and before a deferred answer.
    {
        let mut v = Raw::connect(&path);
        let mut burst = Vec::new();
        for i in 0..2000 {
            burst.extend_from_slice(format!("{{\"id\":{i},\"cmd\":\"status\"}}\n").as_bytes());
        }
        v.send(&burst);
        // Read part of one answer, then go.
        let mut part = [0u8; 10];
        v.reader.read_exact(&mut part).unwrap();
    }
    {
        let mut v = Raw::connect(&path);
        v.send(b"{\"id\":1,\"cmd\":\"scale\",\"workers\":2,\"wait\":true}\n");
    }
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 2),
        "scale 2 (asked by a vanished client) did not happen"
    );
    {
        let mut v = Raw::connect(&path);
        v.send(b"{\"id\":1,\"cmd\":\"reload\"}\n");
    }
    assert!(
        wait_until(Duration::from_secs(30), || {
            let st = status(&path);
            st["master"]["generation"] == json!(2) && st["master"]["state"] == json!("running")
        }),
        "reload asked by a vanished client did not finish; log:\n{}",
        server.log()
    );
    ok(&c.call(json!({"id": 27, "cmd": "ping"})), &json!(27));

    // Hundreds of connections at once, all answered.
    let mut many: Vec<Raw> = (0..300).map(|_| Raw::connect(&path)).collect();
    for (i, m) in many.iter_mut().enumerate() {
        m.send_json(&json!({"id": i, "cmd": "ping"}));
    }
    for (i, m) in many.iter_mut().enumerate() {
        ok(&m.recv(), &json!(i));
    }
    drop(many);

    // Still serving, over the control socket and HTTP.
    assert!(server.child_alive());
    ok(&c.call(json!({"id": 28, "cmd": "status"})), &json!(28));
    assert_eq!(server.get("/").status, 200);
    assert!(!server.log().contains("panicked"), "log:\n{}", server.log());
}

// ---------------------------------------------------------------------------------
// 8. The socket file
// ---------------------------------------------------------------------------------

fn mode_of(path: &Path) -> u32 {
    let md = std::fs::metadata(path).expect("stat control socket");
    assert!(
        md.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
    md.permissions().mode() & 0o7777
}

#[test]
fn socket_mode_is_0600_by_default_and_configurable() {
    let server = ServerBuilder::new("echo:application").start();
    assert_eq!(mode_of(&server.ctl_path), 0o600);
    let server = ServerBuilder::new("echo:application")
        .args(["--control-socket-mode", "0640"])
        .start();
    assert_eq!(mode_of(&server.ctl_path), 0o640);
    let c = ctl(&server, &["--json", "config"]);
    c.assert_ok("config");
    assert_eq!(c.json()["control_socket_mode"], json!("0640"));
}

#[test]
fn a_stale_socket_is_replaced_and_stop_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.ctl");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(UnixStream::connect(&path).is_err(), "nobody listens on it");

    // rgunctl on a stale socket cannot connect: exit 3, naming the path and the error.
    let run = run_bounded(rgunctl_cmd(Some(&path), &["ping"]), Duration::from_secs(30));
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains(path.to_str().unwrap()) && run.stderr.contains("refused"),
        "{}",
        run.stderr
    );

    let log = dir.path().join("error.log");
    let mut d = Daemon::spawn(&path, &[], Some(&log));
    assert!(
        wait_until(Duration::from_secs(30), || ping_ok(&path)),
        "the daemon never answered on the replaced socket; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(mode_of(&path), 0o600);
    let run = run_bounded(rgunctl_cmd(Some(&path), &["stop"]), Duration::from_secs(30));
    run.assert_ok("stop");
    let (code, _) = d.wait_exit(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!path.exists(), "stop left the socket behind");
}

#[test]
fn a_second_daemon_on_a_live_socket_fails_clearly() {
    let server = ServerBuilder::new("echo:application").start();
    let mut second = Daemon::spawn(&server.ctl_path, &[], None);
    let (code, stderr) = second.wait_exit(Duration::from_secs(30));
    assert!(
        code.is_some_and(|c| c != 0),
        "second daemon exit {code:?}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(server.ctl_path.to_str().unwrap()),
        "the message does not name the path:\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("another daemon"),
        "unclear message:\n{stderr}"
    );
    // The first one is unharmed, socket and all.
    assert_eq!(mode_of(&server.ctl_path), 0o600);
    assert!(ping_ok(&server.ctl_path));
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn rgunctl_stop_exits_0_and_removes_the_socket() {
    let mut server = ServerBuilder::new("echo:application").workers(2).start();
    let workers = server.worker_pids();
    let run = ctl(&server, &["stop"]);
    run.assert_ok("stop");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!server.ctl_path.exists(), "socket left behind");
    for w in workers {
        assert!(proc_state(w).is_none(), "worker {w} outlived the master");
    }
}

// ---------------------------------------------------------------------------------
// 9. The CLI
// ---------------------------------------------------------------------------------

#[test]
fn rgunctl_exit_codes_output_and_socket_selection() {
    let server = ServerBuilder::new("echo:application").workers(2).start();

    // 0: ok, human output.
    let run = ctl(&server, &["ping"]);
    run.assert_ok("ping");
    assert!(
        run.stdout.contains("pong") && run.stdout.contains(&server.pid().to_string()),
        "{}",
        run.stdout
    );

    // --json prints the raw result.
    let run = ctl(&server, &["--json", "ping"]);
    run.assert_ok("--json ping");
    assert_eq!(run.json()["pid"], json!(server.pid()));
    let run = ctl(&server, &["--json", "status"]);
    run.assert_ok("--json status");
    let st = run.json();
    assert_eq!(st["master"]["pid"], json!(server.pid()));
    assert_eq!(st["workers"].as_array().map(Vec::len), Some(2));

    // status: a master line and one row per worker.
    let run = ctl(&server, &["status"]);
    run.assert_ok("status");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("master {}", server.pid()))),
        "no master line:\n{}",
        run.stdout
    );
    for pid in server.worker_pids() {
        let rows = lines
            .iter()
            .filter(|l| l.split_whitespace().next() == Some(&pid.to_string()))
            .count();
        assert_eq!(rows, 1, "worker {pid} row:\n{}", run.stdout);
    }

    // The other commands, human output.
    let run = ctl(&server, &["config"]);
    run.assert_ok("config");
    assert!(run.stdout.contains("echo:application"), "{}", run.stdout);
    ctl(&server, &["history"]).assert_ok("history");
    let run = ctl(&server, &["reopen-logs"]);
    run.assert_ok("reopen-logs");
    assert!(run.stdout.contains("reopened"), "{}", run.stdout);
    let run = ctl(&server, &["scale", "+1"]);
    run.assert_ok("scale +1");
    assert!(run.stdout.contains("2 -> 3"), "{}", run.stdout);
    let run = ctl(&server, &["scale", "-1", "--wait"]);
    run.assert_ok("scale -1 --wait");
    assert_eq!(server.worker_pids().len(), 2);

    // 1: the daemon answered with an error; the message is on stderr.
    let run = ctl(&server, &["kill", "1"]);
    assert_eq!(run.code, Some(1), "{} {}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("no worker with pid 1"),
        "{}",
        run.stderr
    );
    let run = ctl(&server, &["scale", "-5"]);
    assert_eq!(run.code, Some(1), "{} {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("out of range"), "{}", run.stderr);

    // 2: usage.
    for args in [
        &["scale", "abc"][..],
        &["scale", "0"],
        &["scale", "+0"],
        &["scale"],
        &["kill", "x"],
        &["dance"],
        &[],
        &["--bogus", "ping"],
    ] {
        let run = ctl(&server, args);
        assert_eq!(
            run.code,
            Some(2),
            "rgunctl {args:?}: {} {}",
            run.stdout,
            run.stderr
        );
        assert!(!run.stderr.is_empty(), "rgunctl {args:?}: no usage message");
    }

    // 3: cannot connect; the message names the path and the OS error.
    let missing = server.dir.path().join("nope").join("x.ctl");
    let run = run_bounded(
        rgunctl_cmd(Some(&missing), &["ping"]),
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains(missing.to_str().unwrap())
            && run.stderr.contains("No such file or directory"),
        "{}",
        run.stderr
    );

    // Socket selection: RGUN_CONTROL_SOCKET, and -s over it.
    let mut cmd = rgunctl_cmd(None, &["--json", "ping"]);
    cmd.env("RGUN_CONTROL_SOCKET", &server.ctl_path);
    let run = run_bounded(cmd, Duration::from_secs(30));
    run.assert_ok("ping via RGUN_CONTROL_SOCKET");
    assert_eq!(run.json()["pid"], json!(server.pid()));
    let mut cmd = rgunctl_cmd(Some(&server.ctl_path), &["ping"]);
    cmd.env("RGUN_CONTROL_SOCKET", &missing);
    run_bounded(cmd, Duration::from_secs(30)).assert_ok("-s wins over the environment");
    let mut cmd = rgunctl_cmd(Some(&missing), &["ping"]);
    cmd.env("RGUN_CONTROL_SOCKET", &server.ctl_path);
    assert_eq!(run_bounded(cmd, Duration::from_secs(30)).code, Some(3));
    let mut cmd = rgunctl_cmd(
        None,
        &["--socket", server.ctl_path.to_str().unwrap(), "ping"],
    );
    cmd.env("RGUN_CONTROL_SOCKET", &missing);
    run_bounded(cmd, Duration::from_secs(30)).assert_ok("--socket");
}

// ---------------------------------------------------------------------------------
// forbidden: a peer that is neither the daemon's uid nor root
// ---------------------------------------------------------------------------------

#[test]
fn another_uid_is_forbidden() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    const NOBODY: u32 = 65534;
    let as_nobody = |path: &Path, args: &[&str]| {
        let mut cmd = rgunctl_cmd(Some(path), args);
        cmd.uid(NOBODY).gid(NOBODY);
        run_bounded(cmd, Duration::from_secs(30))
    };
    // With the default mode, the socket file itself keeps others out.
    let server = ServerBuilder::new("echo:application").start();
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = as_nobody(&server.ctl_path, &["ping"]);
    assert_eq!(run.code, Some(3), "{} {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);

    // Opened to everyone, the daemon still refuses the uid.
    let server = ServerBuilder::new("echo:application")
        .args(["--control-socket-mode", "0666"])
        .start();
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [&["ping"][..], &["stop"], &["scale", "3"]] {
        let run = as_nobody(&server.ctl_path, args);
        assert_eq!(run.code, Some(1), "{args:?}: {} {}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("forbidden") && run.stderr.contains("65534"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // Nothing happened, and root is still served.
    let st = status(&server.ctl_path);
    assert_eq!(st["master"]["workers_target"], json!(1));
    assert_eq!(st["master"]["state"], json!("running"));
    assert!(server.child_alive());
}

#[test]
fn rgunctl_generates_a_man_page_and_completions() {
    let man = run_bounded(
        rgunctl_cmd(None, &["generate", "man"]),
        Duration::from_secs(30),
    );
    assert_eq!(man.code, Some(0));
    assert!(
        man.stdout.contains(".TH rgunctl") && man.stdout.contains("reload"),
        "{}",
        man.stdout
    );
    for shell in ["bash", "zsh", "fish"] {
        let run = run_bounded(
            rgunctl_cmd(None, &["generate", shell]),
            Duration::from_secs(30),
        );
        assert_eq!(run.code, Some(0), "{shell}");
        assert!(
            run.stdout.contains("rgunctl") && run.stdout.contains("scale"),
            "{shell}: {}",
            run.stdout
        );
    }
}

#[test]
fn regression_many_pipelined_requests_are_all_answered() {
    let server = ServerBuilder::new("lifecycle_app:application").start();
    let stream = UnixStream::connect(&server.ctl_path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = 20_000;
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let lines: String = (0..n)
            .map(|i| format!("{{\"id\":{i},\"cmd\":\"ping\"}}\n"))
            .collect();
        assert!(lines.len() > 4 * 64 * 1024);
        writer.write_all(lines.as_bytes()).unwrap();
    });
    let mut reader = BufReader::new(stream);
    for i in 0..n {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("answer {i}: {e}"));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], json!(i));
    }
    sender.join().unwrap();
}

/// Clients arriving one at a time while every worker sleeps are shared out, not all
/// given to the worker the kernel happens to wake first; `status` shows each worker's
/// open connections.
#[test]
fn new_connections_are_shared_out_between_workers() {
    const CLIENTS: usize = 20;
    let server = ServerBuilder::new("echo:application").workers(2).start();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let s = server.connect();
        (&s).write_all(b"GET /kept HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        let resp = crate::support::read_response(&mut std::io::BufReader::new(&s), false)
            .unwrap_or_else(|| panic!("client {i}: no response"));
        assert_eq!(resp.status, 200);
        clients.push(s);
    }
    let mut counts = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            counts = connections_per_worker(&server.ctl_path);
            counts.iter().sum::<u64>() == CLIENTS as u64
        }),
        "connections per worker {counts:?}, want {CLIENTS} in all"
    );
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    println!("per worker {counts:?}");
    assert!(max - min <= 4, "connections per worker {counts:?}");
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(5), || {
            status(&server.ctl_path)["workers"]
                .as_array()
                .is_some_and(|ws| ws.iter().all(|w| w["connections"] == json!(0)))
        }),
        "closed connections still counted"
    );

    // A burst: 40 clients connect at once.
    let burst: Vec<TcpStream> = (0..2 * CLIENTS).map(|_| server.connect()).collect();
    assert!(
        wait_until(Duration::from_secs(5), || {
            counts = connections_per_worker(&server.ctl_path);
            counts.iter().sum::<u64>() == burst.len() as u64
        }),
        "burst: connections per worker {counts:?}, want {} in all",
        burst.len()
    );
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    println!("burst: per worker {counts:?}");
    assert!(max - min <= 4, "burst: connections per worker {counts:?}");
}

fn connections_per_worker(ctl: &Path) -> Vec<u64> {
    status(ctl)["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["connections"].as_u64().expect("connections"))
        .collect()
}
