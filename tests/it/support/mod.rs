//! Shared test helpers: start a real `rgun` on an ephemeral loopback port (handed over
//! as `fd://3`, so there is no port race), wait for its workers through its log, talk
//! HTTP over real sockets, and stop what we started by pid.
//!
//! The `rgun` and `rgunctl` under test are what users run: the console scripts of
//! `./.venv`, where `scripts/test` installed this checkout with pip (beside the pinned
//! Flask and Django). A missing or out-of-date install fails the test that needs it.
//!
//! Here: where things are (the venv, its console scripts, the test apps) and small
//! waits and skips. `server` starts and stops a server, `ctl` runs `rgunctl`, `http`
//! reads HTTP/1 responses, `http2` holds HTTP/2 clients, `process` looks at processes.

#![allow(dead_code)]

mod ctl;
mod http;
mod http2;
mod process;
mod server;

pub use ctl::*;
pub use http::*;
pub use http2::*;
pub use process::*;
pub use server::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project venv made by `scripts/test`: rgun installed from this checkout, Flask,
/// Django. Panics when it is missing or its rgun is older than the sources.
pub fn venv() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let v = repo_root().join(".venv");
            let stamp = v.join(".rgun-installed");
            let installed = std::fs::metadata(&stamp)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| {
                    panic!(
                        "{} is missing: run ./scripts/test, which installs rgun into ./.venv",
                        stamp.display()
                    )
                });
            let newest = newest_source(&repo_root());
            if let Some((path, _)) = newest.filter(|(_, m)| *m > installed) {
                panic!(
                    "./.venv's rgun is older than {}: run ./scripts/test, which reinstalls it",
                    path.display()
                );
            }
            v
        })
        .clone()
}

/// The newest file among the sources that go into the installed package.
fn newest_source(root: &Path) -> Option<(PathBuf, std::time::SystemTime)> {
    let mut newest: Option<(PathBuf, std::time::SystemTime)> = None;
    let mut dirs: Vec<PathBuf> = ["src", "ctl/src", "python"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let mut files = vec![root.join("Cargo.toml"), root.join("pyproject.toml")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for path in files {
        let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
            continue;
        };
        if newest.as_ref().is_none_or(|(_, m)| modified > *m) {
            newest = Some((path, modified));
        }
    }
    newest
}

/// The installed `rgun` console script.
pub fn rgun_bin() -> PathBuf {
    venv().join("bin").join("rgun")
}

/// The installed `rgunctl` console script.
pub fn rgunctl_bin() -> PathBuf {
    venv().join("bin").join("rgunctl")
}

/// Gunicorn, pinned in tests/requirements.txt, to compare with.
pub fn gunicorn_bin() -> PathBuf {
    venv().join("bin").join("gunicorn")
}

/// A command that runs the installed `rgun`.
pub fn rgun() -> Command {
    Command::new(rgun_bin())
}

pub fn apps_dir() -> PathBuf {
    repo_root().join("tests").join("apps")
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// The venv's Python run as `python -c CODE ARGS` in `dir`; panics with its stderr
/// unless it succeeds; returns its stdout.
pub fn venv_python(code: &str, args: &[&std::ffi::OsStr], dir: &Path) -> Vec<u8> {
    let mut cmd = Command::new(venv().join("bin").join("python"));
    cmd.arg("-c").arg(code).args(args).current_dir(dir);
    succeeding(cmd, &format!("python -c {code:?}")).stdout
}

/// What `cmd` did, once it has succeeded (a panic naming it `what`, with its stderr,
/// otherwise).
#[track_caller]
pub fn succeeding(mut cmd: Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `cmd` (an `rgun`) with `-c CONF --print-config demo.app:application`, run in the
/// checkout; what it did.
pub fn print_config_of(mut cmd: Command, conf: &Path) -> std::process::Output {
    cmd.args([
        "-c",
        conf.to_str().unwrap(),
        "--print-config",
        "demo.app:application",
    ])
    .current_dir(repo_root())
    .output()
    .unwrap()
}

/// The text of the file at `path` once it contains `needle`, or as it is after 10 s.
pub fn wait_for_file(path: &Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || start.elapsed() > Duration::from_secs(10) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that less than `limit` has passed since `started` (the time taken in the
/// message otherwise).
#[track_caller]
pub fn assert_within(started: Instant, limit: Duration) {
    let took = started.elapsed();
    assert!(took < limit, "{took:?}");
}

/// Polls `f` every 50 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The `--print-config` line for `name` ends with `= value`.
pub fn has_setting(printed: &str, name: &str, value: &str) -> bool {
    printed
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name) && l.ends_with(&format!("= {value}")))
}

/// A stdout whose reader has already gone (`cmd | true`): every write fails with EPIPE.
pub fn closed_pipe() -> Stdio {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    Stdio::from(write)
}

/// Says that `test` skips the rest of its body because `reason`, where the test run's
/// output shows it (libtest hides what a passing test prints with `eprintln!`; this
/// writes to the real stderr). Under CI (`CI` or `RGUN_NO_SKIP` set, as `.ci/run`
/// does) a skip is a failure instead: CI runs as root with what the tests need
/// installed by `scripts/test`.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() || std::env::var_os("RGUN_NO_SKIP").is_some() {
        panic!("{test} must run in CI, but {reason}");
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
}

/// True when running as root; otherwise says `test` is skipped (see [`skip`]).
pub fn running_as_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip(test, "it needs root");
    }
    root
}
