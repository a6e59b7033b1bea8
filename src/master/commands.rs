//! What each control command does, on the arbiter's state. Requests arrive from
//! `control::ControlServer`; answers go back through it, at once or when a reload or a
//! `scale --wait` completes.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use mio::Token;
use nix::sys::signal::{kill, Signal};
use rgunctl::protocol::{
    error_line, ok_line, Command, ErrorBody, ErrorCode, HistoryEntry, ListenerStatus, MasterStatus,
    ScaleTarget, Status, Totals, WorkerStatus, MAX_WORKERS,
};
use serde_json::{json, Value};

use super::reload::ReloadTicket;
use super::{unix_now, Arbiter, Phase};
use crate::control::Request;
use crate::scoreboard::monotonic_ms;

impl Arbiter {
    pub(super) fn handle_control_event(&mut self, token: Token) {
        let Some(control) = self.control.as_mut() else {
            return;
        };
        let requests = control.handle_event(token, self.poll.registry());
        for request in requests {
            self.handle_request(request);
        }
    }

    /// A control event while the master waits for a hook or a configuration file:
    /// read-only commands are answered now, the others once the wait is over.
    pub(super) fn handle_control_event_while_busy(&mut self, token: Token) {
        let Some(control) = self.control.as_mut() else {
            return;
        };
        let requests = control.handle_event(token, self.poll.registry());
        for request in requests {
            match request.command {
                Command::Ping
                | Command::Status
                | Command::Config
                | Command::History
                | Command::Metrics
                | Command::Watch
                | Command::Stack { .. } => self.handle_request(request),
                _ => self.deferred_requests.push_back(request),
            }
        }
    }

    /// Requests that arrived while the master was waiting, in order.
    pub(super) fn handle_deferred_requests(&mut self) {
        while let Some(request) = self.deferred_requests.pop_front() {
            self.handle_request(request);
        }
    }

    fn handle_request(&mut self, req: Request) {
        let Request {
            conn,
            id,
            command,
            uid,
        } = req;
        let trigger = format!("ctl uid {uid}");
        let answer: Result<Option<Value>, ErrorBody> = match command {
            Command::Ping => Ok(Some(
                json!({"version": env!("CARGO_PKG_VERSION"), "pid": std::process::id()}),
            )),
            Command::Status => {
                result_value(serde_json::to_value(self.status()), "status").map(Some)
            }
            Command::Config => Ok(Some(self.cfg.settings_json(self.target))),
            Command::History => Ok(Some(json!({"entries": self.history}))),
            Command::Metrics => Ok(Some(json!({"text": self.metrics_text()}))),
            Command::Watch => Ok(Some(self.watch(conn))),
            Command::ReopenLogs => {
                self.reopen_logs();
                Ok(Some(json!({})))
            }
            Command::Stop { quick } => {
                self.begin_stop(!quick);
                // What was asked may not be what happens: a stop already under way
                // goes on (a quick one is never made graceful again).
                let graceful = self.phase != Phase::Stopping { graceful: false };
                let left = self
                    .stop_deadline
                    .map_or(0.0, |d| {
                        d.saturating_duration_since(Instant::now()).as_secs_f64()
                    })
                    .round() as u64;
                let answer = json!({
                    "pid": std::process::id(),
                    "mode": if graceful { "graceful" } else { "quick" },
                    "workers": self.workers.len(),
                    "deadline_s": left,
                });
                self.reply_ok(conn, &id, answer);
                Ok(None)
            }
            Command::Kill { pid } => self.kill_worker(pid).map(Some),
            Command::Stack { pid } => self.request_stacks(conn, id.clone(), pid).map(|()| None),
            Command::Scale {
                target,
                dirty: true,
                ..
            } => self.scale_dirty(target, trigger).map(Some),
            Command::Scale { target, wait, .. } => self.scale(conn, &id, target, wait, trigger),
            Command::Reload { wait } => {
                let waiter = wait.then(|| (conn, id.clone()));
                match self.request_reload(trigger, waiter) {
                    Ok(_) if wait => Ok(None),
                    Ok(ReloadTicket::Started(generation)) => Ok(Some(
                        json!({"generation": generation, "previous_generation": generation - 1}),
                    )),
                    Ok(ReloadTicket::Queued) => Ok(Some(json!({
                        "queued": true,
                        "serving_generation": self.generation,
                    }))),
                    Err(e) => Err(e),
                }
            }
        };
        match answer {
            Ok(Some(result)) => self.reply_ok(conn, &id, result),
            Ok(None) => {}
            Err(error) => self.reply_error(conn, &id, &error),
        }
    }

    /// `watch`: the connection becomes a subscriber; the answer is where things stand.
    fn watch(&mut self, conn: usize) -> Value {
        if let Some(c) = self.control.as_mut() {
            c.subscribe(conn);
        }
        json!({
            "time": (unix_now() * 1000.0).round() / 1000.0,
            "pid": std::process::id(),
            "generation": self.generation,
            "workers": self.workers.len(),
            "workers_target": self.target,
        })
    }

    /// `scale`: a new target (with `--wait`, answered once it is reached).
    fn scale(
        &mut self,
        conn: usize,
        id: &Value,
        target: ScaleTarget,
        wait: bool,
        trigger: String,
    ) -> Result<Option<Value>, ErrorBody> {
        let previous = self.target;
        let new = match target {
            ScaleTarget::Workers(n) => i64::from(n),
            ScaleTarget::Delta(d) => previous as i64 + i64::from(d),
            ScaleTarget::Fewer(n) => (previous as i64 - i64::from(n)).max(1),
            ScaleTarget::Auto => return self.resume_autoscaling().map(Some),
        };
        if !(1..=i64::from(MAX_WORKERS)).contains(&new) {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("scale: {new} workers is out of range 1..={MAX_WORKERS}"),
            ));
        }
        let pinned = self.pin_autoscaling(&trigger);
        self.set_target(new as usize, trigger);
        if wait {
            self.scale_waiters.push((conn, id.clone(), previous));
            Ok(None)
        } else if pinned {
            Ok(Some(
                json!({"previous": previous, "target": new, "autoscale": "paused"}),
            ))
        } else {
            Ok(Some(json!({"previous": previous, "target": new})))
        }
    }

    pub(super) fn reply_ok(&mut self, conn: usize, id: &Value, result: Value) {
        if let Some(c) = self.control.as_mut() {
            c.send(conn, &ok_line(id, result), self.poll.registry());
        }
    }

    pub(super) fn reply_error(&mut self, conn: usize, id: &Value, error: &ErrorBody) {
        if let Some(c) = self.control.as_mut() {
            c.send(conn, &error_line(id, error), self.poll.registry());
        }
    }

    /// Moves the worker target (TTIN/TTOU and `scale` alike); it survives reloads.
    pub(super) fn set_target(&mut self, target: usize, trigger: String) {
        let target = target.clamp(1, MAX_WORKERS as usize);
        let previous = self.target;
        if target == previous {
            return;
        }
        self.target = target;
        tracing::info!("Number of workers: {previous} -> {target}");
        self.emit(
            "scale",
            json!({"previous": previous, "target": target, "trigger": trigger}),
        );
        self.call_hook("nworkers_changed", json!({"new": target, "old": previous}));
        self.push_history(HistoryEntry {
            action: "scale".into(),
            trigger,
            started_at: unix_now(),
            duration_ms: None,
            outcome: "ok".into(),
            error: None,
            detail: json!({"previous": previous, "target": target}),
        });
    }

    /// `scale --wait` answers once exactly `target` workers of the serving generation
    /// are ready and the extra ones are gone.
    pub(super) fn answer_scale_waiters(&mut self) {
        if self.scale_waiters.is_empty() {
            return;
        }
        let converged = self.ready_workers() == self.target
            && self.live_workers() == self.target
            && self
                .workers
                .values()
                .all(|w| !w.retiring || w.generation != self.generation);
        if converged {
            for (conn, id, previous) in std::mem::take(&mut self.scale_waiters) {
                let result =
                    json!({"previous": previous, "target": self.target, "ready": self.target});
                self.reply_ok(conn, &id, result);
            }
        }
    }

    fn kill_worker(&mut self, pid: i32) -> Result<Value, ErrorBody> {
        let Some(w) = self.workers.values_mut().find(|w| w.pid.as_raw() == pid) else {
            return Err(ErrorBody::new(
                ErrorCode::Failed,
                format!("no worker with pid {pid}"),
            ));
        };
        w.leaving = Some(super::metrics::ExitReason::Kill);
        let _ = kill(w.pid, Signal::SIGTERM);
        tracing::info!("Stopping worker {pid} on request; it will be replaced");
        Ok(json!({}))
    }

    fn status(&self) -> Status {
        let now_ms = monotonic_ms();
        let page = crate::process::page_size();
        let started_at = self
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let workers: Vec<WorkerStatus> = self
            .workers
            .values()
            .map(|w| {
                let slot = self.scoreboard.slot(w.slot);
                let state = self.worker_state(w);
                let started = slot.request_started_ms.load(Ordering::Relaxed);
                WorkerStatus {
                    pid: w.pid.as_raw(),
                    generation: w.generation,
                    state: state.into(),
                    age_s: w.spawned.elapsed().as_secs_f64(),
                    requests: slot.requests.load(Ordering::Relaxed),
                    connections: slot.connections.load(Ordering::Relaxed),
                    current_request_s: (started != 0)
                        .then(|| now_ms.saturating_sub(started) as f64 / 1000.0),
                    last_heartbeat_s: now_ms
                        .saturating_sub(slot.heartbeat_ms.load(Ordering::Relaxed))
                        as f64
                        / 1000.0,
                    rss_bytes: crate::process::rss_pages(w.pid.as_raw()) * page,
                    cpu_s: cpu_seconds(w.pid.as_raw()),
                }
            })
            .collect();
        let live_requests: u64 = workers.iter().map(|w| w.requests).sum();
        let state = self.phase.label();
        Status {
            master: MasterStatus {
                pid: std::process::id() as i32,
                version: env!("CARGO_PKG_VERSION").into(),
                started_at,
                uptime_s: self.started.elapsed().as_secs_f64(),
                app: self.cfg.app.clone(),
                binds: self.listeners.iter().map(|l| l.display.clone()).collect(),
                generation: self.generation,
                workers_target: self.target as u32,
                state: state.into(),
                accept_failing: self.accept_failing(),
                workers_min: self.scaling.as_ref().map(|s| s.floor as u32),
                workers_max: self.scaling.as_ref().map(|s| s.ceiling as u32),
                autoscale: self
                    .scaling
                    .as_ref()
                    .map(|s| if s.paused { "paused" } else { "on" }.into()),
                last_decision: self.scaling.as_ref().and_then(|s| s.last.clone()),
            },
            workers,
            totals: Totals {
                requests: self.totals.requests_of_exited + live_requests,
                workers_spawned: self.totals.spawned,
                workers_exited: self.totals.exited,
                timeouts: self.totals.timeouts,
                reloads: self.totals.reloads,
                accept_errors: self.accept_watch.total,
            },
            traffic: Some(self.traffic()),
            listeners: self
                .listeners
                .iter()
                .filter_map(|l| {
                    super::metrics::listen_queue(&l.socket).map(|q| ListenerStatus {
                        bind: l.display.clone(),
                        backlog: q.waiting,
                        backlog_limit: q.limit,
                    })
                })
                .collect(),
            dirty: serde_json::from_value(self.dirty_status()).ok(),
        }
    }
}

/// A result as JSON; a value that cannot be serialised is a `failed` answer naming
/// the command (and a log line), never a `null` result.
fn result_value(value: serde_json::Result<Value>, command: &str) -> Result<Value, ErrorBody> {
    value.map_err(|e| {
        tracing::error!("cannot serialise the {command} answer: {e}");
        ErrorBody::new(
            ErrorCode::Failed,
            format!("cannot serialise the {command} answer: {e}"),
        )
    })
}

/// A process's CPU time (user + system) in seconds, from /proc/PID/stat.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name's closing parenthesis: state is field 3, utime 14, stime 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unserialisable_answer_is_an_error_not_null() {
        let broken = serde_json::from_str::<Value>("{\"truncated\"").map(|_| Value::Null);
        let err = result_value(broken, "status").unwrap_err();
        assert_eq!(err.code, ErrorCode::Failed);
        assert!(err.message.contains("status answer"), "{}", err.message);
        assert_eq!(
            result_value(Ok(json!({"a": 1})), "status").unwrap(),
            json!({"a": 1})
        );
    }
}
