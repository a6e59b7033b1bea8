//! The errors the router answers with, named as `gunicorn.dirty.errors` names them:
//! the client raises the class an error frame's `error_type` names, with its
//! `message` and `details`.

use super::frame::{self, Kind};
use super::tlv::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyErrorKind {
    Dirty,
    Timeout,
    Worker,
    NoWorkersAvailable,
    StashKeyNotFound,
    StashTableNotFound,
}

impl DirtyErrorKind {
    pub fn class(self) -> &'static str {
        match self {
            DirtyErrorKind::Dirty => "DirtyError",
            DirtyErrorKind::Timeout => "DirtyTimeoutError",
            DirtyErrorKind::Worker => "DirtyWorkerError",
            DirtyErrorKind::NoWorkersAvailable => "DirtyNoWorkersAvailableError",
            DirtyErrorKind::StashKeyNotFound => "StashKeyNotFoundError",
            DirtyErrorKind::StashTableNotFound => "StashTableNotFoundError",
        }
    }
}

/// An error frame for request `id`.
pub fn error_frame(
    id: u64,
    kind: DirtyErrorKind,
    message: &str,
    details: Vec<(String, Value)>,
) -> Vec<u8> {
    let error = Value::dict([
        ("error_type", Value::str(kind.class())),
        ("message", Value::str(message)),
        ("details", Value::Dict(details)),
    ]);
    frame::encode_value(Kind::Error, id, &Value::dict([("error", error)]))
}

/// A call ran past `--dirty-timeout`.
pub fn timed_out(id: u64, timeout_secs: u64) -> Vec<u8> {
    error_frame(
        id,
        DirtyErrorKind::Timeout,
        "Worker timeout",
        vec![("timeout".into(), Value::Int(timeout_secs as i64))],
    )
}

/// The worker running a call died (or its link broke) before answering.
pub fn worker_lost(id: u64, pid: i32, why: &str) -> Vec<u8> {
    error_frame(
        id,
        DirtyErrorKind::Worker,
        &format!("Worker communication failed: {why}"),
        vec![("worker_id".into(), Value::Int(i64::from(pid)))],
    )
}

/// No worker holds the app (or there are none at all).
pub fn no_workers(id: u64, app_path: &str, any_workers: bool) -> Vec<u8> {
    if !any_workers {
        return error_frame(
            id,
            DirtyErrorKind::Dirty,
            "No dirty workers available",
            Vec::new(),
        );
    }
    error_frame(
        id,
        DirtyErrorKind::NoWorkersAvailable,
        &format!("No workers available for app: {app_path}"),
        vec![("app_path".into(), Value::str(app_path))],
    )
}
