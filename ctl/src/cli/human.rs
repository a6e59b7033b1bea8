//! `rgunctl`'s answers for people (without `--json`): one line per command, and the
//! tables of `status` and `history`.

use serde_json::{json, Value};

use super::Cmd;
use crate::clock::{format_age, format_time};
use crate::protocol::{DirtyStatus, HistoryEntry, MasterStatus, Status};
use crate::stacks::print_stacks;

/// What the daemon answered to `cmd`, for people.
pub(super) fn print_human(out: &mut String, cmd: &Cmd, result: &Value) {
    match cmd {
        Cmd::Status => match serde_json::from_value::<Status>(result.clone()) {
            Ok(status) => print_status(out, &status),
            Err(_) => w!(out, "{result}"),
        },
        Cmd::History => print_history(out, result),
        Cmd::Scale { count, .. } if count == "auto" => w!(
            out,
            "autoscaling resumed between {} and {} workers (target {})",
            result["workers_min"],
            result["workers_max"],
            result["target"]
        ),
        Cmd::Scale { .. } if result["autoscale"] == json!("paused") => w!(
            out,
            "workers: {} -> {} (autoscaling paused until `rgunctl scale auto`)",
            result["previous"],
            result["target"]
        ),
        Cmd::Scale { .. } => w!(
            out,
            "workers: {} -> {}",
            result["previous"],
            result["target"]
        ),
        Cmd::Reload { no_wait } => print_reload(out, *no_wait, result),
        Cmd::Ping => w!(
            out,
            "pong: rgun {} (pid {})",
            result["version"].as_str().unwrap_or("?"),
            result["pid"]
        ),
        Cmd::Config => w!(
            out,
            "{}",
            serde_json::to_string_pretty(result).unwrap_or_default()
        ),
        Cmd::Stop { .. } => match result["mode"].as_str() {
            Some("graceful") => w!(
                out,
                "stopping rgun (pid {}): {} workers finish the requests in flight within {} s",
                result["pid"],
                result["workers"],
                result["deadline_s"]
            ),
            _ => w!(
                out,
                "stopping rgun (pid {}) quickly: {} workers end what they are doing",
                result["pid"],
                result["workers"]
            ),
        },
        Cmd::ReopenLogs => w!(out, "logs reopened"),
        Cmd::Kill { pid } => w!(out, "worker {pid} is stopping"),
        Cmd::Metrics => out.push_str(result["text"].as_str().unwrap_or_default()),
        Cmd::Watch | Cmd::Top(_) => {}
        Cmd::Stack { pid: Some(_), .. } => print_stacks(out, result),
        Cmd::Stack { .. } => {
            for worker in result["workers"].as_array().into_iter().flatten() {
                print_stacks(out, worker);
            }
        }
        Cmd::Generate { .. } => {}
    }
}

/// Autoscaling's line in `status`: bounds, target, and the last decision.
fn print_autoscale(out: &mut String, m: &MasterStatus) {
    let (Some(state), Some(floor), Some(ceiling)) = (&m.autoscale, m.workers_min, m.workers_max)
    else {
        return;
    };
    let last = match &m.last_decision {
        Some(d) => format!(
            "; last {} {} -> {} at {}: {}",
            d.direction,
            d.from,
            d.to,
            format_time(d.time),
            d.reason
        ),
        None => "; no decision yet".into(),
    };
    w!(
        out,
        "autoscale {state}  floor {floor}  ceiling {ceiling}  target {}{last}",
        m.workers_target
    );
}

fn print_status(out: &mut String, s: &Status) {
    let m = &s.master;
    let ready = s
        .workers
        .iter()
        .filter(|w| w.generation == m.generation && (w.state == "idle" || w.state == "busy"))
        .count();
    w!(
        out,
        "master {}  rgun {}  {}  state {}  generation {}  workers {}/{}  up {}",
        m.pid,
        m.version,
        m.app,
        m.state,
        m.generation,
        ready,
        m.workers_target,
        format_age(m.uptime_s)
    );
    w!(out, "binds  {}", m.binds.join(" "));
    print_autoscale(out, m);
    if let Some(a) = &m.accept_failing {
        w!(
            out,
            "ACCEPT FAILING for {}: {} ({} failed accepts)",
            format_age(a.since_s),
            a.error,
            a.failures
        );
    }
    w!(
        out,
        "{:<8} {:>4} {:<9} {:>8} {:>9} {:>5} {:>8} {:>9} {:>10}",
        "PID",
        "GEN",
        "STATE",
        "AGE",
        "REQUESTS",
        "CONNS",
        "CURRENT",
        "HEARTBEAT",
        "RSS"
    );
    for w in &s.workers {
        w!(
            out,
            "{:<8} {:>4} {:<9} {:>8} {:>9} {:>5} {:>8} {:>9} {:>10}",
            w.pid,
            w.generation,
            w.state,
            format_age(w.age_s),
            w.requests,
            w.connections,
            w.current_request_s
                .map_or("-".into(), |c| format!("{c:.1}s")),
            format!("{:.1}s", w.last_heartbeat_s),
            format!("{:.1} MiB", w.rss_bytes as f64 / 1048576.0)
        );
    }
    if let Some(d) = &s.dirty {
        print_dirty(out, d);
    }
    let t = &s.totals;
    w!(
        out,
        "totals requests {}  spawned {}  exited {}  timeouts {}  reloads {}  accept errors {}",
        t.requests,
        t.workers_spawned,
        t.workers_exited,
        t.timeouts,
        t.reloads,
        t.accept_errors
    );
}

/// The dirty pool's rows: each worker and the apps it holds.
fn print_dirty(out: &mut String, d: &DirtyStatus) {
    let ready = d.workers.iter().filter(|w| w.state == "ready").count();
    let calls = |k: &str| d.calls.get(k).and_then(Value::as_u64).unwrap_or(0);
    w!(
        out,
        "dirty  router {}  workers {}/{}  calls {}  errors {}  timeouts {}  queued {}  socket {}",
        d.router_pid.map_or("-".into(), |p| p.to_string()),
        ready,
        d.target,
        calls("calls"),
        calls("errors"),
        calls("timeouts"),
        calls("queued"),
        d.socket
    );
    w!(
        out,
        "{:<8} {:>4} {:<9} {:>8} {:>9} {:>10}  APPS",
        "DIRTY",
        "GEN",
        "STATE",
        "AGE",
        "HEARTBEAT",
        "RSS"
    );
    for w in &d.workers {
        w!(
            out,
            "{:<8} {:>4} {:<9} {:>8} {:>9} {:>10}  {}",
            w.pid,
            w.generation,
            w.state,
            format_age(w.age_s),
            format!("{:.1}s", w.last_heartbeat_s),
            format!("{:.1} MiB", w.rss_bytes as f64 / 1048576.0),
            w.apps.join(" ")
        );
    }
}

/// `history`'s table, newest last.
fn print_history(out: &mut String, result: &Value) {
    match serde_json::from_value::<Vec<HistoryEntry>>(
        result.get("entries").cloned().unwrap_or_default(),
    ) {
        Ok(entries) if entries.is_empty() => w!(out, "no reloads or scale changes yet"),
        Ok(entries) => {
            w!(
                out,
                "{:<20} {:<7} {:<16} {:>9} {:<8} DETAIL",
                "STARTED",
                "ACTION",
                "TRIGGER",
                "DURATION",
                "OUTCOME"
            );
            for e in entries {
                let dur = e.duration_ms.map_or("-".into(), |d| format!("{d}ms"));
                let detail = e
                    .error
                    .clone()
                    .map(|s| s.lines().last().unwrap_or("").to_owned())
                    .unwrap_or_else(|| e.detail.to_string());
                w!(
                    out,
                    "{:<20} {:<7} {:<16} {:>9} {:<8} {}",
                    format_time(e.started_at),
                    e.action,
                    e.trigger,
                    dur,
                    e.outcome,
                    detail
                );
            }
        }
        Err(_) => w!(out, "{result}"),
    }
}

/// A reload's outcome: queued behind another, done (waited for), or started.
fn print_reload(out: &mut String, no_wait: bool, result: &Value) {
    match no_wait {
        _ if result["queued"] == json!(true) => match result.get("handed_to_master") {
            Some(pid) => w!(
                out,
                "reload handed to the new master {pid}, which loads the code as it is now"
            ),
            None => w!(
                out,
                "reload queued: it starts when the one in progress ends (generation {} serving)",
                result["serving_generation"]
            ),
        },
        false => w!(
            out,
            "reloaded: generation {} -> {} in {} ms",
            result["previous_generation"],
            result["generation"],
            result["duration_ms"]
        ),
        true => {
            w!(out, "reload started (generation {})", result["generation"])
        }
    }
}
