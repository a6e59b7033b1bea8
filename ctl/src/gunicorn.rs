//! Gunicorn's control protocol (what Gunicorn 25+'s `gunicornc` speaks), on rgun's
//! control socket beside rgun's own JSON lines: framing, requests, and answers with
//! Gunicorn's field names. Each Gunicorn command maps onto one rgun [`Command`] (or,
//! for `help`, is answered here); its answer is built from rgun's result. The dirty
//! pool's commands (`show dirty`, `dirty add|remove`) read `status`'s `dirty` block
//! and scale the pool. No I/O, so it is tested in memory.
//!
//! A message is a 4-byte big-endian length, then that many bytes of JSON. A request is
//! `{"id", "command": "worker add", "args": ["2"]}`; an answer `{"id", "status": "ok",
//! "data"}` or `{"id", "status": "error", "error": MESSAGE}`.

use serde_json::{json, Map, Value};

use crate::protocol::{Command, ErrorBody, ScaleTarget, Status};

/// Longest request payload accepted. A `gunicornc` request is a few dozen bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Whether a connection's first byte opens a Gunicorn message: a length prefix below
/// 16 MiB starts with a zero byte, which no JSON line does.
pub fn opens_message(first: u8) -> bool {
    first == 0
}

/// The next message in a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// More bytes are needed.
    Incomplete,
    /// A payload, and how many bytes of the buffer it used.
    Message(&'a [u8], usize),
    /// A length over [`MAX_REQUEST_BYTES`]: the stream cannot be followed further.
    TooLarge(usize),
}

pub fn next_frame(buf: &[u8]) -> Frame<'_> {
    let Some(prefix) = buf.get(..4) else {
        return Frame::Incomplete;
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_REQUEST_BYTES {
        return Frame::TooLarge(len);
    }
    match buf.get(4..4 + len) {
        Some(payload) => Frame::Message(payload, 4 + len),
        None => Frame::Incomplete,
    }
}

/// A message with its length prefix.
pub fn encode(message: &Value) -> Vec<u8> {
    let payload = message.to_string();
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload.as_bytes());
    out
}

pub fn ok_message(id: &Value, data: Value) -> Value {
    json!({"id": id, "status": "ok", "data": data})
}

pub fn error_message(id: &Value, error: &str) -> Value {
    json!({"id": id, "status": "error", "error": error})
}

/// What `show` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Show {
    All,
    Workers,
    Dirty,
    Stats,
    Config,
    Listeners,
}

/// A Gunicorn control command (serializable: a master re-executing in place hands
/// the ones still awaiting an answer to its new image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GCommand {
    Show(Show),
    WorkerAdd(u32),
    WorkerRemove(u32),
    WorkerKill(i32),
    /// `dirty add [N]`: the dirty pool's target up by N.
    DirtyAdd(u32),
    /// `dirty remove [N]`: down by N, keeping one.
    DirtyRemove(u32),
    Reload,
    Reopen,
    Shutdown {
        quick: bool,
    },
    Help,
}

/// Parses one request payload. On error, the request's id (0 when unknown, as
/// Gunicorn) and the message to answer.
pub fn parse_request(payload: &[u8]) -> Result<(Value, GCommand), (Value, String)> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| (json!(0), format!("Invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err((json!(0), "a request must be a JSON object".into()));
    };
    let id = obj.get("id").cloned().unwrap_or(json!(0));
    match words(&obj).and_then(|w| parse_words(&w)) {
        Ok(command) => Ok((id, command)),
        Err(e) => Err((id, e)),
    }
}

/// The command's words, then its `args`.
fn words(obj: &Map<String, Value>) -> Result<Vec<String>, String> {
    let command = match obj.get("command") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(format!("\"command\" must be a string, got {other}")),
    };
    let mut words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    match obj.get("args") {
        None | Some(Value::Null) => {}
        Some(Value::Array(args)) => words.extend(args.iter().map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
        Some(other) => return Err(format!("\"args\" must be a list, got {other}")),
    }
    if words.is_empty() {
        return Err("Empty command".into());
    }
    Ok(words)
}

fn parse_words(words: &[String]) -> Result<GCommand, String> {
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let rest: Vec<&str> = lower.iter().skip(1).map(String::as_str).collect();
    let command = match (lower[0].as_str(), rest.as_slice()) {
        ("show", [what]) => GCommand::Show(parse_show(what)?),
        ("show", []) => {
            return Err(
                "show: needs what to show (all, workers, dirty, stats, config, listeners)".into(),
            )
        }
        ("worker", ["add", n @ ..]) => GCommand::WorkerAdd(count(n)?),
        ("worker", ["remove", n @ ..]) => GCommand::WorkerRemove(count(n)?),
        ("worker", ["kill", pid]) => GCommand::WorkerKill(
            pid.parse::<i32>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("Invalid argument: {pid:?} is not a process id"))?,
        ),
        ("worker", ["kill"]) => return Err("Invalid argument: worker kill needs a PID".into()),
        ("dirty", ["add", n @ ..]) => GCommand::DirtyAdd(count(n)?),
        ("dirty", ["remove", n @ ..]) => GCommand::DirtyRemove(count(n)?),
        ("reload", []) => GCommand::Reload,
        ("reopen", []) => GCommand::Reopen,
        ("shutdown", [] | ["graceful"]) => GCommand::Shutdown { quick: false },
        ("shutdown", ["quick"]) => GCommand::Shutdown { quick: true },
        ("help", []) => GCommand::Help,
        _ => return Err(format!("Unknown command: {}", words.join(" "))),
    };
    Ok(command)
}

fn parse_show(what: &str) -> Result<Show, String> {
    Ok(match what {
        "all" => Show::All,
        "workers" => Show::Workers,
        "dirty" => Show::Dirty,
        "stats" => Show::Stats,
        "config" => Show::Config,
        "listeners" => Show::Listeners,
        other => return Err(format!("Unknown show target: {other}")),
    })
}

/// `[N]`: 1 when absent; at least 1, as Gunicorn.
fn count(n: &[&str]) -> Result<u32, String> {
    match n {
        [] => Ok(1),
        [n] => n
            .parse::<i64>()
            .map(|n| n.clamp(1, i64::from(u32::MAX)) as u32)
            .map_err(|_| format!("Invalid argument: {n:?} is not a number")),
        _ => Err("Invalid argument: one count at most".into()),
    }
}

impl GCommand {
    /// The rgun command that does this; None when it is answered without the arbiter
    /// ([`GCommand::local_answer`]).
    pub fn rgun_command(self) -> Option<Command> {
        Some(match self {
            GCommand::Show(Show::Config) => Command::Config,
            GCommand::Help => return None,
            GCommand::Show(_) => Command::Status,
            GCommand::DirtyAdd(n) => Command::Scale {
                target: ScaleTarget::Delta(i32::try_from(n).unwrap_or(i32::MAX)),
                wait: false,
                dirty: true,
            },
            GCommand::DirtyRemove(n) => Command::Scale {
                target: ScaleTarget::Fewer(n),
                wait: false,
                dirty: true,
            },
            GCommand::WorkerAdd(n) => Command::Scale {
                target: ScaleTarget::Delta(i32::try_from(n).unwrap_or(i32::MAX)),
                wait: false,
                dirty: false,
            },
            GCommand::WorkerRemove(n) => Command::Scale {
                target: ScaleTarget::Fewer(n),
                wait: false,
                dirty: false,
            },
            GCommand::WorkerKill(pid) => Command::Kill { pid },
            GCommand::Reload => Command::Reload { wait: false },
            GCommand::Reopen => Command::ReopenLogs,
            GCommand::Shutdown { quick } => Command::Stop { quick },
        })
    }

    /// The data of a command answered without the arbiter (`help`).
    pub fn local_answer(self) -> Value {
        help()
    }

    /// Gunicorn's answer data from rgun's outcome (its result, or its error).
    pub fn answer(self, outcome: Result<&Value, &ErrorBody>) -> Result<Value, String> {
        let result = match (self, outcome) {
            (GCommand::WorkerKill(pid), Err(e)) => {
                return Ok(
                    json!({"success": false, "error": format!("Worker {pid}: {}", e.message)}),
                )
            }
            (GCommand::DirtyAdd(_) | GCommand::DirtyRemove(_), Err(e)) => {
                return Ok(json!({"success": false, "error": e.message}))
            }
            (_, Err(e)) => return Err(e.message.clone()),
            (_, Ok(result)) => result,
        };
        let status = || -> Result<Status, String> {
            serde_json::from_value(result.clone()).map_err(|e| format!("unexpected status: {e}"))
        };
        Ok(match self {
            GCommand::Show(Show::Workers) => {
                let workers = workers(&status()?, false);
                json!({"count": workers.len(), "workers": workers})
            }
            GCommand::Show(Show::All) => show_all(&status()?),
            GCommand::Show(Show::Stats) => stats(&status()?),
            GCommand::Show(Show::Listeners) => listeners(&status()?),
            GCommand::Show(Show::Dirty) => show_dirty(&status()?),
            GCommand::DirtyAdd(n) | GCommand::DirtyRemove(n) => {
                let previous = result["previous"].as_i64().unwrap_or(0);
                let target = result["target"].as_i64().unwrap_or(0);
                let (operation, key, changed) = match self {
                    GCommand::DirtyAdd(_) => ("add", "spawned", target - previous),
                    _ => ("remove", "removed", previous - target),
                };
                json!({"success": true, "operation": operation, "requested": n, key: changed,
                       "total_workers": previous, "target_workers": target})
            }
            GCommand::Show(Show::Config) => config(result),
            GCommand::WorkerAdd(_) | GCommand::WorkerRemove(_) => {
                let previous = result["previous"].as_i64().unwrap_or(0);
                let total = result["target"].as_i64().unwrap_or(0);
                let (key, n) = match self {
                    GCommand::WorkerAdd(_) => ("added", total - previous),
                    _ => ("removed", previous - total),
                };
                json!({key: n, "previous": previous, "total": total})
            }
            GCommand::WorkerKill(pid) => json!({"success": true, "killed": pid}),
            GCommand::Reload => json!({"status": "reloading"}),
            GCommand::Reopen => json!({"status": "reopening"}),
            GCommand::Shutdown { quick } => {
                json!({"status": "shutting_down", "mode": if quick { "quick" } else { "graceful" }})
            }
            GCommand::Help => self.local_answer(),
        })
    }
}

/// The workers, oldest first; `age` is their order of birth (Gunicorn's spawn counter
/// has no rgun equivalent across reloads).
fn workers(status: &Status, web: bool) -> Vec<Value> {
    let mut list: Vec<_> = status.workers.iter().collect();
    list.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
    list.iter()
        .enumerate()
        .map(|(i, w)| {
            let mut entry = json!({
                "pid": w.pid,
                "age": i + 1,
                "booted": w.state != "booting",
                "last_heartbeat": (w.last_heartbeat_s * 100.0).round() / 100.0,
            });
            if web {
                entry["type"] = json!("web");
            } else {
                entry["aborted"] = json!(w.state == "stopping");
            }
            entry
        })
        .collect()
}

fn show_all(status: &Status) -> Value {
    let web = workers(status, true);
    json!({
        "arbiter": {"pid": status.master.pid, "type": "arbiter", "role": "master"},
        "web_worker_count": web.len(),
        "web_workers": web,
        "dirty_arbiter": status.dirty.as_ref().and_then(|d| d.router_pid).map(|pid| {
            json!({"pid": pid, "type": "dirty_arbiter", "role": "dirty master"})
        }),
        "dirty_worker_count": dirty_workers(status).len(),
        "dirty_workers": dirty_workers(status),
    })
}

/// The dirty workers as Gunicorn's dirty arbiter describes them (`age`: the index
/// that decides which apps a worker holds).
fn dirty_workers(status: &Status) -> Vec<Value> {
    status
        .dirty
        .iter()
        .flat_map(|d| &d.workers)
        .map(|w| {
            json!({
                "pid": w.pid,
                "age": w.index,
                "apps": w.apps,
                "booted": w.state != "booting",
                "last_heartbeat": (w.last_heartbeat_s * 100.0).round() / 100.0,
            })
        })
        .collect()
}

/// `show dirty`: the router (Gunicorn's dirty arbiter), the workers, and each app with
/// the workers holding it.
fn show_dirty(status: &Status) -> Value {
    let Some(d) = &status.dirty else {
        return json!({"enabled": false, "pid": null, "workers": [], "apps": []});
    };
    let mut apps: Vec<(String, Vec<i32>)> = Vec::new();
    for w in &d.workers {
        for app in &w.apps {
            match apps.iter_mut().find(|(a, _)| a == app) {
                Some((_, pids)) => pids.push(w.pid),
                None => apps.push((app.clone(), vec![w.pid])),
            }
        }
    }
    let apps: Vec<Value> = apps
        .into_iter()
        .map(|(path, pids)| {
            json!({"import_path": path, "worker_count": null, "current_workers": pids.len(), "worker_pids": pids})
        })
        .collect();
    json!({"enabled": true, "pid": d.router_pid, "workers": dirty_workers(status), "apps": apps})
}

fn stats(status: &Status) -> Value {
    json!({
        "uptime": (status.master.uptime_s * 100.0).round() / 100.0,
        "pid": status.master.pid,
        "workers_current": status.workers.len(),
        "workers_target": status.master.workers_target,
        "workers_spawned": status.totals.workers_spawned,
        "workers_killed": status.totals.workers_exited,
        "reloads": status.totals.reloads,
        "dirty_arbiter_pid": status.dirty.as_ref().and_then(|d| d.router_pid),
    })
}

fn listeners(status: &Status) -> Value {
    let list: Vec<Value> = status
        .master
        .binds
        .iter()
        .map(|bind| {
            let kind = if bind.starts_with("unix:") {
                "unix"
            } else if bind.starts_with('[') {
                "tcp6"
            } else {
                "tcp"
            };
            json!({"address": bind, "type": kind})
        })
        .collect();
    json!({"count": list.len(), "listeners": list})
}

/// The settings Gunicorn's `show config` lists, from rgun's `config` answer.
fn config(settings: &Value) -> Value {
    const KEYS: &[&str] = &[
        "bind",
        "workers",
        "worker_class",
        "threads",
        "timeout",
        "graceful_timeout",
        "keepalive",
        "max_requests",
        "max_requests_jitter",
        "worker_connections",
        "preload_app",
        "daemon",
        "pidfile",
        "proc_name",
        "reload",
        "control_socket",
        "control_socket_disable",
    ];
    let picked: Map<String, Value> = KEYS
        .iter()
        .filter_map(|k| settings.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    Value::Object(picked)
}

fn help() -> Value {
    json!({"commands": {
        "show all": "The master and its workers",
        "show workers": "Each worker: pid, age, booted, last heartbeat",
        "show dirty": "The dirty pool: its router, workers and the apps each holds",
        "dirty add [N]": "Raise the dirty pool's target by N (1)",
        "dirty remove [N]": "Lower the dirty pool's target by N (1), keeping one",
        "show config": "The main settings in force",
        "show stats": "Uptime, worker counts, reloads",
        "show listeners": "The listening sockets",
        "worker add [N]": "Raise the worker target by N (1)",
        "worker remove [N]": "Lower the worker target by N (1), keeping one",
        "worker kill <PID>": "Stop one worker gracefully; it is replaced",
        "reload": "Gated reload: a new generation, rolled back if it fails to boot",
        "reopen": "Reopen the log files",
        "shutdown [graceful|quick]": "Stop the server",
        "help": "This list",
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &str, args: Value) -> Vec<u8> {
        json!({"id": 3, "command": command, "args": args})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn frames_and_their_limits() {
        let message = encode(&json!({"id": 1}));
        assert!(opens_message(message[0]));
        assert!(!opens_message(b'{'));
        assert_eq!(next_frame(&message[..3]), Frame::Incomplete);
        assert_eq!(next_frame(&message[..6]), Frame::Incomplete);
        assert_eq!(
            next_frame(&message),
            Frame::Message(br#"{"id":1}"#, message.len())
        );
        assert_eq!(
            next_frame(&[0, 1, 0, 1, b'{']),
            Frame::TooLarge(0x0001_0001)
        );
    }

    #[test]
    fn parses_gunicornc_requests() {
        let parse = |c: &str, a: Value| {
            parse_request(&request(c, a))
                .map(|(_, c)| c)
                .map_err(|(_, e)| e)
        };
        assert_eq!(
            parse("show workers", json!([])),
            Ok(GCommand::Show(Show::Workers))
        );
        assert_eq!(
            parse("worker add", json!(["2"])),
            Ok(GCommand::WorkerAdd(2))
        );
        assert_eq!(parse("worker add 0", json!([])), Ok(GCommand::WorkerAdd(1)));
        assert_eq!(
            parse("WORKER remove", json!([])),
            Ok(GCommand::WorkerRemove(1))
        );
        assert_eq!(
            parse("worker kill", json!([42])),
            Ok(GCommand::WorkerKill(42))
        );
        assert_eq!(
            parse("shutdown quick", json!([])),
            Ok(GCommand::Shutdown { quick: true })
        );
        assert!(parse("worker add", json!(["many"])).is_err());
        assert!(parse("dance", json!([]))
            .unwrap_err()
            .starts_with("Unknown command"));
        assert_eq!(parse("", json!([])).unwrap_err(), "Empty command");
        let (id, e) = parse_request(b"{nope").unwrap_err();
        assert_eq!(id, json!(0));
        assert!(e.starts_with("Invalid JSON"), "{e}");
        let (id, _) = parse_request(&request("show nothing", json!([]))).unwrap_err();
        assert_eq!(id, json!(3));
    }

    #[test]
    fn answers_use_gunicorn_field_names() {
        let add = GCommand::WorkerAdd(2).answer(Ok(&json!({"previous": 2, "target": 4})));
        assert_eq!(add, Ok(json!({"added": 2, "previous": 2, "total": 4})));
        let remove = GCommand::WorkerRemove(5).answer(Ok(&json!({"previous": 3, "target": 1})));
        assert_eq!(remove, Ok(json!({"removed": 2, "previous": 3, "total": 1})));
        let missing = ErrorBody::new(crate::ErrorCode::Failed, "no worker with pid 7");
        let kill = GCommand::WorkerKill(7).answer(Err(&missing)).unwrap();
        assert_eq!(kill["success"], json!(false));
        let config = config(&json!({"workers": 2, "bind": ["127.0.0.1:8000"], "umask": "0000"}));
        assert_eq!(config, json!({"workers": 2, "bind": ["127.0.0.1:8000"]}));
    }
}
