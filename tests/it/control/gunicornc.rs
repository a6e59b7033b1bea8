//! Gunicorn 27's own `gunicornc` (the test venv's, pinned in tests/requirements.txt)
//! against a running rgun, on the same control socket `rgunctl` uses: `show workers`
//! (JSON and Gunicorn's table), `worker add`, `worker remove`, `reload` (a real new
//! generation), `show stats`/`config`/`listeners`, an unknown command's error, and
//! `shutdown`. A raw length-prefixed message checks the framing limits beside it.

use super::*;

/// `gunicornc -s SOCKET -c COMMAND [-j]`: its exit code, stdout and stderr.
fn gunicornc(server: &Server, command: &str, json: bool) -> CtlRun {
    let bin = crate::support::venv().join("bin").join("gunicornc");
    assert!(
        bin.exists(),
        "{} is missing (tests/requirements.txt pins gunicorn)",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.arg("-s").arg(&server.ctl_path).arg("-c").arg(command);
    if json {
        cmd.arg("-j");
    }
    run_bounded(cmd, Duration::from_secs(60))
}

fn gunicornc_json(server: &Server, command: &str) -> Value {
    gunicornc(server, command, true).assert_ok(command).json()
}

fn sorted(mut pids: Vec<i64>) -> Vec<i64> {
    pids.sort();
    pids
}

fn shown_pids(shown: &Value) -> Vec<i64> {
    let list = shown["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers: {shown}"));
    sorted(
        list.iter()
            .map(|w| w["pid"].as_i64().expect("pid"))
            .collect(),
    )
}

fn real_pids(server: &Server) -> Vec<i64> {
    sorted(server.worker_pids().into_iter().map(i64::from).collect())
}

#[test]
fn gunicornc_drives_rgun() {
    let mut server = ServerBuilder::new("echo:application").workers(2).start();

    let shown = gunicornc_json(&server, "show workers");
    assert_eq!(shown["count"], json!(2), "{shown}");
    assert_eq!(shown_pids(&shown), real_pids(&server));
    for w in shown["workers"].as_array().unwrap() {
        assert_eq!(w["booted"], json!(true), "{w}");
        assert!(w["last_heartbeat"].as_f64().is_some(), "{w}");
    }
    // Gunicorn's own table, formatted by gunicornc from rgun's answer.
    let table = gunicornc(&server, "show workers", false);
    table.assert_ok("show workers");
    assert!(
        table.stdout.contains("Total: 2 workers"),
        "{}",
        table.stdout
    );
    let first = shown_pids(&shown)[0].to_string();
    assert!(table.stdout.contains(&first), "{}", table.stdout);

    let added = gunicornc_json(&server, "worker add 1");
    assert_eq!(added, json!({"added": 1, "previous": 2, "total": 3}));
    let three = wait_until(Duration::from_secs(30), || server.worker_pids().len() == 3);
    assert!(three, "no third worker; log:\n{}", server.log());
    let removed = gunicornc_json(&server, "worker remove");
    assert_eq!(removed, json!({"removed": 1, "previous": 3, "total": 2}));
    let two = wait_until(Duration::from_secs(30), || server.worker_pids().len() == 2);
    assert!(two, "still three workers; log:\n{}", server.log());

    let stats = gunicornc_json(&server, "show stats");
    assert_eq!(stats["pid"], json!(server.pid()), "{stats}");
    assert_eq!(stats["workers_target"], json!(2), "{stats}");
    let config = gunicornc_json(&server, "show config");
    assert_eq!(config["workers"], json!(2), "{config}");
    let listeners = gunicornc_json(&server, "show listeners");
    assert_eq!(listeners["count"], json!(1), "{listeners}");

    // A reload through gunicornc is rgun's gated reload: a new generation of workers.
    let before = real_pids(&server);
    let reloading = gunicornc_json(&server, "reload");
    assert_eq!(reloading, json!({"status": "reloading"}));
    let replaced = wait_until(Duration::from_secs(60), || {
        let st = server.status();
        st["result"]["master"]["generation"] == json!(2)
            && st["result"]["workers"]
                .as_array()
                .is_some_and(|ws| ws.len() == 2 && ws.iter().all(|w| w["generation"] == json!(2)))
    });
    assert!(replaced, "no second generation; log:\n{}", server.log());
    let after = shown_pids(&gunicornc_json(&server, "show workers"));
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );

    let unknown = gunicornc(&server, "dance", false);
    assert_eq!(unknown.code, Some(1), "{}", unknown.stdout);
    assert!(
        unknown.stderr.contains("Unknown command"),
        "{}",
        unknown.stderr
    );

    let down = gunicornc_json(&server, "shutdown");
    assert_eq!(down, json!({"status": "shutting_down", "mode": "graceful"}));
    assert_eq!(
        server.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        server.log()
    );
}

/// Gunicorn's framing on the raw socket: two messages in one write are both answered;
/// a length past the limit is answered and the connection closed, as the stream cannot
/// be followed; rgun's own JSON lines still work on another connection.
#[test]
fn gunicorn_framing_on_the_raw_socket() {
    let server = ServerBuilder::new("echo:application").workers(1).start();
    let frame = |v: Value| {
        let payload = v.to_string();
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(payload.as_bytes());
        out
    };
    let read_frame = |s: &mut UnixStream| -> Option<Value> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).ok()?;
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut payload).ok()?;
        Some(serde_json::from_slice(&payload).expect("an answer is JSON"))
    };
    let mut s = UnixStream::connect(&server.ctl_path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut two = frame(json!({"id": 7, "command": "show stats", "args": []}));
    two.extend(frame(
        json!({"id": 8, "command": "worker", "args": ["kill"]}),
    ));
    s.write_all(&two).unwrap();
    let stats = read_frame(&mut s).expect("an answer to show stats");
    assert_eq!(
        (&stats["id"], &stats["status"]),
        (&json!(7), &json!("ok")),
        "{stats}"
    );
    let bad = read_frame(&mut s).expect("an answer to worker kill");
    assert_eq!(
        (&bad["id"], &bad["status"]),
        (&json!(8), &json!("error")),
        "{bad}"
    );

    s.write_all(&[0x00, 0x10, 0x00, 0x00, b'{']).unwrap();
    let too_large = read_frame(&mut s).expect("an answer to an oversized length");
    assert_eq!(too_large["status"], json!("error"), "{too_large}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the connection stays open after an oversized length"
    );

    assert!(ping_ok(&server.ctl_path), "rgun's own protocol broke");
}
