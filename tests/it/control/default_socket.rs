//! The control socket's default path: without `--control-socket`, each instance's
//! socket is named after its first listener in a directory private to the user
//! (`$XDG_RUNTIME_DIR/rgun/` here), so two instances started from the same project
//! directory both run and leave nothing in it, and `rgunctl` run from anywhere finds
//! the one that runs, lists them when there are several, and says where it looked.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{run_bounded, CtlRun};
use crate::support::{pass_as_fd3, repo_root, rgun_bin, rgunctl_bin, wait_until};

/// An rgun started without `--control-socket` from `project`, its runtime directory
/// `runtime`; killed on drop.
struct Instance {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Instance {
    fn start(project: &Path, runtime: &Path, name: &str) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = project.join(format!("{name}.log"));
        let mut cmd = Command::new(rgun_bin());
        cmd.args(["-b", "fd://3", "--error-logfile"])
            .arg(&log)
            .args(["--pythonpath"])
            .arg(repo_root())
            .arg("demo.app:application")
            .current_dir(project)
            .env("XDG_RUNTIME_DIR", runtime)
            .env_remove("RUNTIME_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pass_as_fd3(&mut cmd, &listener);
        let child = cmd.spawn().expect("spawn rgun");
        drop(listener);
        let me = Instance { child, port, log };
        assert!(
            wait_until(Duration::from_secs(30), || me
                .log()
                .contains("All 1 workers ready")),
            "{}",
            me.log()
        );
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: signalling the process this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        if !wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `rgunctl ARGS` run from `/` with no socket named, and `runtime` as its runtime
/// directory.
fn rgunctl_from_elsewhere(runtime: &Path, args: &[&str]) -> CtlRun {
    let mut cmd = Command::new(rgunctl_bin());
    cmd.args(args)
        .current_dir("/")
        .env("XDG_RUNTIME_DIR", runtime)
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("RGUN_CONTROL_SOCKET");
    run_bounded(cmd, Duration::from_secs(60))
}

#[test]
fn instances_get_their_own_socket_and_rgunctl_finds_them_from_anywhere() {
    let project = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let sockets = runtime.path().join("rgun");

    // Nothing runs: rgunctl says where it looked and how to point it elsewhere.
    let none = rgunctl_from_elsewhere(runtime.path(), &["status"]);
    assert_eq!(none.code, Some(3), "{}", none.stderr);
    assert!(
        none.stderr.contains(&sockets.display().to_string())
            && none.stderr.contains("-s PATH or RGUN_CONTROL_SOCKET"),
        "{}",
        none.stderr
    );

    // Two instances from the same directory: both run, each with its own socket.
    let first = Instance::start(project.path(), runtime.path(), "first");
    let second = Instance::start(project.path(), runtime.path(), "second");
    for i in [&first, &second] {
        let path = sockets.join(format!("127.0.0.1:{}.ctl", i.port));
        assert!(
            i.log()
                .contains(&format!("Control socket: {}", path.display())),
            "{}",
            i.log()
        );
    }
    let mode = std::fs::metadata(&sockets).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    // Nothing is left in the project's directory but the logs.
    let litter: Vec<_> = std::fs::read_dir(project.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".log"))
        .collect();
    assert!(litter.is_empty(), "{litter:?}");

    // Two running: rgunctl lists them rather than pick one.
    let two = rgunctl_from_elsewhere(runtime.path(), &["status"]);
    assert_eq!(two.code, Some(3), "{}", two.stderr);
    for i in [&first, &second] {
        assert!(
            two.stderr.contains(&format!("127.0.0.1:{}.ctl", i.port)),
            "{}",
            two.stderr
        );
    }

    // One left: rgunctl, from anywhere, talks to it.
    drop(second);
    let one = rgunctl_from_elsewhere(runtime.path(), &["--json", "status"]);
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    assert_eq!(
        one.json()["master"]["pid"],
        serde_json::json!(first.child.id()),
        "{}",
        one.stdout
    );
}

#[test]
fn a_socket_directory_others_can_enter_is_not_used() {
    // Someone else's (or a careless) directory: rgun serves without a control socket
    // and says why, rather than put its socket where others can reach it.
    let project = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let sockets = runtime.path().join("rgun");
    std::fs::create_dir(&sockets).unwrap();
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o777)).unwrap();
    let i = Instance::start(project.path(), runtime.path(), "open");
    let log = i.log();
    assert!(
        log.contains("no control socket:") && log.contains("--control-socket"),
        "{log}"
    );
    assert!(!log.contains("Control socket: "), "{log}");
    assert_eq!(std::fs::read_dir(&sockets).unwrap().count(), 0);
}

/// `gunicornc` without `-s` looks at Gunicorn's default path
/// (`$XDG_RUNTIME_DIR/gunicorn.ctl`): the first instance links its socket there, a
/// second leaves the link to the first, and the link goes with the instance.
#[test]
fn gunicornc_finds_rgun_at_gunicorns_default_path() {
    let project = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let alias = runtime.path().join("gunicorn.ctl");
    let gunicornc = || {
        let mut cmd = Command::new(crate::support::venv().join("bin").join("gunicornc"));
        cmd.args(["-c", "show stats", "-j"])
            .current_dir("/")
            .env("XDG_RUNTIME_DIR", runtime.path());
        run_bounded(cmd, Duration::from_secs(60))
    };

    let first = Instance::start(project.path(), runtime.path(), "first");
    let second = Instance::start(project.path(), runtime.path(), "second");
    assert!(
        first
            .log()
            .contains(&format!("Control socket also at {}", alias.display())),
        "{}",
        first.log()
    );
    assert!(
        second
            .log()
            .contains("Control socket not linked for gunicornc"),
        "{}",
        second.log()
    );
    let stats = gunicornc();
    stats.assert_ok("gunicornc show stats");
    assert_eq!(
        stats.json()["pid"],
        serde_json::json!(first.child.id()),
        "{}",
        stats.stdout
    );

    drop(second);
    assert!(
        std::fs::symlink_metadata(&alias).is_ok(),
        "the second took the first's link"
    );
    drop(first);
    assert!(
        std::fs::symlink_metadata(&alias).is_err(),
        "the link outlived its instance"
    );
}
