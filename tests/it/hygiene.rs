//! Process hygiene and settings plumbing: pidfile, daemon mode, privilege drop,
//! GUNICORN_CMD_ARGS precedence, --check-config and --print-config.

use std::process::Command;
use std::time::Duration;

use crate::support::{
    has_setting, proc_ids, repo_root, running_as_root, wait_until, write_file, ServerBuilder,
};

#[test]
fn pidfile_is_written_refused_when_live_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("rgun.pid");
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .args(["-p", pidfile.to_str().unwrap()])
        .start();
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        s.pid().to_string()
    );
    // A second server with the same pidfile refuses to start.
    let out = crate::support::rgun()
        .args([
            "-b",
            "127.0.0.1:0",
            "--no-control-socket",
            "-p",
            pidfile.to_str().unwrap(),
            "demo.app:application",
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is rgun already running"));
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!pidfile.exists());
}

#[test]
fn daemon_mode_detaches_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("rgun.pid");
    let mut s = ServerBuilder::new("lifecycle_app:application")
        .args(["-D", "-p", pidfile.to_str().unwrap()])
        .no_wait()
        .start();
    assert_eq!(
        s.wait_exit(Duration::from_secs(10)),
        Some(0),
        "the foreground process exits at once"
    );
    s.wait_for_log("All 1 workers ready", Duration::from_secs(30));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, s.pid());
    assert_eq!(s.get("/").text(), "ok");
    // WINCH in daemon mode stops the workers and keeps the master; TTIN brings one back.
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid, libc::SIGWINCH) };
    assert!(
        wait_until(Duration::from_secs(10), || crate::support::children_of(pid)
            .is_empty()),
        "workers still running"
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTTIN) };
    assert!(
        wait_until(Duration::from_secs(10), || crate::support::children_of(pid)
            .len()
            == 1),
        "no worker after TTIN"
    );
    s.wait_for_log("All 1 workers ready", Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(10), || s
        .request(b"GET / HTTP/1.0\r\n\r\n")
        .status
        == 200));
    // SAFETY: stopping the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(10), || !pidfile.exists()),
        "daemon did not stop"
    );
}

/// The id of group `name`, as /proc writes it.
fn group_id(name: &str) -> String {
    let group = nix::unistd::Group::from_name(name).unwrap().unwrap();
    group.gid.as_raw().to_string()
}

/// The id of user `name`, as /proc writes it.
fn user_id(name: &str) -> String {
    let user = nix::unistd::User::from_name(name).unwrap().unwrap();
    user.uid.as_raw().to_string()
}

#[test]
fn workers_drop_privileges_when_root() {
    if !running_as_root("workers_drop_privileges_when_root") {
        return;
    }
    if !world_can_reach(&python_stdlib()) || !world_can_reach(&repo_root().join("tests/apps")) {
        // e.g. a pyenv Python under /root (mode 0700): nobody could not import
        // anything. Drop only the group then, which root can still read with.
        let s = ServerBuilder::new("lifecycle_app:application")
            .args(["-g", "nogroup"])
            .start();
        let nogroup = group_id("nogroup");
        let gids = proc_ids(s.worker_pids()[0], "Gid:");
        assert!(gids.iter().all(|g| *g == nogroup), "{gids:?}");
        assert_eq!(s.get("/").text(), "ok");
        return;
    }
    let s = ServerBuilder::new("lifecycle_app:application")
        .args(["-u", "nobody", "-g", "nogroup"])
        .start();
    let nobody = user_id("nobody");
    let uids = proc_ids(s.worker_pids()[0], "Uid:");
    assert!(uids.iter().all(|u| *u == nobody), "{uids:?}");
    assert_eq!(s.get("/").text(), "ok");
    // The master keeps its identity (it may need to bind and signal).
    let master = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    assert!(master.lines().any(|l| l.starts_with("Uid:\t0")));
}

#[test]
fn gunicorn_cmd_args_sit_below_the_command_line() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .env(
            "GUNICORN_CMD_ARGS",
            "--workers 3 --keep-alive 7 --log-level 'debug'",
        )
        .workers(2)
        .start();
    // -w 2 on the command line wins over the environment's 3.
    assert_eq!(s.worker_pids().len(), 2);
    assert!(
        s.log().contains("[DEBUG]"),
        "the environment's --log-level applies"
    );
}

#[test]
fn check_config_imports_the_app() {
    let run = |app: &str| {
        crate::support::rgun()
            .args(["--check-config", "--pythonpath", "tests/apps", app])
            .current_dir(repo_root())
            .output()
            .unwrap()
    };
    let ok = run("lifecycle_app:application");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = run("broken_app:application");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("No module named 'this_module_does_not_exist'"));
}

#[test]
fn print_config_shows_effective_settings() {
    let out = crate::support::rgun()
        .args([
            "--print-config",
            "-w",
            "3",
            "--keep-alive",
            "5",
            "demo.app:application",
        ])
        .env("GUNICORN_CMD_ARGS", "--threads 2")
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in ["workers", "keepalive", "threads", "wsgi_app"] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "{line} missing:\n{text}"
        );
    }
    assert!(
        text.contains("= 3") && text.contains("= 5") && text.contains("= 2"),
        "{text}"
    );
}

#[test]
fn print_config_lists_every_setting_and_hook_as_gunicorn_does() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        "workers = 2\nraw_env = ['A=1']\ndef post_fork(server, worker):\n    pass\n",
    )
    .unwrap();
    let out = crate::support::print_config_of(crate::support::rgun(), &conf);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split(" = ").next().unwrap().trim_end())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(names, sorted, "sorted, each once:\n{text}");
    for (name, _, _) in rgun::config::file::SETTINGS {
        assert!(names.contains(name), "{name} missing:\n{text}");
    }
    for (hook, _) in rgun::config::file::HOOKS {
        assert!(names.contains(hook), "hook {hook} missing:\n{text}");
    }
    // Gunicorn's spelling: a defined hook by its name, the others by Gunicorn's default;
    // Python values (None, True, lists).
    for (name, value) in [
        ("post_fork", "<post_fork()>"),
        ("pre_fork", "<Prefork.pre_fork()>"),
        ("workers", "2"),
        ("raw_env", "['A=1']"),
        ("pidfile", "None"),
        ("reuse_port", "False"),
        ("wsgi_app", "demo.app:application"),
    ] {
        assert!(has_setting(&text, name, value), "{name} = {value}:\n{text}");
    }
    // Aligned like Gunicorn's: every " = " in the same column.
    let column = text
        .lines()
        .map(|l| l.find(" = ").unwrap())
        .collect::<Vec<_>>();
    assert!(column.windows(2).all(|w| w[0] == w[1]), "{text}");
}

#[test]
fn print_config_into_a_closed_pipe_exits_quietly() {
    // Regression: `rgun --print-config | head -1` panicked (exit 101, a backtrace), as
    // did `rgun --generate ...`.
    for args in [
        &["--print-config", "demo.app:application"][..],
        &["--generate", "man"],
        &["--generate", "bash"],
        &["--generate", "config-reference"],
    ] {
        let out = crate::support::rgun()
            .args(args)
            .current_dir(repo_root())
            .stdout(crate::support::closed_pipe())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

fn python_stdlib() -> std::path::PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .unwrap();
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Every directory from / down to `path` is searchable by other users.
fn world_can_reach(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().all(|p| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

#[test]
fn systemd_socket_activation_uses_listen_fds() {
    let s = ServerBuilder::new("lifecycle_app:application")
        .systemd_activation()
        .start();
    assert_eq!(s.get("/").text(), "ok");
    s.assert_log_has("Using 1 socket(s) from systemd (LISTEN_FDS)");
}

#[test]
fn process_titles_name_master_and_workers() {
    let s = ServerBuilder::new("lifecycle_app:application").start();
    let cmdline = |pid: i32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
            .replace('\0', " ")
    };
    assert!(
        cmdline(s.pid()).starts_with("rgun: master [lifecycle_app:application]"),
        "{}",
        cmdline(s.pid())
    );
    let worker = s.worker_pids()[0];
    assert!(
        cmdline(worker).starts_with("rgun: worker [lifecycle_app:application]"),
        "{}",
        cmdline(worker)
    );
}

#[test]
fn umask_applies_to_files_the_server_creates() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let s = ServerBuilder::new("lifecycle_app:application")
        .own_bind()
        .args(["-b", &format!("unix:{}", sock.display()), "-m", "077"])
        .start();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "socket mode {mode:o} with umask 077");
    drop(s);
}

#[test]
fn reuse_port_lets_two_servers_share_a_port() {
    // Hold a port with SO_REUSEPORT, bound but not listening (so it takes no
    // connections), until both servers have it: no other socket can take it meanwhile.
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    probe.set_reuse_port(true).unwrap();
    probe
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = probe.local_addr().unwrap().as_socket().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let a = ServerBuilder::new("lifecycle_app:application")
        .own_bind()
        .args(["-b", &bind, "--reuse-port", "--backlog", "64"])
        .start();
    let b = ServerBuilder::new("lifecycle_app:application")
        .own_bind()
        .args(["-b", &bind, "--reuse-port"])
        .start();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::Write;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let r = crate::support::read_response(&mut std::io::BufReader::new(c), false).unwrap();
    assert_eq!(r.text(), "ok");
    drop((a, b, probe));
}

#[test]
fn a_low_port_bound_as_root_is_served_by_dropped_workers() {
    if !running_as_root("a_low_port_bound_as_root_is_served_by_dropped_workers") {
        return;
    }
    let Some(port) = (1000..1024).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
    else {
        crate::support::skip(
            "a_low_port_bound_as_root_is_served_by_dropped_workers",
            "no port under 1024 is free",
        );
        return;
    };
    let s = ServerBuilder::new("lifecycle_app:application")
        .own_bind()
        .args(["-b", &format!("127.0.0.1:{port}"), "-g", "nogroup"])
        .start();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::Write;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let r = crate::support::read_response(&mut std::io::BufReader::new(c), false).unwrap();
    assert_eq!(r.text(), "ok");
    let worker = s.worker_pids()[0];
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let nogroup = group_id("nogroup");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Gid:") && l.contains(&nogroup)),
        "{status}"
    );
}

#[test]
fn initgroups_sets_the_supplementary_groups_of_the_user() {
    if !running_as_root("initgroups_sets_the_supplementary_groups_of_the_user") {
        return;
    }
    // As root (the only user that can import this machine's Python), with a group:
    // initgroups gives the worker that group plus root's own memberships.
    let s = ServerBuilder::new("lifecycle_app:application")
        .args(["-u", "root", "-g", "nogroup", "--initgroups"])
        .start();
    let worker = s.worker_pids()[0];
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let nogroup = group_id("nogroup");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(groups.split_whitespace().any(|g| g == nogroup), "{groups}");
    assert_eq!(s.get("/").text(), "ok");
}

/// The processes that run user code beside the master — the configuration file's
/// evaluation (at start and again at each reload, when the master holds everything)
/// and the hook host — keep none of the master's descriptors: no listener, control
/// socket, worker pipe, poll instance or signal pipe. Each holds its own socket to the
/// master and nothing else past the standard streams.
#[test]
fn helper_processes_hold_none_of_the_masters_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("fds.log");
    let conf = write_file(
        dir.path(),
        "gunicorn.conf.py",
        &format!(
            r#"import os

def _fds(who):
    held = []
    for n in os.listdir("/proc/self/fd"):
        if int(n) > 2:
            try:
                held.append(os.readlink("/proc/self/fd/" + n))
            except OSError:
                pass  # the listing's own descriptor, closed by now
    with open({report:?}, "a") as f:
        title = open("/proc/self/cmdline").read().split("\0")[0]
        f.write(who + " " + title.replace(" ", "_") + " " + " ".join(sorted(held)) + "\n")

_fds("config")
wsgi_app = "lifecycle_app:application"

def when_ready(server):
    _fds("hook")
"#
        ),
    );
    let s = ServerBuilder::new("")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    let lines = |kind: &str| -> Vec<String> {
        std::fs::read_to_string(&report)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(kind))
            // Workers evaluate the file too (their hooks); they hold the listeners.
            .filter(|l| !l.contains("rgun:_worker"))
            .map(str::to_owned)
            .collect()
    };
    assert!(wait_until(Duration::from_secs(20), || !lines("hook ").is_empty()));
    s.signal(libc::SIGHUP);
    assert!(
        // The evaluation at the reload runs in a child of the running master, which
        // carries the master's title.
        wait_until(Duration::from_secs(20), || lines("config rgun:_master")
            .len()
            == 1),
        "no evaluation at the reload: {}",
        s.log()
    );
    for line in lines("config ").iter().chain(&lines("hook ")) {
        let held: Vec<&str> = line.split(' ').skip(1).collect();
        let sockets = held.iter().filter(|h| h.starts_with("socket:")).count();
        assert!(sockets <= 1, "more than its own socket: {line}");
        assert!(
            !held
                .iter()
                .any(|h| h.starts_with("anon_inode:") || h.starts_with("pipe:")),
            "a master descriptor: {line}"
        );
    }
}
