//! `--reload` in development, over a real rgun: each engine (`--reload-engine poll`,
//! `inotify`, `auto`) replaces the worker when the application's source changes, the
//! inotify one through a kernel inotify descriptor in the worker (seen in /proc), the
//! poll one without; `--reload-extra-file` literal paths and glob patterns (`*`, `?`,
//! `[`, `**`), a pattern's file created after start-up watched from then on (its
//! creation is no change, its first edit is), a pattern matching nothing warned of.

use std::path::Path;
use std::time::Duration;

use crate::support::{wait_until, Server, ServerBuilder};

/// Writes `path` as an editor's save does (a new file renamed over the old one) when
/// `atomic`, else in place.
fn write(path: &Path, text: &str, atomic: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if atomic {
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    } else {
        std::fs::write(path, text).unwrap();
    }
}

fn app_source(version: &str) -> String {
    format!("def application(e, sr):\n    sr('200 OK', [])\n    return [b'{version}']\n")
}

/// Whether process `pid` holds an inotify descriptor.
fn holds_inotify(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:inotify")
        })
}

fn the_worker(s: &Server) -> i32 {
    let pids = s.worker_pids();
    assert_eq!(pids.len(), 1, "{pids:?}\n{}", s.log());
    pids[0]
}

/// Waits until a worker other than `old` serves; returns it.
fn replaced(s: &Server, old: i32, why: &str) -> i32 {
    let mut new = old;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let pids = s.worker_pids();
            new = pids.first().copied().unwrap_or(old);
            pids.len() == 1 && new != old && s.get("/").status == 200
        }),
        "the worker was not replaced after {why}:\n{}",
        s.log()
    );
    new
}

/// Waits a while and checks the worker is still `pid`.
fn kept(s: &Server, pid: i32, why: &str) {
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        s.worker_pids(),
        [pid],
        "{why} replaced the worker:\n{}",
        s.log()
    );
}

#[test]
fn every_reload_engine_replaces_the_worker_when_the_source_changes() {
    for (engine, kernel) in [("poll", false), ("inotify", true), ("auto", true)] {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("live_app.py");
        write(&source, &app_source("one"), true);
        let s = ServerBuilder::new("live_app:application")
            .args(["--reload", "--reload-engine", engine])
            .args(["--chdir", dir.path().to_str().unwrap()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .start();
        assert_eq!(s.get("/").text(), "one");
        let worker = the_worker(&s);
        assert_eq!(
            holds_inotify(worker),
            kernel,
            "{engine}: the worker's inotify descriptor"
        );
        // Modification times have a granularity; make sure the new one differs.
        std::thread::sleep(Duration::from_millis(1100));
        write(&source, &app_source("two"), engine != "inotify");
        replaced(&s, worker, &format!("{engine}: an edit"));
        assert_eq!(s.get("/").text(), "two", "{engine}");
        let line = format!("Worker reloading: {} modified", source.display());
        assert!(
            s.log().contains(&line),
            "{engine}: no {line:?} in\n{}",
            s.log()
        );
    }
}

#[test]
fn reload_extra_files_and_patterns_are_watched_and_re_expanded() {
    for engine in ["inotify", "poll"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join("live_app.py"), &app_source("app"), true);
        write(&d.join("settings.toml"), "a = 1\n", false);
        write(&d.join("templates/base.html"), "base\n", false);
        write(&d.join("conf/x1.ini"), "\n", false);
        let s = ServerBuilder::new("live_app:application")
            .args(["--reload", "--reload-engine", engine])
            .args(["--chdir", d.to_str().unwrap()])
            .args([
                "--reload-extra-file",
                d.join("settings.toml").to_str().unwrap(),
            ])
            .args([
                "--reload-extra-file",
                &format!("{}/templates/**/*.html", d.display()),
            ])
            .args([
                "--reload-extra-file",
                &format!("{}/conf/x?.[it]ni", d.display()),
            ])
            .args([
                "--reload-extra-file",
                &format!("{}/static/*.css", d.display()),
            ])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .start();
        let warning = format!(
            "--reload-extra-file: pattern {}/static/*.css currently matches no files",
            d.display()
        );
        assert!(
            s.log().contains(&warning),
            "{engine}: no warning in\n{}",
            s.log()
        );
        let mut worker = the_worker(&s);

        // A literal path.
        std::thread::sleep(Duration::from_millis(1100));
        write(&d.join("settings.toml"), "a = 2\n", false);
        worker = replaced(&s, worker, &format!("{engine}: settings.toml edited"));

        // `?` and `[`.
        std::thread::sleep(Duration::from_millis(1100));
        write(&d.join("conf/x1.ini"), "changed\n", false);
        worker = replaced(&s, worker, &format!("{engine}: conf/x1.ini edited"));

        // `**`: a file created after start-up, two directories down, is no change;
        // once the next check has found it, its first edit is.
        let late = d.join("templates/blog/2026/post.html");
        write(&late, "draft\n", false);
        kept(
            &s,
            worker,
            &format!("{engine}: creating {}", late.display()),
        );
        write(&late, "published\n", false);
        worker = replaced(&s, worker, &format!("{engine}: the late file edited"));
        let line = format!("Worker reloading: {} modified", late.display());
        assert!(
            s.log().contains(&line),
            "{engine}: no {line:?} in\n{}",
            s.log()
        );

        // Files the patterns do not match are no change.
        write(&d.join("templates/notes.txt"), "x\n", false);
        write(&d.join("conf/x10.ini"), "x\n", false);
        std::thread::sleep(Duration::from_millis(1100));
        write(&d.join("templates/notes.txt"), "y\n", false);
        write(&d.join("conf/x10.ini"), "y\n", false);
        kept(&s, worker, &format!("{engine}: files outside the patterns"));
    }
}

#[test]
fn a_missing_extra_file_is_refused_at_start() {
    let out = std::process::Command::new(crate::support::rgun_bin())
        .args([
            "--reload",
            "--reload-extra-file",
            "/nonexistent/rgun/settings.toml",
        ])
        .arg("pep3333:application")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
}
