//! Control protocol v1: newline-delimited JSON over a Unix stream socket.
//!
//! Request `{"id": ANY, "cmd": NAME, ...args}`; response `{"id", "ok": true, "result"}`
//! or `{"id", "ok": false, "error": {"code", "message"}}`. This module turns a line
//! into a validated [`Command`] (or an [`ErrorBody`] saying why not) and builds
//! response lines; it does no I/O, so both sides test it in memory.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Longest request or response line, newline excluded.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownCommand,
    Busy,
    Failed,
    Forbidden,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

/// `scale` arguments: an absolute count or a relative change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleTarget {
    Workers(u32),
    Delta(i32),
    /// Up to this many fewer, keeping one (Gunicorn's `worker remove`; not in v1's
    /// JSON lines).
    Fewer(u32),
    /// Autoscaling decides again (after a count pinned it).
    Auto,
}

/// Most workers `scale` accepts.
pub const MAX_WORKERS: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ping,
    Status,
    Scale {
        target: ScaleTarget,
        wait: bool,
        /// The dirty pool's workers (`"pool": "dirty"`) rather than HTTP workers.
        dirty: bool,
    },
    Reload {
        wait: bool,
    },
    Stop {
        quick: bool,
    },
    ReopenLogs,
    Config,
    Kill {
        pid: i32,
    },
    History,
    /// The Prometheus text exposition, as `/metrics` serves it: `{"text"}`.
    Metrics,
    /// Subscribe this connection to events (`{"event": NAME, "time", ...}` lines).
    Watch,
    /// Python stacks of one worker (`pid`) or of every ready worker (`all`).
    Stack {
        pid: Option<i32>,
    },
}

/// Parses one request line. On error, returns the request's id (or null) with the
/// error to answer.
pub fn parse_request(line: &[u8]) -> Result<(Value, Command), (Value, ErrorBody)> {
    let bad = |id: Value, msg: String| (id, ErrorBody::new(ErrorCode::BadRequest, msg));
    let value: Value =
        serde_json::from_slice(line).map_err(|e| bad(Value::Null, format!("invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad(Value::Null, "a request must be a JSON object".into()));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let Some(cmd) = obj.get("cmd") else {
        return Err(bad(id, "missing \"cmd\"".into()));
    };
    let Some(cmd) = cmd.as_str() else {
        return Err(bad(id, "\"cmd\" must be a string".into()));
    };
    match parse_command(cmd, &obj) {
        Ok(c) => Ok((id, c)),
        Err(e) => Err((id, e)),
    }
}

fn parse_command(cmd: &str, obj: &Map<String, Value>) -> Result<Command, ErrorBody> {
    let known: &[&str] = match cmd {
        "ping" | "status" | "reopen_logs" | "config" | "history" | "metrics" | "watch" => &[],
        "scale" => &["workers", "delta", "auto", "wait", "pool"],
        "reload" => &["wait"],
        "stop" => &["mode"],
        "kill" => &["pid"],
        "stack" => &["pid", "all"],
        other => {
            return Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {other:?}"),
            ))
        }
    };
    if let Some(extra) = obj
        .keys()
        .find(|k| *k != "id" && *k != "cmd" && !known.contains(&k.as_str()))
    {
        return Err(bad_arg(format!("{cmd}: unknown argument {extra:?}")));
    }
    Ok(match cmd {
        "ping" => Command::Ping,
        "status" => Command::Status,
        "reopen_logs" => Command::ReopenLogs,
        "config" => Command::Config,
        "history" => Command::History,
        "metrics" => Command::Metrics,
        "watch" => Command::Watch,
        "scale" => parse_scale(obj)?,
        "reload" => Command::Reload {
            wait: opt_bool(obj, "wait", true)?,
        },
        "stop" => parse_stop(obj)?,
        "kill" => {
            let pid = obj
                .get("pid")
                .and_then(Value::as_i64)
                .filter(|p| *p > 0 && *p <= i32::MAX as i64)
                .ok_or_else(|| bad_arg("kill: \"pid\" must be a positive integer"))?;
            Command::Kill { pid: pid as i32 }
        }
        "stack" => match (obj.get("pid"), opt_bool(obj, "all", false)?) {
            (Some(_), true) => return Err(bad_arg("stack: give \"pid\" or \"all\", not both")),
            (None, false) => return Err(bad_arg("stack: needs \"pid\" or \"all\": true")),
            (None, true) => Command::Stack { pid: None },
            (Some(p), false) => {
                let pid = p
                    .as_i64()
                    .filter(|p| *p > 0 && *p <= i32::MAX as i64)
                    .ok_or_else(|| bad_arg("stack: \"pid\" must be a positive integer"))?;
                Command::Stack {
                    pid: Some(pid as i32),
                }
            }
        },
        _ => unreachable!("filtered above"),
    })
}

/// `scale`'s arguments: a count, a change or `auto`, whether to wait, which pool.
fn parse_scale(obj: &Map<String, Value>) -> Result<Command, ErrorBody> {
    let wait = opt_bool(obj, "wait", false)?;
    let auto = opt_bool(obj, "auto", false)?;
    let dirty = match obj.get("pool").map(|p| p.as_str()) {
        None | Some(Some("http")) => false,
        Some(Some("dirty")) => true,
        Some(_) => return Err(bad_arg("scale: \"pool\" is \"http\" or \"dirty\"")),
    };
    let target = match (obj.get("workers"), obj.get("delta")) {
        (Some(_), _) | (_, Some(_)) if auto => {
            return Err(bad_arg(
                "scale: give \"workers\", \"delta\" or \"auto\", not two",
            ))
        }
        (None, None) if auto => ScaleTarget::Auto,
        (Some(_), Some(_)) => {
            return Err(bad_arg("scale: give \"workers\" or \"delta\", not both"))
        }
        (Some(n), None) => {
            let n = n
                .as_u64()
                .filter(|n| (1..=MAX_WORKERS as u64).contains(n))
                .ok_or_else(|| {
                    bad_arg(format!(
                        "scale: \"workers\" must be an integer from 1 to {MAX_WORKERS}, got {n}"
                    ))
                })?;
            ScaleTarget::Workers(n as u32)
        }
        (None, Some(d)) => {
            let d = d
                .as_i64()
                .filter(|d| d.unsigned_abs() <= MAX_WORKERS as u64 && *d != 0)
                .ok_or_else(|| {
                    bad_arg(format!(
                        "scale: \"delta\" must be a non-zero integer, got {d}"
                    ))
                })?;
            ScaleTarget::Delta(d as i32)
        }
        (None, None) => {
            return Err(bad_arg(
                "scale: needs \"workers\", \"delta\" or \"auto\": true",
            ))
        }
    };
    Ok(Command::Scale {
        target,
        wait,
        dirty,
    })
}

/// `stop`'s `mode`: graceful (the default) or quick.
fn parse_stop(obj: &Map<String, Value>) -> Result<Command, ErrorBody> {
    let quick = match obj.get("mode") {
        None => false,
        Some(Value::String(m)) if m == "graceful" => false,
        Some(Value::String(m)) if m == "quick" => true,
        Some(other) => {
            return Err(bad_arg(format!(
                "stop: \"mode\" must be \"graceful\" or \"quick\", got {other}"
            )))
        }
    };
    Ok(Command::Stop { quick })
}

fn bad_arg(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, msg)
}

fn opt_bool(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ErrorBody> {
    match obj.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad_arg(format!(
            "{key:?} must be true or false, got {other}"
        ))),
    }
}

/// A success response line (with its trailing newline).
pub fn ok_line(id: &Value, result: Value) -> String {
    let mut s = json!({"id": id, "ok": true, "result": result}).to_string();
    s.push('\n');
    s
}

/// An error response line (with its trailing newline).
pub fn error_line(id: &Value, error: &ErrorBody) -> String {
    let mut s = json!({"id": id, "ok": false, "error": error}).to_string();
    s.push('\n');
    s
}

/// A request line (with its trailing newline), as the client sends it.
pub fn request_line(id: u64, cmd: &str, args: Map<String, Value>) -> String {
    let mut obj = args;
    obj.insert("id".into(), json!(id));
    obj.insert("cmd".into(), json!(cmd));
    let mut s = Value::Object(obj).to_string();
    s.push('\n');
    s
}

/// `status` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub master: MasterStatus,
    pub workers: Vec<WorkerStatus>,
    pub totals: Totals,
    /// Responses since the start, for rates and latency between two `status` answers
    /// (an addition to v1: absent from older masters).
    #[serde(default)]
    pub traffic: Option<Traffic>,
    /// TCP listeners' accept queues (an addition to v1; Unix sockets are not listed).
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
    /// The dirty pool, when one runs (an addition to v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty: Option<DirtyStatus>,
}

/// `status`'s dirty pool: the router, the workers and what each holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirtyStatus {
    /// The socket `gunicorn.dirty` clients reach (`GUNICORN_DIRTY_SOCKET`).
    pub socket: String,
    pub router_pid: Option<i32>,
    pub target: u32,
    pub workers: Vec<DirtyWorkerStatus>,
    /// Calls past `--dirty-timeout` whose workers were aborted.
    pub timeouts: u64,
    /// The router's counters: `calls`, `errors`, `timeouts`, `call_us` (summed
    /// durations), `queued`, `in_flight`.
    #[serde(default)]
    pub calls: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirtyWorkerStatus {
    pub pid: i32,
    pub generation: u32,
    /// Its place in the pool: which apps it is allotted.
    pub index: u32,
    /// `booting`, `ready` or `stopping`.
    pub state: String,
    pub apps: Vec<String>,
    pub age_s: f64,
    pub last_heartbeat_s: f64,
    pub rss_bytes: u64,
}

/// Every response the server has sent (exited workers' included), as `/metrics`
/// counts them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Traffic {
    /// Responses by status class, `1xx` to `5xx`.
    pub responses: [u64; 5],
    /// Upper bounds of the duration histogram's buckets, in seconds.
    pub duration_bounds_s: Vec<f64>,
    /// Responses per bucket (not cumulative); one more than the bounds: the last holds
    /// the slower ones.
    pub duration_counts: Vec<u64>,
    pub duration_sum_s: f64,
    /// Requests begun and not yet finished, all workers.
    pub in_flight: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub bind: String,
    /// Connections waiting in the accept queue.
    pub backlog: u32,
    /// The queue's limit (`--backlog`, capped by `net.core.somaxconn`).
    pub backlog_limit: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterStatus {
    pub pid: i32,
    pub version: String,
    /// Unix seconds.
    pub started_at: f64,
    pub uptime_s: f64,
    pub app: String,
    pub binds: Vec<String>,
    pub generation: u32,
    pub workers_target: u32,
    /// `running`, `reloading` or `stopping`.
    pub state: String,
    /// While workers cannot accept connections (out of descriptors or memory): since
    /// when, how many accepts failed, and why. Absent from older masters.
    #[serde(default)]
    pub accept_failing: Option<AcceptFailing>,
    /// Autoscaling's floor and ceiling (`--workers-min`/`--workers-max`); absent when
    /// it is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_max: Option<u32>,
    /// `on`, or `paused` while an operator's `scale N` pins the count; absent when
    /// autoscaling is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<String>,
    /// Autoscaling's last change of the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<ScaleDecision>,
}

/// One autoscaling decision, in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleDecision {
    /// Unix seconds.
    pub time: f64,
    /// `up` or `down`.
    pub direction: String,
    pub from: u32,
    pub to: u32,
    /// Why, in words (`busy 0.97 for 0.5 s (saturated)`).
    pub reason: String,
}

/// An episode of failing `accept` calls, in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcceptFailing {
    pub since_s: f64,
    pub failures: u64,
    /// `Too many open files (EMFILE)`.
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub pid: i32,
    pub generation: u32,
    /// `booting`, `idle`, `busy` or `stopping`.
    pub state: String,
    pub age_s: f64,
    pub requests: u64,
    /// Client connections the worker holds open (added after v1's first release:
    /// absent from older masters, read as 0).
    #[serde(default)]
    pub connections: u32,
    pub current_request_s: Option<f64>,
    pub last_heartbeat_s: f64,
    pub rss_bytes: u64,
    /// CPU time used (user + system), in seconds (an addition to v1).
    #[serde(default)]
    pub cpu_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub workers_spawned: u64,
    pub workers_exited: u64,
    pub timeouts: u64,
    pub reloads: u64,
    /// `accept` calls that failed for want of descriptors or memory (absent from
    /// older masters, read as 0).
    #[serde(default)]
    pub accept_errors: u64,
}

/// One `history` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// `reload` or `scale`.
    pub action: String,
    /// Who asked: `signal HUP`, `ctl uid 1000`, ...
    pub trigger: String,
    pub started_at: f64,
    pub duration_ms: Option<u64>,
    /// `ok`, `failed` or `running`.
    pub outcome: String,
    pub error: Option<String>,
    pub detail: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> ErrorBody {
        parse_request(line.as_bytes()).unwrap_err().1
    }

    #[test]
    fn parses_commands() {
        let (id, cmd) = parse_request(br#"{"id": 7, "cmd": "scale", "delta": -2}"#).unwrap();
        assert_eq!(id, json!(7));
        assert_eq!(
            cmd,
            Command::Scale {
                target: ScaleTarget::Delta(-2),
                wait: false,
                dirty: false
            }
        );
        let (_, cmd) = parse_request(br#"{"cmd": "reload"}"#).unwrap();
        assert_eq!(cmd, Command::Reload { wait: true });
    }

    #[test]
    fn rejects_bad_requests_with_the_right_code() {
        assert_eq!(err("{nope").code, ErrorCode::BadRequest);
        assert_eq!(err(r#"{"cmd": "dance"}"#).code, ErrorCode::UnknownCommand);
        assert_eq!(
            err(r#"{"cmd": "scale", "workers": -5}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            err(r#"{"cmd": "scale", "workers": "many"}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            err(r#"{"cmd": "stop", "mode": "now"}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            err(r#"{"cmd": "ping", "x": 1}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(err("[1]").code, ErrorCode::BadRequest);
    }

    #[test]
    fn keeps_the_id_on_errors() {
        let (id, _) = parse_request(br#"{"id": "abc", "cmd": "kill"}"#).unwrap_err();
        assert_eq!(id, json!("abc"));
    }
}
