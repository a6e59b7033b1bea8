//! The worker table's verbs: spawn (fork), read what workers say, reap and judge their
//! exits, back off on crash loops, kill the stale (time-outs) and recycle the bloated
//! (`--max-worker-rss`).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::MaxWorkerRss;
use crate::python::Forked;
use serde_json::json;

use super::{
    describe_exit, Arbiter, Event, ExitReason, Phase, Step, WorkerProc, ABORT_GRACE, MAX_BACKOFF,
};
use crate::worker::{self, exit, WorkerInit};

impl Arbiter {
    /// `--timeout`: a worker whose request (or event loop) has been stuck longer gets
    /// SIGABRT, which makes it write every thread's Python stack to the error log
    /// (faulthandler) and die; SIGKILL follows if it lingers.
    pub(super) fn kill_stale(&mut self) {
        if self.cfg.timeout == 0 {
            return;
        }
        let limit_ms = self.cfg.timeout.saturating_mul(1000);
        let now = crate::scoreboard::monotonic_ms();
        let mut timed_out = Vec::new();
        for w in self.workers.values_mut() {
            if let Some(at) = w.aborted {
                if at.elapsed() >= ABORT_GRACE {
                    let _ = kill(w.pid, Signal::SIGKILL);
                }
                continue;
            }
            if !w.ready || w.adopted {
                continue;
            }
            let slot = self.scoreboard.slot(w.slot);
            let started = slot
                .request_started_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            let heartbeat = slot.heartbeat_ms.load(std::sync::atomic::Ordering::Relaxed);
            // An ASGI worker's clock is its oldest request's age, which may
            // legitimately be long (a long-poll): only its heartbeat counts.
            let asgi = self.cfg.worker_kind() == crate::config::WorkerKind::Asgi;
            let stuck_request = !asgi && started != 0 && now.saturating_sub(started) > limit_ms;
            let silent = now.saturating_sub(heartbeat) > limit_ms;
            if stuck_request || silent {
                if is_stopped(w.pid) {
                    // SIGSTOPped: it cannot write its traceback, and SIGABRT would wait
                    // for a SIGCONT. Killed now, `--timeout` + at most a tick after its
                    // last heartbeat.
                    tracing::error!("WORKER TIMEOUT (pid:{}): stopped; killing it", w.pid);
                    let _ = kill(w.pid, Signal::SIGKILL);
                } else {
                    tracing::error!("WORKER TIMEOUT (pid:{})", w.pid);
                    let _ = kill(w.pid, Signal::SIGABRT);
                }
                w.aborted = Some(Instant::now());
                let request_s = (started != 0).then(|| now.saturating_sub(started) as f64 / 1000.0);
                timed_out.push((w.pid, w.generation, request_s));
            }
        }
        self.totals.timeouts += timed_out.len() as u64;
        for (pid, generation, request_s) in timed_out {
            self.emit(
                "worker_timeout",
                json!({"pid": pid.as_raw(), "generation": generation, "request_s": request_s}),
            );
        }
    }

    /// `--max-worker-rss`: a worker over the limit is retired gracefully (it finishes
    /// what it is doing) and `manage_workers` starts its replacement at once.
    pub(super) fn recycle_bloated(&mut self) {
        let limit = self.rss_limit_bytes();
        if limit == 0 || self.last_rss_check.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_rss_check = Instant::now();
        let bloated: Vec<(usize, Pid, u64)> = self
            .workers
            .values()
            .filter(|w| w.ready && !w.retiring && w.generation == self.generation)
            .map(|w| (w.slot, w.pid, crate::process::rss_bytes(w.pid.as_raw())))
            .filter(|(_, _, rss)| *rss > limit)
            .collect();
        for (slot, pid, rss) in bloated {
            tracing::warn!(
                "Worker (pid:{pid}) uses {} MiB, over --max-worker-rss {} ({} MiB); replacing it",
                rss / (1024 * 1024),
                self.cfg.max_worker_rss,
                limit / (1024 * 1024)
            );
            self.retire(slot, ExitReason::MaxRss);
        }
        self.recycle_bloated_dirty(limit);
    }

    /// `--max-worker-rss` in bytes (0: off). `auto`: 80% of the cgroup memory limit
    /// shared by the target number of workers (the master and the page cache keep the
    /// rest), so scaling up lowers each worker's share.
    fn rss_limit_bytes(&self) -> u64 {
        match self.cfg.max_worker_rss {
            MaxWorkerRss::Mib(n) => n.saturating_mul(1024 * 1024),
            MaxWorkerRss::Auto => self
                .memory_limit
                .map_or(0, |m| m / 10 * 8 / self.target.max(1) as u64),
        }
    }

    pub(super) fn retire(&mut self, slot: usize, reason: ExitReason) {
        if let Some(w) = self.workers.get_mut(&slot) {
            w.retiring = true;
            w.leaving = Some(reason);
            let _ = kill(w.pid, Signal::SIGTERM);
        }
    }

    pub(super) fn spawn_worker(&mut self, generation: u32) -> anyhow::Result<()> {
        let slot = self
            .scoreboard
            .claim(|i| self.workers.contains_key(&i))
            .context("no free scoreboard slot")?;
        let (master_end, worker_end) = UnixStream::pair()?;
        master_end.set_nonblocking(true)?;
        self.call_hook(
            "pre_fork",
            json!({"worker": {"pid": null, "age": self.totals.spawned}}),
        );
        // After the hook: while it ran, the control socket may have accepted clients.
        let master_fds = self.master_fds(&master_end);
        // SAFETY: the master is single-threaded, so the child inherits no lock held by
        // another thread; the child only runs `worker::run`, which never returns.
        let master_pid = nix::unistd::getpid();
        if self.preloaded.is_some() {
            self.warn_of_threads();
        }
        // SAFETY: as above; the interpreter's own fork hooks run around it. Every
        // signal stays pending in the child until it has replaced the master's
        // handlers with its own (`worker::boot_and_serve`).
        let inherit = crate::python::Inherit::AllBut(&master_fds);
        match unsafe { crate::python::fork_interpreter(inherit) }.context("fork failed")? {
            Forked::Child(signals) => worker::run(WorkerInit {
                cfg: self.config_for(generation),
                listeners: &self.listeners,
                slot: self.scoreboard.slot(slot),
                peers: crate::scoreboard::Peers::new(self.scoreboard, slot),
                to_master: worker_end,
                master_signals: self.signals.ids(),
                signals: Some(signals),
                identity: &self.identity,
                age: self.totals.spawned,
                preloaded: self.preloaded.as_ref(),
                master_pid,
            }),
            Forked::Parent(child) => {
                drop(worker_end);
                self.adopt_worker(slot, child, generation, master_end)
            }
        }
    }

    /// The master's own descriptors, which a worker closes right after fork: every
    /// worker's pipe (and the new one's master end), the signal pipe, the poll, the
    /// control, hook and metrics sockets.
    fn master_fds(&self, master_end: &UnixStream) -> Vec<i32> {
        let mut master_fds: Vec<i32> = self.workers.values().map(|w| w.pipe.as_raw_fd()).collect();
        master_fds.push(master_end.as_raw_fd());
        master_fds.extend(self.signals.fds());
        master_fds.push(self.poll.as_raw_fd());
        if let Some(c) = &self.control {
            master_fds.extend(c.fds());
        }
        if let Some(h) = &self.hooks {
            master_fds.extend(h.fds());
        }
        if let Some(m) = &self.metrics {
            master_fds.extend(m.fds());
        }
        master_fds.extend(self.dirty_fds());
        master_fds
    }

    /// A worker just forked: into the scoreboard, the table and the poll.
    fn adopt_worker(
        &mut self,
        slot: usize,
        child: Pid,
        generation: u32,
        master_end: UnixStream,
    ) -> anyhow::Result<()> {
        self.scoreboard.assign(slot, child.as_raw());
        // Into the table first: whatever happens next, the master tracks (and
        // reaps) every worker it forked.
        let registered = self.poll.registry().register(
            &mut SourceFd(&master_end.as_raw_fd()),
            Token(slot),
            Interest::READABLE,
        );
        self.workers.insert(
            slot,
            WorkerProc {
                pid: child,
                slot,
                generation,
                pipe: master_end,
                inbox: Vec::new(),
                ready: false,
                spawned: Instant::now(),
                retiring: false,
                age: self.totals.spawned,
                aborted: None,
                leaving: None,
                adopted: false,
            },
        );
        self.totals.spawned += 1;
        if let Err(e) = registered {
            // Its ready message could never be read: stop it (it is reaped
            // like any other) rather than leave it half-known.
            tracing::error!("cannot watch worker {child}'s pipe: {e}; stopping it");
            if let Some(w) = self.workers.get_mut(&slot) {
                w.retiring = true;
            }
            let _ = kill(child, Signal::SIGKILL);
            return Err(anyhow::Error::new(e).context("cannot watch a new worker"));
        }
        tracing::debug!("spawned worker {child} (generation {generation}) in slot {slot}");
        self.emit(
            "worker_spawned",
            json!({"pid": child.as_raw(), "generation": generation, "slot": slot}),
        );
        Ok(())
    }

    /// `--preload`: importing the application may have started threads (APM agents,
    /// connection pools). A fork copies only the forking thread, so a lock another one
    /// held stays locked forever in the worker. Said once per thread count.
    fn warn_of_threads(&mut self) {
        let threads = crate::process::thread_count();
        if threads > 1 && threads != self.threads_warned {
            self.threads_warned = threads;
            tracing::warn!(
                "the master has {threads} threads (the application started {} while it was preloaded); forking workers with threads running can deadlock them: start threads in post_fork or post_worker_init, or drop --preload",
                threads - 1
            );
        }
    }

    /// Reads what a worker says: `R\n` when ready, `E<text>` before it exits on a boot
    /// failure.
    pub(super) fn read_worker(&mut self, slot: usize) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        drain(&w.pipe, &mut w.inbox);
        if !w.ready && w.inbox.starts_with(b"R\n") {
            w.ready = true;
            w.inbox.drain(..2);
            self.failures = 0;
            self.boot_failing = false;
            let ready = json!({
                "pid": w.pid.as_raw(),
                "generation": w.generation,
                "boot_ms": w.spawned.elapsed().as_millis() as u64,
            });
            self.emit("worker_ready", ready);
            self.maybe_running();
        }
        self.read_stacks(slot);
    }

    /// Starting ends when every worker of the first generation is ready, dirty
    /// workers included.
    pub(super) fn maybe_running(&mut self) {
        if self.phase == Phase::Starting
            && self.ready_workers() >= self.target
            && self.dirty_ready()
        {
            self.first_workers_ready();
        }
    }

    /// `Starting` is over: the master serves (and takes over from the old master after
    /// USR2); a reload asked for meanwhile starts now.
    fn first_workers_ready(&mut self) {
        let Step::Serve { then_reload } = self.step(Event::FirstWorkersReady) else {
            return;
        };
        tracing::info!("All {} workers ready", self.target);
        self.take_over_from_old_master();
        self.notifier.ready(&self.status_line());
        if then_reload {
            self.start_queued_reload();
        }
    }

    /// After ready, a worker sends only `S<json>\n` lines: its stacks for `stack`.
    fn read_stacks(&mut self, slot: usize) {
        let Some(w) = self.workers.get_mut(&slot).filter(|w| w.ready) else {
            return;
        };
        let pid = w.pid.as_raw();
        let mut lines = Vec::new();
        while w.inbox.first() == Some(&b'S') {
            let Some(nl) = memchr::memchr(b'\n', &w.inbox) else {
                break;
            };
            lines.push(w.inbox[1..nl].to_vec());
            w.inbox.drain(..=nl);
        }
        for line in lines {
            self.take_stacks(pid, &line);
        }
    }

    /// Collects exited workers and decides what their exit means.
    pub(super) fn reap_workers(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, Some(code), None),
                WaitStatus::Signaled(pid, sig, _) => (pid, None, Some(sig)),
                _ => continue,
            };
            if self.reap_helper(pid, code, signal) {
                continue;
            }
            let Some(slot) = self
                .workers
                .iter()
                .find(|(_, w)| w.pid == pid)
                .map(|(s, _)| *s)
            else {
                // Not ours: as PID 1 of a container the master inherits every orphan
                // (an application's daemonized grandchild, a shell's leftovers).
                tracing::debug!("reaped process {pid}, not a worker ({code:?}, {signal:?})");
                continue;
            };
            let (w, boot_error) = self.forget_worker(slot, code, signal);
            self.log_worker_exit(&w, code, signal);
            self.judge_exit(&w, code, signal, boot_error);
        }
    }

    /// A child of the master that is not a worker: the hook host, a new master after
    /// an upgrade, or one still starting. `false` when `pid` is none of them.
    fn reap_helper(&mut self, pid: Pid, code: Option<i32>, signal: Option<Signal>) -> bool {
        if self.hooks.as_ref().is_some_and(|h| h.pid == pid) {
            tracing::error!(
                "the hook host exited ({code:?}, {signal:?}); master hooks will not run"
            );
            self.hooks = None;
            return true;
        }
        if self.reap_dirty(pid, code, signal) {
            return true;
        }
        if self.upgraded_to == Some(pid.as_raw() as u32) {
            tracing::warn!("the new master {pid} has exited; this master may upgrade again");
            self.upgraded_to = None;
            return true;
        }
        if self.is_upgrade_child(pid) {
            self.on_new_master_exited(code);
            return true;
        }
        false
    }

    /// Takes an exited worker out of the table, the poll and its scoreboard slot, with
    /// its tallies kept in the ledger, the `worker_exited` event and `child_exit`.
    /// Returns it with the boot error it reported, if any (logged here).
    fn forget_worker(
        &mut self,
        slot: usize,
        code: Option<i32>,
        signal: Option<Signal>,
    ) -> (WorkerProc, Option<String>) {
        let mut w = self.workers.remove(&slot).expect("present");
        self.read_remaining(&mut w);
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&w.pipe.as_raw_fd()));
        self.totals.requests_of_exited += self
            .scoreboard
            .slot(slot)
            .requests
            .load(std::sync::atomic::Ordering::Relaxed);
        self.totals.exited += 1;
        let reason = self.exit_reason(&w, code);
        self.ledger
            .retire_slot(slot, self.scoreboard.slot(slot), reason);
        self.emit(
            "worker_exited",
            json!({
                "pid": w.pid.as_raw(),
                "generation": w.generation,
                "reason": reason.label(),
                "code": code,
                "signal": signal.map(|s| s.as_str()),
            }),
        );
        self.scoreboard.release(slot);
        self.call_hook(
            "child_exit",
            json!({"worker": {"pid": w.pid.as_raw(), "age": w.age}}),
        );
        // (The worker logged it.)
        let boot_error = (w.inbox.first() == Some(&b'E'))
            .then(|| String::from_utf8_lossy(&w.inbox[1..]).into_owned());
        (w, boot_error)
    }

    /// Gunicorn's line for a worker's exit: quiet when it was asked to go.
    fn log_worker_exit(&self, w: &WorkerProc, code: Option<i32>, signal: Option<Signal>) {
        let pid = w.pid;
        let asked = self.phase.is_stopping() || w.retiring;
        match (code, signal) {
            (Some(0), _) if asked => tracing::debug!("worker {pid} exited"),
            (Some(0), _) => tracing::info!("Worker exiting (pid: {pid})"),
            (Some(c), _) => tracing::error!("Worker (pid:{pid}) exited with code {c}."),
            (_, Some(sig)) if asked && sig == Signal::SIGKILL => {
                tracing::warn!("Worker (pid:{pid}) was killed")
            }
            (_, Some(sig)) => tracing::error!("Worker (pid:{pid}) was sent {sig}!"),
            _ => {}
        }
    }

    /// What an exit means for the server: a reload whose worker died booting fails; a
    /// boot failure while starting stops the server; an early crash backs off.
    fn judge_exit(
        &mut self,
        w: &WorkerProc,
        code: Option<i32>,
        signal: Option<Signal>,
        boot_error: Option<String>,
    ) {
        if self.phase.is_stopping() {
            return;
        }
        if self
            .reload
            .as_ref()
            .is_some_and(|r| r.generation == w.generation)
            && !w.ready
            && !w.retiring
        {
            self.new_worker_died(w, code, signal, boot_error);
            return;
        }
        let failed_boot = matches!(code, Some(exit::BOOT_ERROR) | Some(exit::APP_LOAD_ERROR));
        self.boot_failing |= failed_boot && w.generation == self.generation;
        if failed_boot {
            let reason = if code == Some(exit::APP_LOAD_ERROR) {
                "App failed to load."
            } else {
                "Worker failed to boot."
            };
            // While starting, that stops the server.
            if self.stop_for(Event::BootFailed, Some(reason)) {
                self.exit_code = code.unwrap_or(1);
                return;
            }
        }
        // A clean exit (max-requests, a retired worker) is not a crash. One that never
        // became ready is a crash loop in the making; one that served is replaced
        // at once, as Gunicorn does.
        let crashed = code != Some(0) && !w.retiring;
        if failed_boot || (crashed && !w.ready) {
            self.note_failure();
            tracing::warn!(
                "Worker failed early; next spawn in {:.1}s",
                self.next_spawn
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            );
        }
    }

    /// A worker of the booting generation died before it was ready. Killed by a
    /// signal (an OOM killer, an operator) it is booted again, at most
    /// `BOOT_RETRIES` times per reload; otherwise (or past that) the new code failed
    /// and so does the reload.
    fn new_worker_died(
        &mut self,
        w: &WorkerProc,
        code: Option<i32>,
        signal: Option<Signal>,
        boot_error: Option<String>,
    ) {
        let why = boot_error.unwrap_or_else(|| describe_exit(code, signal));
        let retry = signal.is_some() && self.reload.as_mut().is_some_and(|r| r.take_retry());
        if !retry {
            self.fail_reload(&why);
            return;
        }
        tracing::warn!(
            "{why}; booting another worker of generation {}",
            w.generation
        );
        if let Err(e) = self.spawn_worker(w.generation) {
            self.fail_reload(&format!("{why}; cannot spawn another: {e:#}"));
        }
    }

    pub(super) fn note_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let backoff = Duration::from_millis(100 * 2u64.saturating_pow(self.failures.min(16)))
            .min(MAX_BACKOFF);
        self.next_spawn = Instant::now() + backoff;
    }

    pub(super) fn read_remaining(&self, w: &mut WorkerProc) {
        drain(&w.pipe, &mut w.inbox);
        if w.inbox.starts_with(b"R\n") {
            w.inbox.drain(..2);
        }
    }
}

/// Whether a process is stopped (SIGSTOP, SIGTSTP) or traced, from `/proc/PID/stat`.
fn is_stopped(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold any.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    matches!(state, Some('T' | 't'))
}

/// Reads what a non-blocking pipe holds into `inbox`, until it would block or ends.
pub(super) fn drain(pipe: &UnixStream, inbox: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = (&*pipe).read(&mut buf) {
        if n == 0 {
            break;
        }
        inbox.extend_from_slice(&buf[..n]);
    }
}
