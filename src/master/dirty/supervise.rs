//! The dirty pool supervised as HTTP workers are: spawns and retirements to match the
//! target (`scale --dirty`), ready lines and heartbeats, a call's time-out (the router
//! names the worker: SIGABRT, then SIGKILL), `--max-worker-rss`, and exits judged
//! (replaced at the same index, so a replacement holds what the lost worker held; a
//! boot failure stops a starting server or fails a reload).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::Token;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::pool::{DirtyProc, ROUTER_TOKEN, TOKEN_BASE};
use crate::dirty::worker::HEARTBEAT;
use crate::master::lifecycle::Event;
use crate::master::metrics::ExitReason;
use crate::master::workers::drain;
use crate::master::{Arbiter, ABORT_GRACE, MAX_BACKOFF};

/// Heartbeats a dirty worker may miss before it counts as wedged, whatever
/// `--dirty-timeout` says.
const SILENT_BEATS: u32 = 3;

impl Arbiter {
    /// Spawns or retires dirty workers of the serving generation to match the
    /// target: each index 0..target has one worker (a replacement takes its
    /// predecessor's index, so it holds the same apps).
    pub(in crate::master) fn manage_dirty(&mut self) {
        let generation = self.generation;
        let Some((has_router, target)) =
            self.dirty.as_ref().map(|p| (p.router.is_some(), p.target))
        else {
            return;
        };
        if !has_router {
            if let Err(e) = self.spawn_router() {
                tracing::error!("cannot start the dirty router: {e:#}");
            }
            return;
        }
        let pool = self.dirty.as_ref().expect("present");
        let retire: Vec<usize> = pool
            .live(generation)
            .filter(|w| w.index >= target)
            .map(|w| w.index)
            .collect();
        for index in retire {
            self.retire_dirty(generation, index, ExitReason::Scale);
        }
        let pool = self.dirty.as_ref().expect("present");
        if Instant::now() < pool.next_spawn {
            return;
        }
        let missing: Vec<usize> = (0..target)
            .filter(|i| !pool.live(generation).any(|w| w.index == *i))
            .collect();
        for index in missing {
            if let Err(e) = self.spawn_dirty_worker(generation, index) {
                tracing::error!("cannot spawn a dirty worker: {e:#}");
                self.note_dirty_failure();
                break;
            }
        }
    }

    /// Tells the worker at `index` of `generation` to stop once its calls are done.
    pub(super) fn retire_dirty(&mut self, generation: u32, index: usize, reason: ExitReason) {
        if let Some(w) = self.dirty.as_mut().and_then(|p| {
            p.workers
                .values_mut()
                .find(|w| w.generation == generation && w.index == index && !w.retiring)
        }) {
            tracing::debug!("retiring dirty worker {} ({})", w.pid, reason.label());
            w.retiring = true;
            let _ = kill(w.pid, Signal::SIGTERM);
        }
    }

    fn note_dirty_failure(&mut self) {
        if let Some(pool) = self.dirty.as_mut() {
            pool.failures = pool.failures.saturating_add(1);
            let backoff = Duration::from_millis(100 * 2u64.saturating_pow(pool.failures.min(16)))
                .min(MAX_BACKOFF);
            pool.next_spawn = Instant::now() + backoff;
        }
    }

    /// A readable pipe of the pool: the router's lines, or a dirty worker's.
    pub(in crate::master) fn handle_dirty_event(&mut self, token: Token) {
        if token == ROUTER_TOKEN {
            self.read_router();
        } else {
            self.read_dirty_worker(token.0 - TOKEN_BASE);
        }
    }

    fn read_router(&mut self) {
        let Some(router) = self.dirty.as_mut().and_then(|p| p.router.as_mut()) else {
            return;
        };
        drain(&router.link, &mut router.inbox);
        let mut lines = Vec::new();
        while let Some(nl) = memchr::memchr(b'\n', &router.inbox) {
            lines.push(String::from_utf8_lossy(&router.inbox[..nl]).into_owned());
            router.inbox.drain(..=nl);
        }
        for line in lines {
            if let Some(pid) = line
                .strip_prefix("T ")
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                self.abort_dirty(Pid::from_raw(pid));
            } else if let Some(json) = line.strip_prefix("C ") {
                if let (Ok(v), Some(pool)) = (serde_json::from_str(json), self.dirty.as_mut()) {
                    pool.counters = v;
                }
            }
        }
    }

    /// A call on `pid` ran past `--dirty-timeout`: SIGABRT makes it log its stacks
    /// and exit; SIGKILL follows after a grace (`kill_stale_dirty`).
    fn abort_dirty(&mut self, pid: Pid) {
        let Some(pool) = self.dirty.as_mut() else {
            return;
        };
        let Some(w) = pool.workers.values_mut().find(|w| w.pid == pid) else {
            return;
        };
        if w.aborted.is_some() {
            return;
        }
        tracing::error!("DIRTY WORKER TIMEOUT (pid:{pid})");
        let _ = kill(pid, Signal::SIGABRT);
        w.aborted = Some(Instant::now());
        pool.timeouts += 1;
        let generation = w.generation;
        self.emit(
            "dirty_worker_timeout",
            json!({"pid": pid.as_raw(), "generation": generation}),
        );
    }

    fn read_dirty_worker(&mut self, serial: usize) {
        let Some(w) = self.dirty.as_mut().and_then(|p| p.workers.get_mut(&serial)) else {
            return;
        };
        drain(&w.pipe, &mut w.inbox);
        let mut ready = None;
        // A boot error (`E...`) is read in full when the worker exits.
        while w.inbox.first() != Some(&b'E') {
            let Some(nl) = memchr::memchr(b'\n', &w.inbox) else {
                break;
            };
            let line: Vec<u8> = w.inbox.drain(..=nl).collect();
            match line.first() {
                Some(b'H') => w.last_beat = Instant::now(),
                Some(b'R') if !w.ready => {
                    w.ready = true;
                    w.last_beat = Instant::now();
                    let said: Value = serde_json::from_slice(&line[1..]).unwrap_or_default();
                    w.apps = said["apps"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect();
                    ready = Some(json!({
                        "pid": w.pid.as_raw(),
                        "generation": w.generation,
                        "apps": w.apps,
                        "boot_ms": w.spawned.elapsed().as_millis() as u64,
                    }));
                }
                _ => {}
            }
        }
        if let Some(event) = ready {
            if let Some(pool) = self.dirty.as_mut() {
                pool.failures = 0;
            }
            self.emit("dirty_worker_ready", event);
            self.maybe_running();
        }
    }

    /// The pool is ready when every dirty worker of the serving generation is (or
    /// there is no pool).
    pub(in crate::master) fn dirty_ready(&self) -> bool {
        self.dirty
            .as_ref()
            .is_none_or(|p| p.generation_ready(self.generation, p.target))
    }

    /// `--dirty-timeout` for a silent worker (its I/O thread beats every second even
    /// while a call runs, so silence means the process is wedged): SIGKILL. And the
    /// SIGKILL that follows an abort's grace. Silence counts from `SILENT_BEATS`
    /// missed heartbeats at least: a time-out shorter than that (`--dirty-timeout 1`)
    /// would take one late beat for a wedged worker and kill an idle one.
    pub(in crate::master) fn kill_stale_dirty(&mut self) {
        let timeout = self.cfg.dirty.dirty_timeout;
        let silence = Duration::from_secs(timeout).max(SILENT_BEATS * HEARTBEAT);
        let Some(pool) = self.dirty.as_mut() else {
            return;
        };
        for w in pool.workers.values_mut() {
            if let Some(at) = w.aborted {
                if at.elapsed() >= ABORT_GRACE {
                    let _ = kill(w.pid, Signal::SIGKILL);
                }
                continue;
            }
            if timeout > 0 && w.ready && w.last_beat.elapsed() > silence {
                tracing::error!(
                    "DIRTY WORKER TIMEOUT (pid:{}): no heartbeat for {} s",
                    w.pid,
                    silence.as_secs()
                );
                let _ = kill(w.pid, Signal::SIGKILL);
                w.aborted = Some(Instant::now());
            }
        }
    }

    /// `--max-worker-rss` applies to dirty workers too: one over it is replaced
    /// gracefully (its calls finish first).
    pub(in crate::master) fn recycle_bloated_dirty(&mut self, limit: u64) {
        if limit == 0 {
            return;
        }
        let generation = self.generation;
        let Some(pool) = self.dirty.as_ref() else {
            return;
        };
        let bloated: Vec<(usize, Pid, u64)> = pool
            .live(generation)
            .filter(|w| w.ready)
            .map(|w| (w.index, w.pid, crate::process::rss_bytes(w.pid.as_raw())))
            .filter(|(_, _, rss)| *rss > limit)
            .collect();
        for (index, pid, rss) in bloated {
            tracing::warn!(
                "Dirty worker (pid:{pid}) uses {} MiB, over --max-worker-rss; replacing it",
                rss >> 20
            );
            self.retire_dirty(generation, index, ExitReason::MaxRss);
        }
    }

    /// A child that is the router or a dirty worker (false: neither).
    pub(in crate::master) fn reap_dirty(
        &mut self,
        pid: Pid,
        code: Option<i32>,
        signal: Option<Signal>,
    ) -> bool {
        let Some(pool) = self.dirty.as_mut() else {
            return false;
        };
        if pool.router.as_ref().is_some_and(|r| r.pid == pid) {
            let r = pool.router.take().expect("present");
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&r.link.as_raw_fd()));
            if !self.phase.is_stopping() {
                tracing::error!("the dirty router exited ({code:?}, {signal:?}); restarting it");
            }
            return true;
        }
        let Some(serial) = pool
            .workers
            .iter()
            .find(|(_, w)| w.pid == pid)
            .map(|(s, _)| *s)
        else {
            return false;
        };
        let mut w = pool.workers.remove(&serial).expect("present");
        drain(&w.pipe, &mut w.inbox);
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&w.pipe.as_raw_fd()));
        self.call_hook(
            "dirty_worker_exit",
            json!({"worker": {"pid": pid.as_raw(), "age": w.age, "app_paths": w.apps}}),
        );
        self.emit(
            "dirty_worker_exited",
            json!({"pid": pid.as_raw(), "generation": w.generation, "code": code, "signal": signal.map(|s| s.as_str())}),
        );
        self.judge_dirty_exit(&w, code, signal);
        true
    }

    fn judge_dirty_exit(&mut self, w: &DirtyProc, code: Option<i32>, signal: Option<Signal>) {
        let pid = w.pid;
        let boot_error = (w.inbox.first() == Some(&b'E'))
            .then(|| String::from_utf8_lossy(&w.inbox[1..]).into_owned());
        if let Some(text) = &boot_error {
            tracing::error!("{text}");
        }
        let stopping = self.phase.is_stopping();
        match (code, signal) {
            (Some(0), _) if stopping || w.retiring => tracing::debug!("dirty worker {pid} exited"),
            (Some(c), _) => tracing::error!("Dirty worker (pid:{pid}) exited with code {c}"),
            (_, Some(sig)) if w.aborted.is_some() || stopping => {
                tracing::warn!("Dirty worker (pid:{pid}) was killed by {sig}")
            }
            (_, Some(sig)) => tracing::error!("Dirty worker (pid:{pid}) was sent {sig}!"),
            _ => {}
        }
        if stopping {
            return;
        }
        let reloading = self
            .reload
            .as_ref()
            .is_some_and(|r| r.generation == w.generation);
        if reloading && !w.ready && !w.retiring {
            let why = boot_error.unwrap_or_else(|| crate::master::describe_exit(code, signal));
            self.fail_reload(&format!("a new dirty worker failed to boot: {why}"));
            return;
        }
        if !w.ready && !w.retiring {
            // While starting, that stops the server.
            if code == Some(crate::worker::exit::BOOT_ERROR)
                && self.stop_for(Event::BootFailed, Some("Dirty worker failed to boot."))
            {
                self.exit_code = crate::worker::exit::BOOT_ERROR;
                return;
            }
            self.note_dirty_failure();
        }
    }

    /// `scale --dirty`: the pool's target; replacements and retirements follow from
    /// `manage_dirty` (the highest indices go first, so the apps limited to a few
    /// workers stay where they are).
    pub(in crate::master) fn scale_dirty(
        &mut self,
        target: rgunctl::protocol::ScaleTarget,
        trigger: String,
    ) -> Result<Value, rgunctl::protocol::ErrorBody> {
        use rgunctl::protocol::{ErrorBody, ErrorCode, ScaleTarget, MAX_WORKERS};
        let Some(pool) = self.dirty.as_mut() else {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "scale --dirty: no dirty pool runs (give --dirty-app and --dirty-workers)",
            ));
        };
        let previous = pool.target;
        let new = match target {
            ScaleTarget::Workers(n) => i64::from(n),
            ScaleTarget::Delta(d) => previous as i64 + i64::from(d),
            ScaleTarget::Fewer(n) => (previous as i64 - i64::from(n)).max(1),
            ScaleTarget::Auto => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "scale --dirty: the dirty pool does not scale itself; give a count",
                ))
            }
        };
        if !(1..=i64::from(MAX_WORKERS)).contains(&new) {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("scale --dirty: {new} workers is out of range 1..={MAX_WORKERS}"),
            ));
        }
        pool.target = new as usize;
        tracing::info!("Number of dirty workers: {previous} -> {new}");
        self.emit(
            "dirty_scale",
            json!({"previous": previous, "target": new, "trigger": trigger}),
        );
        Ok(json!({"previous": previous, "target": new}))
    }
}
