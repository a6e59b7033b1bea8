//! The control socket file (its mode, stale and live sockets, removal on stop) and
//! `rgunctl`'s command line (exit codes, output, socket selection, man page).

use super::*;

// ---------------------------------------------------------------------------------
// The socket file
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
    // It says what happens: whose stop, how many workers, how long they have.
    let said = format!(
        "stopping rgun (pid {}): 2 workers finish the requests in flight within 30 s",
        server.pid()
    );
    assert_eq!(run.stdout.trim(), said);
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!server.ctl_path.exists(), "socket left behind");
    for w in workers {
        assert!(proc_state(w).is_none(), "worker {w} outlived the master");
    }
}

// ---------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------

#[test]
fn rgunctl_exit_codes_output_and_socket_selection() {
    let server = ServerBuilder::new("echo:application").workers(2).start();

    exit_0_with_human_and_json_output(&server);
    exit_1_2_and_3_say_why(&server);

    // Socket selection (`missing`: a path with no socket): RGUN_CONTROL_SOCKET, and -s
    // over it.
    let missing = server.dir.path().join("nope").join("x.ctl");
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

/// Exit status 0: human output, `--json`'s raw result, `status`'s master line and
/// worker rows, and the other commands.
fn exit_0_with_human_and_json_output(server: &Server) {
    // 0: ok, human output.
    let run = ctl(server, &["ping"]);
    run.assert_ok("ping");
    assert!(
        run.stdout.contains("pong") && run.stdout.contains(&server.pid().to_string()),
        "{}",
        run.stdout
    );

    // --json prints the raw result.
    let run = ctl(server, &["--json", "ping"]);
    run.assert_ok("--json ping");
    assert_eq!(run.json()["pid"], json!(server.pid()));
    let run = ctl(server, &["--json", "status"]);
    run.assert_ok("--json status");
    let st = run.json();
    assert_eq!(st["master"]["pid"], json!(server.pid()));
    assert_eq!(st["workers"].as_array().map(Vec::len), Some(2));

    // status: a master line and one row per worker.
    let run = ctl(server, &["status"]);
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
    let run = ctl(server, &["config"]);
    run.assert_ok("config");
    assert!(run.stdout.contains("echo:application"), "{}", run.stdout);
    ctl(server, &["history"]).assert_ok("history");
    let run = ctl(server, &["reopen-logs"]);
    run.assert_ok("reopen-logs");
    assert!(run.stdout.contains("reopened"), "{}", run.stdout);
    let run = ctl(server, &["scale", "+1"]);
    run.assert_ok("scale +1");
    assert!(run.stdout.contains("2 -> 3"), "{}", run.stdout);
    let run = ctl(server, &["scale", "-1", "--wait"]);
    run.assert_ok("scale -1 --wait");
    assert_eq!(server.worker_pids().len(), 2);
}

/// Exit status 1: the daemon answered with an error (on stderr); 2: usage; 3: cannot
/// connect, the message naming the path and the OS error.
fn exit_1_2_and_3_say_why(server: &Server) {
    // 1: the daemon answered with an error; the message is on stderr.
    let run = ctl(server, &["kill", "1"]);
    assert_eq!(run.code, Some(1), "{} {}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("no worker with pid 1"),
        "{}",
        run.stderr
    );
    let run = ctl(server, &["scale", "-5"]);
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
        let run = ctl(server, args);
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
}

// ---------------------------------------------------------------------------------
// forbidden: a peer that is neither the daemon's uid nor root
// ---------------------------------------------------------------------------------

#[test]
fn another_uid_is_forbidden() {
    if !crate::support::running_as_root("another_uid_is_forbidden") {
        return;
    }
    const NOBODY: u32 = 65534;
    // The build may live where nobody cannot enter (a checkout under a 0700
    // directory): run a copy of rgunctl from a directory everyone can reach.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("rgunctl");
    std::fs::copy(native_rgunctl(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |path: &Path, args: &[&str]| {
        let mut cmd = with_rgunctl_args(Command::new(&bin), Some(path), args);
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
fn rgunctl_into_a_closed_pipe_exits_quietly() {
    // Regression: `rgunctl status | true` panicked (exit 101 and a backtrace).
    let server = ServerBuilder::new("echo:application").start();
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["generate", "man"],
        &["generate", "bash"],
    ] {
        let mut cmd = rgunctl_cmd(Some(&server.ctl_path), args);
        let out = cmd
            .stdin(Stdio::null())
            .stdout(crate::support::closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
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
fn rgunctl_takes_its_global_flags_after_the_command_too() {
    let server = ServerBuilder::new("echo:application").workers(2).start();
    let sock = server.ctl_path.to_str().unwrap();
    let before = run_bounded(
        rgunctl_cmd(None, &["-s", sock, "--json", "--timeout", "5", "status"]),
        Duration::from_secs(30),
    );
    before.assert_ok("flags before");
    for args in [
        &["status", "--json", "-s", sock][..],
        &["status", "-s", sock, "--json", "--timeout", "5"],
        &["--json", "status", "--socket", sock],
    ] {
        let run = run_bounded(rgunctl_cmd(None, args), Duration::from_secs(30));
        run.assert_ok(&format!("{args:?}"));
        assert_eq!(run.json()["master"]["pid"], json!(server.pid()), "{args:?}");
        let pids = |v: &Value| -> Vec<Value> {
            v["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["pid"].clone())
                .collect()
        };
        assert_eq!(pids(&run.json()), pids(&before.json()), "{args:?}");
    }
    // A flag's value is checked wherever it stands.
    let run = run_bounded(
        rgunctl_cmd(None, &["ping", "-s", sock, "--timeout", "soon"]),
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(2), "{} {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("--timeout"), "{}", run.stderr);
    // watch --json after the command: JSON lines, the first made from the answer.
    let mut child = rgunctl_cmd(None, &["watch", "--json", "-s", sock])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run rgunctl watch");
    let mut first = String::new();
    let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut first);
    let _ = child.kill();
    let _ = child.wait();
    read.expect("read watch's first line");
    let first: Value = serde_json::from_str(&first).expect("watch --json prints JSON");
    assert_eq!(first["event"], json!("watching"));
    assert_eq!(first["pid"], json!(server.pid()));
}
