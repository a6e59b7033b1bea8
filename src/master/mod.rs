//! The master (arbiter): one thread, one poll loop. It owns the listeners, the
//! scoreboard, the control socket and the worker table; it forks workers, waits for
//! their explicit ready message, replaces the ones that die (backing off when they die
//! young), swaps generations on reload, and turns signals and control requests into
//! actions.
//!
//! The master never serves HTTP and runs no application code unless `--preload` asks
//! it to import the app; it holds the interpreter rgun was started in, and forks
//! through `python::fork_interpreter` only.

mod accept_watch;
mod commands;
mod dirty;
mod events;
mod hooks;
mod lifecycle;
pub mod listeners;
mod metrics;
mod notify;
mod probes;
mod reexec;
mod reload;
mod scaling;
mod shutdown_delay;
mod stacks;
mod start;
mod tls;
mod upgrade;
mod workers;

pub use self::reexec::REEXEC_ENV;
pub use self::start::{check_config, run};
pub use self::upgrade::UPGRADE_FROM_ENV;
use self::upgrade::{UpgradeChild, UPGRADE_TOKEN};

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use rgunctl::protocol::HistoryEntry;
use serde_json::json;

use self::lifecycle::{Event, Phase, Step};
use self::metrics::server::{MetricsServer, TOKEN_BASE as METRICS_TOKENS};
use self::metrics::{ExitReason, Ledger};
use self::notify::Notifier;
use self::reload::Reload;
use crate::config::Config;
use crate::control::{ControlServer, TOKEN_BASE as CONTROL_TOKENS};
use crate::net::Listener;
use crate::scoreboard::{Scoreboard, MAX_SLOTS};
use crate::signals::SignalPipe;

const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
/// The descriptor `wait_readable` waits for (a hook's answer, a configuration file).
const WAIT_TOKEN: Token = Token(usize::MAX - 2);
/// Quick stop: how long workers get before SIGKILL.
const QUICK_STOP_GRACE: Duration = Duration::from_secs(1);
/// The longest pause between respawns of a worker that keeps dying young.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After SIGABRT for a time-out, how long before SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// Entries kept for `history`.
const HISTORY_LEN: usize = 20;

/// What a signal asks for; the loop reasons about these, not signal numbers.
#[derive(Debug, Clone, Copy)]
enum Intent {
    GracefulStop,
    QuickStop,
    Reload,
    MoreWorkers,
    FewerWorkers,
    ReopenLogs,
    Upgrade,
    StopWorkers,
    ChildExited,
}

/// A signal's name as Gunicorn logs it (`Handling signal: ttin`); none for CHLD.
fn signal_name(sig: i32) -> Option<&'static str> {
    use signal_hook::consts::*;
    Some(match sig {
        SIGTERM => "term",
        SIGINT => "int",
        SIGQUIT => "quit",
        SIGHUP => "hup",
        SIGTTIN => "ttin",
        SIGTTOU => "ttou",
        SIGUSR1 => "usr1",
        SIGUSR2 => "usr2",
        SIGWINCH => "winch",
        _ => return None,
    })
}

fn intent(sig: i32) -> Option<Intent> {
    use signal_hook::consts::*;
    Some(match sig {
        SIGTERM => Intent::GracefulStop,
        SIGINT | SIGQUIT => Intent::QuickStop,
        SIGHUP => Intent::Reload,
        SIGTTIN => Intent::MoreWorkers,
        SIGTTOU => Intent::FewerWorkers,
        SIGUSR1 => Intent::ReopenLogs,
        SIGUSR2 => Intent::Upgrade,
        SIGWINCH => Intent::StopWorkers,
        SIGCHLD => Intent::ChildExited,
        _ => return None,
    })
}

struct WorkerProc {
    pid: Pid,
    slot: usize,
    generation: u32,
    pipe: UnixStream,
    inbox: Vec<u8>,
    ready: bool,
    spawned: Instant,
    /// Told to stop (scale down, old generation, kill): not to be replaced.
    retiring: bool,
    /// Workers spawned before this one (Gunicorn's `worker.age`).
    age: u64,
    /// When it was sent SIGABRT for a time-out; SIGKILL follows after a grace.
    aborted: Option<Instant>,
    /// Why the master told it to stop, for `rgun_worker_exits_total`.
    leaving: Option<ExitReason>,
    /// Forked by this master's previous image (`--preload` reload): its heartbeat is
    /// on that image's scoreboard, which this one cannot read.
    adopted: bool,
}

/// Counters for `status`.
#[derive(Debug, Default)]
struct Totals {
    requests_of_exited: u64,
    spawned: u64,
    exited: u64,
    timeouts: u64,
    reloads: u64,
}

pub struct Arbiter {
    cfg: Config,
    listeners: Vec<Listener>,
    scoreboard: Scoreboard,
    poll: Poll,
    signals: SignalPipe,
    control: Option<ControlServer>,
    /// `--metrics-bind`'s HTTP server.
    metrics: Option<MetricsServer>,
    /// Counts for `/metrics` that outlive the workers they describe.
    ledger: Ledger,
    /// When the statsd gauges were last sent.
    gauges_sent: Instant,
    notifier: Notifier,
    identity: crate::process::Identity,
    pidfile: Option<crate::process::PidFile>,
    /// The pid of the new master (USR2) once it is ready.
    upgraded_to: Option<u32>,
    /// A new master we started and wait for.
    upgrade_child: Option<UpgradeChild>,
    /// When we are a new master: the pipe to the old one, until we are ready.
    old_master: Option<UnixStream>,
    /// When we are a new master: control socket path and pidfile, taken over at ready.
    deferred_takeover: bool,
    /// The master-side hooks' host process, when the config file defines any.
    hooks: Option<hooks::HookHost>,
    /// `--preload`: the application, imported in this process.
    preloaded: Option<crate::worker::Preloaded>,
    workers: BTreeMap<usize, WorkerProc>,
    /// The dirty pool (`--dirty-app`), when configured.
    dirty: Option<dirty::DirtyPool>,
    /// Events seen during `wait_readable`, for the loop to handle next.
    deferred: VecDeque<Token>,
    /// Control requests that arrived during `wait_readable`, other than read-only ones.
    deferred_requests: VecDeque<crate::control::Request>,
    target: usize,
    /// The generation serving traffic.
    generation: u32,
    reload: Option<Reload>,
    /// A `--preload` reload re-executes the master at the loop's next turn.
    reexec_pending: bool,
    /// Episodes of failing `accept` in the workers.
    accept_watch: accept_watch::AcceptWatch,
    /// Reloads asked for while `reload` runs: one more, started when it ends.
    queued_reload: Option<reload::QueuedReload>,
    /// `stack` requests waiting for their workers' answers.
    stack_waiters: Vec<stacks::StackWaiter>,
    /// `scale --wait` clients: (connection, request id, started).
    scale_waiters: Vec<(usize, serde_json::Value, usize)>,
    history: VecDeque<HistoryEntry>,
    totals: Totals,
    phase: Phase,
    started: Instant,
    started_at: SystemTime,
    stop_deadline: Option<Instant>,
    /// During `--shutdown-delay`: when the workers are to be told to stop.
    shutdown_delay_until: Option<Instant>,
    /// Young deaths in a row, for back-off; reset when a worker becomes ready.
    failures: u32,
    /// The last worker to exit failed to boot (`/readyz` says so); cleared when a
    /// worker becomes ready.
    boot_failing: bool,
    /// The cgroup memory limit `--max-worker-rss auto` shares out.
    memory_limit: Option<u64>,
    last_rss_check: Instant,
    next_spawn: Instant,
    /// The master's thread count last warned about (`--preload`).
    threads_warned: usize,
    /// Autoscaling (`--workers-min`/`--workers-max`), when on.
    scaling: Option<scaling::Scaling>,
    exit_code: i32,
    /// Why the master stops with a failure (a first worker that cannot boot): the
    /// `Reason:` record under `Shutting down: Master`, both errors, as in Gunicorn.
    halt_reason: Option<&'static str>,
}

impl Arbiter {
    /// The supervision story: wait for something → handle it → reap → stop or converge.
    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            // Events that arrived while the master waited for a hook or a configuration
            // file (`wait_readable`) come first.
            while let Some(token) = self.deferred.pop_front() {
                self.handle_token(token);
            }
            self.handle_deferred_requests();
            let timeout = self.next_wakeup();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("master poll failed: {e}");
                }
            }
            for event in events.iter() {
                self.handle_token(event.token());
            }
            self.reap_workers();
            self.watch_accept_errors();
            self.sweep_metrics();
            self.answer_stack_waiters();
            if self.phase.is_stopping() {
                self.stop_dirty();
                if self.workers.is_empty()
                    && self.dirty_gone()
                    && self.step(Event::WorkersGone) == Step::Exit
                {
                    self.cleanup();
                    return;
                }
                if self.stop_deadline.is_some_and(|d| Instant::now() >= d) {
                    self.signal_all(Signal::SIGKILL);
                }
                if self.draining() {
                    // Still serving: time-outs apply as before, then the delay ends.
                    self.kill_stale();
                    self.check_shutdown_delay();
                }
            } else {
                self.notifier.tick(self.ready_workers());
                self.kill_stale();
                self.kill_stale_dirty();
                self.recycle_bloated();
                self.check_reload();
                self.autoscale();
                self.manage_workers();
                self.manage_dirty();
                self.answer_scale_waiters();
            }
        }
    }

    fn handle_token(&mut self, token: Token) {
        match token {
            SIGNAL_TOKEN => {
                for sig in self.signals.take() {
                    if let Some(i) = intent(sig) {
                        if let Some(name) = signal_name(sig) {
                            // Gunicorn's arbiter logs every signal it handles so.
                            tracing::info!("Handling signal: {name}");
                        }
                        self.handle_intent(i);
                    }
                }
            }
            UPGRADE_TOKEN => self.read_upgrade_pipe(),
            WAIT_TOKEN => {} // a wait that has ended
            Token(t) if t >= CONTROL_TOKENS => self.handle_control_event(Token(t)),
            Token(t) if t >= METRICS_TOKENS => self.handle_metrics_event(Token(t)),
            Token(t) if t >= dirty::TOKEN_BASE => self.handle_dirty_event(Token(t)),
            Token(slot) => self.read_worker(slot),
        }
    }

    /// Waits until `fd` is readable or `deadline` passes (false), for a hook or a
    /// configuration file the master cannot do without. Meanwhile the control socket
    /// keeps answering `ping`, `status`, `config` and `history` (other commands wait
    /// for the loop, as does every other event).
    fn wait_readable(&mut self, fd: RawFd, deadline: Instant, busy_with: &str) -> bool {
        let registry = self.poll.registry();
        if let Err(e) = registry.register(&mut SourceFd(&fd), WAIT_TOKEN, Interest::READABLE) {
            tracing::warn!(
                "cannot wait in the master's loop while {busy_with} ({e}); the control socket waits too"
            );
            return crate::config::file::poll_readable(fd, deadline);
        }
        let mut events = Events::with_capacity(64);
        let mut ready = false;
        while !ready {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(left)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("master poll failed: {e}");
                    ready = crate::config::file::poll_readable(fd, deadline);
                    break;
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    WAIT_TOKEN => ready = true,
                    // Above CONTROL_TOKENS too: they must not reach the control server.
                    token @ (SIGNAL_TOKEN | UPGRADE_TOKEN) => self.deferred.push_back(token),
                    Token(t) if t >= CONTROL_TOKENS => {
                        self.handle_control_event_while_busy(Token(t))
                    }
                    // Read-only: a scrape is answered while the master waits.
                    Token(t) if t >= METRICS_TOKENS => self.handle_metrics_event(Token(t)),
                    other => self.deferred.push_back(other),
                }
            }
        }
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        ready
    }

    fn next_wakeup(&self) -> Duration {
        let mut wake = Instant::now() + Duration::from_secs(1);
        if let Some(d) = self.stop_deadline.or(self.shutdown_delay_until) {
            wake = wake.min(d);
        }
        if let Some(d) = self.notifier.next_deadline() {
            wake = wake.min(d);
        }
        if self.live_workers() < self.target {
            wake = wake.min(self.next_spawn);
        }
        if let Some(d) = self.scaling.as_ref().and_then(|s| s.next_wakeup()) {
            wake = wake.min(d);
        }
        wake.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(5))
    }

    fn handle_intent(&mut self, intent: Intent) {
        match intent {
            Intent::GracefulStop => self.begin_stop(true),
            Intent::QuickStop => self.begin_stop(false),
            Intent::Reload => {
                tracing::info!("Hang up: Master");
                // A refusal is logged where it is decided (`request_reload`).
                let _ = self.request_reload("signal HUP".into(), None);
            }
            Intent::MoreWorkers if self.scaling.is_some() => self.move_floor(1, "signal TTIN"),
            Intent::FewerWorkers if self.scaling.is_some() => self.move_floor(-1, "signal TTOU"),
            Intent::MoreWorkers => self.set_target(self.target + 1, "signal TTIN".into()),
            Intent::FewerWorkers => {
                self.set_target(self.target.saturating_sub(1), "signal TTOU".into())
            }
            Intent::ReopenLogs => self.reopen_logs(),
            Intent::Upgrade => match self.step(Event::UpgradeAsked) {
                Step::NewMaster => {
                    if let Err(e) = self.upgrade() {
                        tracing::error!("cannot upgrade: {e}");
                    }
                }
                Step::Refuse(why) => tracing::warn!("USR2 ignored: {why}"),
                _ => {}
            },
            Intent::StopWorkers if self.cfg.daemon => {
                // Gunicorn's WINCH: keep the master (and its sockets), stop the workers;
                // TTIN or `scale` brings them back.
                tracing::info!("graceful stop of workers");
                let old = self.target;
                self.target = 0;
                if let Some(scaling) = self.scaling.as_mut() {
                    scaling.paused = true;
                }
                self.call_hook("nworkers_changed", json!({"new": 0, "old": old}));
            }
            Intent::StopWorkers => tracing::debug!("SIGWINCH ignored. Not daemonized"),
            Intent::ChildExited => {}
        }
    }

    fn reopen_logs(&mut self) {
        if let Err(e) = crate::log::reopen_current_error_log() {
            tracing::error!("{e}");
        }
        self.signal_all(Signal::SIGUSR1);
        self.emit("logs_reopened", json!({}));
    }

    /// TERM, INT, QUIT or `rgunctl stop`.
    fn begin_stop(&mut self, graceful: bool) {
        self.stop_for(Event::Stop { graceful }, None);
    }

    /// The stop path for `event` (a stop asked for, a first worker that cannot boot,
    /// the end of the shutdown delay), as `lifecycle::decide` has it: into `Draining`
    /// or `Stopping`, or on from there; the first step abandons any reload. `why`
    /// replaces the "Stopping" line. Whether the master is now on its way out because
    /// of this event.
    fn stop_for(&mut self, event: Event, why: Option<&'static str>) -> bool {
        let was = self.phase;
        let step = self.step(event);
        if !matches!(step, Step::Drain | Step::Stop { .. }) {
            return false;
        }
        let graceful = !matches!(step, Step::Stop { graceful: false });
        if !was.is_stopping() {
            match why {
                // Said when the master is down (`cleanup`).
                Some(why) => self.halt_reason = Some(why),
                None => {
                    tracing::info!("Stopping ({})", if graceful { "graceful" } else { "quick" })
                }
            }
            self.emit("stopping", json!({"graceful": graceful}));
            self.fail_reload(lifecycle::STOPPING);
            self.fail_queued_reload(lifecycle::STOPPING);
            self.notifier.stopping();
        }
        match step {
            Step::Drain => self.begin_shutdown_delay(),
            _ => {
                if was == Phase::Draining {
                    self.end_shutdown_delay(event);
                }
                self.stop_workers(graceful);
            }
        }
        true
    }

    fn signal_all(&self, sig: Signal) {
        for w in self.workers.values() {
            let _ = kill(w.pid, sig);
        }
        self.signal_dirty(sig);
    }

    /// Workers of the serving generation that are meant to stay.
    fn live_workers(&self) -> usize {
        self.workers
            .values()
            .filter(|w| !w.retiring && w.generation == self.generation)
            .count()
    }

    /// Spawn or retire workers of the serving generation to match the target.
    fn manage_workers(&mut self) {
        let live = self.live_workers();
        if live > self.target {
            // Retire the youngest first: the old ones are warm.
            let mut candidates: Vec<(Instant, usize)> = self
                .workers
                .values()
                .filter(|w| !w.retiring && w.generation == self.generation)
                .map(|w| (w.spawned, w.slot))
                .collect();
            candidates.sort();
            for (_, slot) in candidates.into_iter().rev().take(live - self.target) {
                self.retire(slot, ExitReason::Scale);
            }
        }
        if live < self.target && Instant::now() >= self.next_spawn {
            for _ in live..self.target {
                if let Err(e) = self.spawn_worker(self.generation) {
                    tracing::error!("cannot spawn a worker: {e:#}");
                    self.note_failure();
                    break;
                }
            }
        }
    }

    /// A new master whose workers are ready takes the control socket and pidfile over
    /// and tells the old master.
    fn take_over_from_old_master(&mut self) {
        if !std::mem::take(&mut self.deferred_takeover) {
            return;
        }
        if let Some(path) = self.cfg.control_socket_path() {
            match ControlServer::take_over(
                &path,
                self.cfg.control_socket_mode,
                self.poll.registry(),
            ) {
                Ok(c) => self.control = Some(c),
                Err(e) => tracing::error!("cannot take over the control socket: {e:#}"),
            }
        }
        if let Some(path) = &self.cfg.pidfile {
            match crate::process::PidFile::create(path) {
                Ok(p) => self.pidfile = Some(p),
                Err(e) => tracing::error!("{e:#}"),
            }
        }
        if let Some(mut pipe) = self.old_master.take() {
            let _ = std::io::Write::write_all(&mut pipe, b"R");
        }
    }

    /// systemd's STATUS= line.
    fn status_line(&self) -> String {
        format!(
            "generation {}, {} of {} workers ready",
            self.generation,
            self.ready_workers(),
            self.target
        )
    }

    fn ready_workers(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.ready && !w.retiring && w.generation == self.generation)
            .count()
    }

    fn push_history(&mut self, entry: HistoryEntry) -> usize {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(entry);
        self.history.len() - 1
    }

    fn cleanup(&mut self) {
        // After USR2 the socket files belong to the new master.
        if self.upgraded_to.is_none() && self.upgrade_child.is_none() {
            for l in &self.listeners {
                if let Some(path) = &l.unix_path {
                    let _ = std::fs::remove_file(path);
                }
            }
            if let Some(c) = &self.control {
                c.remove_socket();
            }
            if let Some(m) = &self.metrics {
                m.remove_socket();
            }
        }
        if let Some(p) = &self.pidfile {
            p.remove();
        }
        self.call_hook("on_exit", json!({}));
        match self.halt_reason {
            Some(why) => {
                tracing::error!("Shutting down: Master");
                tracing::error!("Reason: {why}");
            }
            None => tracing::info!("Shutting down: Master"),
        }
        crate::statsd::flush_now();
    }
}

fn describe_exit(code: Option<i32>, signal: Option<Signal>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("a new worker exited with code {c} before it was ready"),
        (_, Some(s)) => format!("a new worker was killed by {s} before it was ready"),
        _ => "a new worker exited before it was ready".into(),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

const _: () = assert!(
    MAX_SLOTS < dirty::TOKEN_BASE
        && dirty::TOKEN_BASE < METRICS_TOKENS
        && METRICS_TOKENS < CONTROL_TOKENS
);
