//! `rgunctl watch`: once subscribed, print each event line the daemon sends, as it
//! comes: a sentence per event by default, the JSON line itself with `--json`. Ends
//! (status 0) when the daemon closes the connection or the reader of our output goes.

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use crate::client::Client;
use crate::clock::format_time;

/// Prints the subscription's first line (from the `watch` answer), then every event.
pub fn follow(client: &mut Client, subscribed: &Value, json: bool) -> ExitCode {
    let mut event = watching(subscribed);
    loop {
        let line = if json {
            event.to_string()
        } else {
            describe(&event)
        };
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return ExitCode::SUCCESS; // the reader has gone (a pipe closed)
        }
        drop(stdout);
        event = match client.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rgunctl: {e}");
                return ExitCode::from(1);
            }
        };
    }
}

/// The `watching` event made from the `watch` answer.
pub(crate) fn watching(subscribed: &Value) -> Value {
    let mut first = serde_json::Map::new();
    first.insert("event".into(), "watching".into());
    if let Value::Object(fields) = subscribed {
        first.extend(fields.clone());
    }
    Value::Object(first)
}

/// One event as a sentence, with its time.
pub(crate) fn describe(e: &Value) -> String {
    let event = e["event"].as_str().unwrap_or("");
    let what = worker_event(event, e)
        .or_else(|| reload_or_scale_event(event, e))
        .or_else(|| server_event(event, e))
        .unwrap_or_else(|| e.to_string());
    let time = e["time"]
        .as_f64()
        .map_or(String::new(), |t| format_time(t) + " ");
    format!("{time}{what}")
}

/// Field `k` of event `e` as text (`-` when absent).
fn field(e: &Value, k: &str) -> String {
    match &e[k] {
        Value::String(v) => v.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The watcher's first line and a worker's life: spawned, ready, exited, timed out.
fn worker_event(event: &str, e: &Value) -> Option<String> {
    Some(match event {
        "watching" => format!(
            "watching rgun master {} (generation {}, {} of {} workers)",
            field(e, "pid"),
            field(e, "generation"),
            field(e, "workers"),
            field(e, "workers_target")
        ),
        "worker_spawned" => format!(
            "worker {} spawned (generation {}, slot {})",
            field(e, "pid"),
            field(e, "generation"),
            field(e, "slot")
        ),
        "worker_ready" => format!(
            "worker {} ready after {} ms (generation {})",
            field(e, "pid"),
            field(e, "boot_ms"),
            field(e, "generation")
        ),
        "worker_exited" => {
            let how = match (&e["code"], &e["signal"]) {
                (Value::Number(c), _) => format!("exit code {c}"),
                (_, Value::String(sig)) => format!("killed by {sig}"),
                _ => "exited".into(),
            };
            format!(
                "worker {} exited: {} ({how}, generation {})",
                field(e, "pid"),
                field(e, "reason"),
                field(e, "generation")
            )
        }
        "worker_timeout" => format!(
            "worker {} timed out (request running {} s); it is being aborted",
            field(e, "pid"),
            field(e, "request_s")
        ),
        _ => return None,
    })
}

/// Reloads, scale changes, autoscaling and rebalancing.
fn reload_or_scale_event(event: &str, e: &Value) -> Option<String> {
    Some(match event {
        "reload_started" => format!(
            "reload to generation {} started by {} ({} workers)",
            field(e, "generation"),
            field(e, "trigger"),
            field(e, "workers")
        ),
        "reload_finished" => format!(
            "reload finished: generation {} serves ({} ms)",
            field(e, "generation"),
            field(e, "duration_ms")
        ),
        "reload_rolled_back" => format!(
            "reload to generation {} rolled back, generation {} keeps serving: {}",
            field(e, "generation"),
            field(e, "serving_generation"),
            field(e, "error").lines().last().unwrap_or("")
        ),
        "scale" => format!(
            "workers {} -> {} ({})",
            field(e, "previous"),
            field(e, "target"),
            field(e, "trigger")
        ),
        "autoscale" => match e["state"].as_str() {
            Some("paused") => format!("autoscaling paused by {}", field(e, "trigger")),
            Some("on") => format!(
                "autoscaling resumed between {} and {} workers",
                field(e, "workers_min"),
                field(e, "workers_max")
            ),
            _ => format!(
                "autoscaling between {} and {} workers ({})",
                field(e, "workers_min"),
                field(e, "workers_max"),
                field(e, "trigger")
            ),
        },
        "rebalance" => format!(
            "rebalancing {} connections: {} end some after their next response",
            field(e, "connections"),
            e["closing"].as_object().map_or(0, |m| m.len())
        ),
        _ => return None,
    })
}

/// The server as a whole: logs reopened, stopping, draining; and events lost.
fn server_event(event: &str, e: &Value) -> Option<String> {
    Some(match event {
        "logs_reopened" => "logs reopened".into(),
        "stopping" => format!(
            "stopping ({})",
            if e["graceful"] == Value::Bool(true) {
                "graceful"
            } else {
                "quick"
            }
        ),
        "draining" => format!(
            "draining: not ready, still serving for {}s before stopping",
            field(e, "shutdown_delay_s")
        ),
        "events_lost" => format!(
            "{} events lost: this watcher read too slowly",
            field(e, "count")
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_read_as_sentences() {
        let exit = json!({"event": "worker_exited", "time": 0.0, "pid": 7, "generation": 2,
            "reason": "crash", "code": null, "signal": "SIGKILL"});
        assert_eq!(
            describe(&exit),
            "1970-01-01 00:00:00 worker 7 exited: crash (killed by SIGKILL, generation 2)"
        );
        let unknown = json!({"event": "new_in_v2", "x": 1});
        assert!(describe(&unknown).contains("new_in_v2"));
    }
}
