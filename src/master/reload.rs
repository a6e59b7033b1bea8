//! Reload as a gated generation swap: boot a whole new generation beside the serving
//! one; only when every new worker has said ready are the old ones told to stop
//! gracefully. If a new worker fails to boot (import error, crash, boot timeout), the
//! new generation is torn down and the old one keeps serving. HUP and `rgunctl reload`
//! both come here.
//!
//! A reload asked for while another runs (or while the first workers boot) is queued,
//! never refused: every request that arrives meanwhile joins one `QueuedReload`, which
//! starts when the running one ends and so loads the code as it is then. Each waiting
//! client is answered with the outcome of the generation that carries its code.
//!
//! The re-read configuration belongs to the new generation alone until it serves:
//! the master adopts it (and a changed `workers`) only then, so after a failed reload
//! everything — replacement workers, `status`, `config` — is the serving configuration.
//! Its logging is the exception: the master logs as it says from the start of the
//! reload, as Gunicorn does (`switch_logging`), and back as before if the reload fails.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use rgunctl::protocol::{ErrorBody, ErrorCode, HistoryEntry};
use serde_json::{json, Value};

use super::metrics::ExitReason;
use super::{unix_now, Arbiter, Event, Step};
use crate::config::Config;
use crate::log::ErrorLog;

/// A reload in progress.
pub struct Reload {
    pub generation: u32,
    previous: u32,
    started: Instant,
    /// Clients waiting for the outcome: (connection, request id).
    pub waiters: Vec<(usize, Value)>,
    /// Its `history` entry, to fill in at the end.
    history_started_at: f64,
    /// The configuration the new generation runs (None when a re-executed master reads it).
    pub cfg: Option<Box<Config>>,
    /// How many workers the new generation boots.
    target: usize,
    /// The configured `workers` changed: the new count replaces a `scale` target.
    workers_changed: bool,
    /// New workers killed by a signal while booting that were booted again.
    boot_retries: u32,
}

/// How many new workers killed by a signal while booting a reload boots again before
/// it fails (a signal is usually an OOM killer or an operator, not the code).
const BOOT_RETRIES: u32 = 3;

impl Reload {
    /// The reload a master re-executed in place (`--preload`) goes on with: the new
    /// image has read the configuration itself, so it has none of its own.
    pub fn resumed(
        handoff: &ReloadHandoff,
        started: Instant,
        waiters: Vec<(usize, Value)>,
    ) -> Reload {
        Reload {
            generation: handoff.previous + 1,
            previous: handoff.previous,
            started,
            waiters,
            history_started_at: handoff.history_started_at,
            cfg: None,
            target: handoff.target,
            workers_changed: handoff.workers_changed,
            boot_retries: 0,
        }
    }

    /// What of it the re-executed master needs (`reexec::Handoff`).
    pub fn handoff(&self) -> ReloadHandoff {
        ReloadHandoff {
            previous: self.previous,
            history_started_at: self.history_started_at,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            target: self.target,
            workers_changed: self.workers_changed,
        }
    }

    /// One more boot after a worker was killed by a signal, if any are left.
    pub fn take_retry(&mut self) -> bool {
        if self.boot_retries >= BOOT_RETRIES {
            return false;
        }
        self.boot_retries += 1;
        true
    }
}

/// A reload in progress, as a master re-executing in place hands it to its new image.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ReloadHandoff {
    /// The serving generation; the reload boots the next one.
    pub previous: u32,
    /// Its `history` entry's key.
    pub history_started_at: f64,
    pub elapsed_ms: u64,
    /// How many workers the new generation boots, and whether that is a new configured
    /// count.
    pub target: usize,
    pub workers_changed: bool,
}

/// Reloads asked for while another runs: one reload, started when it ends.
#[derive(Default)]
pub struct QueuedReload {
    /// Who asked, in order (for `history`).
    triggers: Vec<String>,
    /// Clients waiting for the outcome: (connection, request id).
    pub waiters: Vec<(usize, Value)>,
}

/// What became of a reload request.
pub enum ReloadTicket {
    /// Booting this generation now.
    Started(u32),
    /// Queued behind the reload in progress (or the first workers' boot).
    Queued,
}

/// Longest a new generation may take to become ready (at least 30 s, or `--timeout`).
pub(super) fn boot_timeout(timeout_secs: u64) -> Duration {
    Duration::from_secs(timeout_secs.max(30))
}

impl Arbiter {
    /// A reload request (HUP, `rgunctl reload`): started now, or queued behind the one
    /// in progress. `waiter` is a client to answer with the outcome. A refusal is
    /// logged as well as answered.
    pub(super) fn request_reload(
        &mut self,
        trigger: String,
        waiter: Option<(usize, Value)>,
    ) -> Result<ReloadTicket, ErrorBody> {
        match self.step(Event::ReloadAsked) {
            Step::Reload => {}
            Step::Queue => {
                let running = match &self.reload {
                    Some(r) => format!("generation {} is still booting", r.generation),
                    None => "the first workers are still booting".into(),
                };
                tracing::info!("Reload queued ({trigger}): {running}; it starts when that ends");
                self.emit("reload_queued", json!({"trigger": trigger}));
                let queued = self.queued_reload.get_or_insert_with(QueuedReload::default);
                queued.triggers.push(trigger);
                queued.waiters.extend(waiter);
                return Ok(ReloadTicket::Queued);
            }
            Step::Refuse(why) => {
                tracing::warn!("reload not started: {why}");
                return Err(ErrorBody::new(ErrorCode::Failed, why));
            }
            other => unreachable!("a reload request cannot lead to {other:?}"),
        }
        let generation = self.begin_reload(trigger).inspect_err(|e| {
            tracing::warn!("reload not started: {}", e.message);
        })?;
        if let (Some(r), Some(w)) = (self.reload.as_mut(), waiter) {
            r.waiters.push(w);
        }
        Ok(ReloadTicket::Started(generation))
    }

    /// The reload (or the first boot) is over: the master serves, and the queued
    /// reload starts if there is one (`lifecycle::decide`).
    pub(super) fn reload_over(&mut self) {
        if let Step::Serve { then_reload: true } = self.step(Event::ReloadEnded) {
            self.start_queued_reload();
        }
    }

    /// Starts the queued reload (its turn came: `Step::Serve { then_reload }`).
    pub(super) fn start_queued_reload(&mut self) {
        let Some(queued) = self.queued_reload.take() else {
            return;
        };
        if let Step::Refuse(why) = self.step(Event::ReloadAsked) {
            let error = ErrorBody::new(ErrorCode::Failed, format!("reload not started: {why}"));
            for (conn, id) in queued.waiters {
                self.reply_error(conn, &id, &error);
            }
            return;
        }
        let trigger = match queued.triggers.as_slice() {
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} (+{} queued)", rest.len()),
            [] => "queued".into(),
        };
        match self.begin_reload(trigger) {
            Ok(_) => {
                if let Some(r) = self.reload.as_mut() {
                    r.waiters.extend(queued.waiters);
                }
            }
            Err(e) => {
                for (conn, id) in queued.waiters {
                    self.reply_error(conn, &id, &e);
                }
            }
        }
    }

    /// Answers the queued reload's clients with an error (the server is stopping).
    pub(super) fn fail_queued_reload(&mut self, why: &str) {
        let Some(queued) = self.queued_reload.take() else {
            return;
        };
        let error = ErrorBody::new(ErrorCode::Failed, format!("reload not started: {why}"));
        for (conn, id) in queued.waiters {
            self.reply_error(conn, &id, &error);
        }
    }

    /// Starts booting the next generation (the master is `Reloading`); on an error
    /// the reload is over before it began.
    fn begin_reload(&mut self, trigger: String) -> Result<u32, ErrorBody> {
        let (next, target, workers_changed) = match self.next_config() {
            Ok(next) => next,
            Err(e) => {
                self.reload_over();
                return Err(e);
            }
        };
        if let Err(e) = self.switch_logging(&next) {
            self.reload_over();
            return Err(e);
        }
        // With `--preload` the re-executed master reads the configuration itself.
        let cfg = (!self.cfg.preload).then(|| Box::new(next));
        let generation = self.generation + 1;
        self.call_hook("on_reload", json!({}));
        self.notifier.reloading();
        tracing::info!("Reloading: booting generation {generation} ({target} workers)");
        self.emit(
            "reload_started",
            json!({"generation": generation, "previous_generation": self.generation, "trigger": trigger, "workers": target}),
        );
        let started_at = unix_now();
        self.push_history(HistoryEntry {
            action: "reload".into(),
            trigger,
            started_at,
            duration_ms: None,
            outcome: "running".into(),
            error: None,
            detail: json!({"generation": generation}),
        });
        self.reload = Some(Reload {
            generation,
            previous: self.generation,
            started: Instant::now(),
            waiters: Vec::new(),
            history_started_at: started_at,
            cfg,
            target,
            workers_changed,
            boot_retries: 0,
        });
        if self.cfg.preload {
            // The application lives in this master: new code needs a new image. The
            // re-executed master answers the waiting clients; `request_reload` adds
            // them first, so this waits for the loop's next turn.
            self.reexec_pending = true;
            return Ok(generation);
        }
        for _ in 0..target.max(1) {
            if let Err(e) = self.spawn_worker(generation) {
                self.fail_reload(&format!("cannot spawn a worker: {e:#}"));
                return Err(ErrorBody::new(
                    ErrorCode::Failed,
                    format!("cannot spawn a worker: {e:#}"),
                ));
            }
        }
        if let Err(e) = self.dirty_begin_reload(generation) {
            let why = format!("cannot spawn a dirty worker: {e:#}");
            self.fail_reload(&why);
            return Err(ErrorBody::new(ErrorCode::Failed, why));
        }
        Ok(generation)
    }

    /// As Gunicorn's HUP: the new generation gets the configuration as it is now.
    /// Returns it, the new generation's worker count, and whether the configured count
    /// changed. With `--preload` the re-executed master reads it again itself: it is
    /// read here all the same, so that a configuration that cannot be read fails the
    /// reload before the master re-executes, not after.
    fn next_config(&mut self) -> Result<(Config, usize, bool), ErrorBody> {
        let fresh = self.reread_config()?;
        let workers = fresh.worker_count().map_err(|e| {
            ErrorBody::new(
                ErrorCode::Failed,
                format!("the configuration cannot be read: {e}"),
            )
        })?;
        // A count set at run time (scale, TTIN/TTOU) stands until the configured
        // one changes.
        let changed = self.cfg.worker_count().ok() != Some(workers);
        let target = if changed {
            workers as usize
        } else {
            self.target
        };
        Ok((fresh, target, changed))
    }

    /// Re-reads the configuration file, environment and command line for the next
    /// generation (answering `status` while the file evaluates). Listening sockets
    /// cannot change on a reload.
    fn reread_config(&mut self) -> Result<Config, ErrorBody> {
        let here = std::env::current_dir().ok();
        let _ = std::env::set_current_dir(crate::process::original_cwd());
        let parsed =
            Config::parse_layers_waiting(crate::process::original_args(), &mut |fd, deadline| {
                self.wait_readable(fd, deadline, "reading the configuration file")
            });
        if let Some(dir) = here {
            let _ = std::env::set_current_dir(dir);
        }
        let mut fresh = parsed.map_err(|e| {
            ErrorBody::new(
                ErrorCode::Failed,
                format!("the configuration cannot be read: {e}"),
            )
        })?;
        if fresh.binds() != self.cfg.binds() {
            tracing::warn!("bind changes need a restart (or USR2); keeping the current sockets");
        }
        fresh.bind = self.cfg.bind.clone();
        // The control socket stays where it was opened, as the listeners do.
        fresh.control_socket = self.cfg.control_socket.clone();
        super::tls::load(&mut fresh).map_err(|e| ErrorBody::new(ErrorCode::Failed, e))?;
        if fresh.reload {
            fresh.reloader.warn_of_patterns_matching_nothing();
        }
        Ok(fresh)
    }

    /// The configuration a worker of `generation` runs: the reload's for the booting
    /// generation, else the serving one.
    pub(super) fn config_for(&self, generation: u32) -> &Config {
        match &self.reload {
            Some(Reload {
                generation: g,
                cfg: Some(cfg),
                ..
            }) if *g == generation => cfg,
            _ => &self.cfg,
        }
    }

    /// Swaps generations once the new one is ready; fails the reload on boot time-out.
    pub(super) fn check_reload(&mut self) {
        if std::mem::take(&mut self.reexec_pending) && self.reload.is_some() {
            if let Err(e) = self.reexec_for_reload() {
                self.fail_reload(&e);
            }
            return;
        }
        let Some(reload) = &self.reload else { return };
        let generation = reload.generation;
        let new: Vec<bool> = self
            .workers
            .values()
            .filter(|w| w.generation == generation && !w.retiring)
            .map(|w| w.ready)
            .collect();
        if !new.is_empty() && new.iter().all(|r| *r) && self.dirty_reload_ready(generation) {
            self.finish_reload();
        } else if reload.started.elapsed() > boot_timeout(self.cfg.timeout) {
            let secs = boot_timeout(self.cfg.timeout).as_secs();
            self.fail_reload(&format!("the new workers were not ready after {secs} s"));
        }
    }

    pub(super) fn finish_reload(&mut self) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        let old: Vec<usize> = self
            .workers
            .values()
            .filter(|w| w.generation != reload.generation && !w.retiring)
            .map(|w| w.slot)
            .collect();
        for slot in old {
            self.retire(slot, ExitReason::Reload);
        }
        self.generation = reload.generation;
        if let Some(cfg) = reload.cfg {
            self.cfg = *cfg;
        }
        self.dirty_switch(reload.generation);
        if reload.workers_changed {
            self.set_target(reload.target, "reload (configured workers)".into());
        }
        self.totals.reloads += 1;
        self.ledger.reload_finished(true);
        self.notifier.ready(&self.status_line());
        let duration_ms = reload.started.elapsed().as_millis() as u64;
        tracing::info!(
            "Reloaded: generation {} serving ({} ms)",
            reload.generation,
            duration_ms
        );
        self.finish_history(reload.history_started_at, duration_ms, "ok", None);
        self.emit(
            "reload_finished",
            json!({"generation": reload.generation, "previous_generation": reload.previous, "duration_ms": duration_ms}),
        );
        let result = json!({"generation": reload.generation, "previous_generation": reload.previous, "duration_ms": duration_ms});
        for (conn, id) in reload.waiters {
            self.reply_ok(conn, &id, result.clone());
        }
        self.reload_over();
    }

    /// Tears down the new generation; the serving one, and the configuration it runs,
    /// are untouched, and the master logs as the serving configuration says again.
    pub(super) fn fail_reload(&mut self, why: &str) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        self.restore_logging();
        for w in self
            .workers
            .values_mut()
            .filter(|w| w.generation == reload.generation)
        {
            w.retiring = true;
            w.leaving = Some(ExitReason::Reload);
            // Booting workers serve nothing yet: no need to be gentle.
            let _ = kill(w.pid, Signal::SIGKILL);
        }
        self.dirty_abandon(reload.generation);
        let duration_ms = reload.started.elapsed().as_millis() as u64;
        self.ledger.reload_finished(false);
        let stopping = self.phase.is_stopping();
        let outcome = if stopping {
            format!("reload to generation {} abandoned", reload.generation)
        } else {
            self.notifier.ready(&self.status_line());
            format!(
                "reload failed, generation {} keeps serving",
                reload.previous
            )
        };
        tracing::error!("{outcome}: {why}");
        self.finish_history(
            reload.history_started_at,
            duration_ms,
            "failed",
            Some(why.to_owned()),
        );
        self.emit(
            "reload_rolled_back",
            json!({"generation": reload.generation, "serving_generation": reload.previous, "duration_ms": duration_ms, "error": why}),
        );
        let error = ErrorBody::new(ErrorCode::Failed, format!("{outcome}: {why}"));
        for (conn, id) in reload.waiters {
            self.reply_error(conn, &id, &error);
        }
        self.reload_over();
    }

    fn finish_history(
        &mut self,
        started_at: f64,
        duration_ms: u64,
        outcome: &str,
        error: Option<String>,
    ) {
        if let Some(entry) = self
            .history
            .iter_mut()
            .rev()
            .find(|e| e.action == "reload" && e.started_at == started_at)
        {
            entry.duration_ms = Some(duration_ms);
            entry.outcome = outcome.into();
            entry.error = error;
        }
    }
}

// A reload's logging in the master. As Gunicorn's arbiter re-runs its logger's set-up
// on HUP before it spawns the new workers, the master switches to the re-read
// configuration's error log, level, format, syslog and statsd when it begins booting
// the new generation (its "Reloading" record is the new log's first); the new workers
// switch to it themselves right after fork, and the old ones keep theirs until they go.
// A reload that fails puts the serving configuration's logging back. A log file that
// cannot be opened refuses the reload before anything changes.
impl Arbiter {
    /// Switches the master to `next`'s logging, or changes nothing and says why not.
    pub(super) fn switch_logging(&self, next: &Config) -> Result<(), ErrorBody> {
        let refused = |what: &str, e: std::io::Error| {
            ErrorBody::new(
                ErrorCode::Failed,
                format!("the configuration cannot be read: {what}: {e}"),
            )
        };
        if let Some(path) = &next.access_logfile {
            crate::log::check_path(path).map_err(|e| refused("accesslog", e))?;
        }
        crate::log::switch(&ErrorLog::of(next)).map_err(|e| refused("errorlog", e))?;
        crate::syslog::start(&next.observability, next.proc_name());
        crate::statsd::restart(&next.observability);
        Ok(())
    }

    /// After a failed reload: the serving configuration's logging again.
    pub(super) fn restore_logging(&self) {
        if let Err(e) = crate::log::switch(&ErrorLog::of(&self.cfg)) {
            tracing::error!("cannot put back the serving configuration's error log: {e}");
        }
        crate::syslog::start(&self.cfg.observability, self.cfg.proc_name());
        crate::statsd::restart(&self.cfg.observability);
    }
}
