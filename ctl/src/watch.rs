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
    let s = |k: &str| match &e[k] {
        Value::String(v) => v.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let what = match e["event"].as_str().unwrap_or("") {
        "watching" => format!(
            "watching rgun master {} (generation {}, {} of {} workers)",
            s("pid"),
            s("generation"),
            s("workers"),
            s("workers_target")
        ),
        "worker_spawned" => format!(
            "worker {} spawned (generation {}, slot {})",
            s("pid"),
            s("generation"),
            s("slot")
        ),
        "worker_ready" => format!(
            "worker {} ready after {} ms (generation {})",
            s("pid"),
            s("boot_ms"),
            s("generation")
        ),
        "worker_exited" => {
            let how = match (&e["code"], &e["signal"]) {
                (Value::Number(c), _) => format!("exit code {c}"),
                (_, Value::String(sig)) => format!("killed by {sig}"),
                _ => "exited".into(),
            };
            format!(
                "worker {} exited: {} ({how}, generation {})",
                s("pid"),
                s("reason"),
                s("generation")
            )
        }
        "worker_timeout" => format!(
            "worker {} timed out (request running {} s); it is being aborted",
            s("pid"),
            s("request_s")
        ),
        "reload_started" => format!(
            "reload to generation {} started by {} ({} workers)",
            s("generation"),
            s("trigger"),
            s("workers")
        ),
        "reload_finished" => format!(
            "reload finished: generation {} serves ({} ms)",
            s("generation"),
            s("duration_ms")
        ),
        "reload_rolled_back" => format!(
            "reload to generation {} rolled back, generation {} keeps serving: {}",
            s("generation"),
            s("serving_generation"),
            s("error").lines().last().unwrap_or("")
        ),
        "scale" => format!(
            "workers {} -> {} ({})",
            s("previous"),
            s("target"),
            s("trigger")
        ),
        "autoscale" => match e["state"].as_str() {
            Some("paused") => format!("autoscaling paused by {}", s("trigger")),
            Some("on") => format!(
                "autoscaling resumed between {} and {} workers",
                s("workers_min"),
                s("workers_max")
            ),
            _ => format!(
                "autoscaling between {} and {} workers ({})",
                s("workers_min"),
                s("workers_max"),
                s("trigger")
            ),
        },
        "rebalance" => format!(
            "rebalancing {} connections: {} end some after their next response",
            s("connections"),
            e["closing"].as_object().map_or(0, |m| m.len())
        ),
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
            s("shutdown_delay_s")
        ),
        "events_lost" => format!("{} events lost: this watcher read too slowly", s("count")),
        _ => e.to_string(),
    };
    let time = e["time"]
        .as_f64()
        .map_or(String::new(), |t| format_time(t) + " ");
    format!("{time}{what}")
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
