//! rgun beside Gunicorn: each test starts rgun and Gunicorn 27 (the venv's, pinned in
//! tests/requirements.txt) on the same application with the same flags, makes the same
//! observation of both over real sockets, and compares. These are the rows
//! docs/gunicorn-compat.md may call "same".

mod access_log;
mod dirty;
mod errors;
mod forwarder;
mod lifecycle;
mod logging;
mod procfile;
mod reload_logging;
mod settings;
mod startup;

use crate::support::{Server, ServerBuilder};

/// The application both servers run (`tests/apps/compat_app.py`).
const APP: &str = "compat_app:application";

/// rgun and Gunicorn, each started with `args` on `app`.
fn both(app: &str, args: &[&str]) -> [(&'static str, Server); 2] {
    let builder = || ServerBuilder::new(app).args(args.iter().copied());
    [
        ("rgun", builder().start()),
        ("gunicorn", builder().gunicorn().start()),
    ]
}

/// One error-log record: its level and its text (the message's first line and every
/// line under it up to the next record), without the `[time] [pid] [LEVEL] ` prefix.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    pid: u32,
    level: String,
    lines: Vec<String>,
}

/// The records of a log in Gunicorn's error-log format.
fn records(log: &str) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for line in log.lines() {
        match record_head(line) {
            Some((pid, level, message)) => out.push(Record {
                pid,
                level: level.to_owned(),
                lines: vec![message.to_owned()],
            }),
            None => {
                if let Some(last) = out.last_mut() {
                    last.lines.push(line.to_owned());
                }
            }
        }
    }
    out
}

/// `[2026-01-01 12:00:00 +0000] [123] [ERROR] text` as `(123, "ERROR", "text")`.
fn record_head(line: &str) -> Option<(u32, &str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (_time, rest) = rest.split_once("] [")?;
    let (pid, rest) = rest.split_once("] [")?;
    let (level, message) = rest.split_once("] ")?;
    Some((pid.parse().ok()?, level, message))
}

/// Waits (bounded) until `server`'s error log has a record whose text contains
/// `needle`, and returns it.
fn wait_for_record(server: &Server, needle: &str) -> Record {
    let mut found = None;
    crate::support::wait_until(std::time::Duration::from_secs(10), || {
        found = records(&server.log())
            .into_iter()
            .find(|r| r.lines.iter().any(|l| l.contains(needle)));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no record with {needle:?} in:\n{}", server.log()))
}

/// `text` with each run of digits written `N` (pids, ports, versions, times differ).
fn digits_as_n(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('N') {
            out.push('N');
        }
    }
    out
}
