//! The dirty pool under the master (`--dirty-app`, `--dirty-workers`): the master
//! binds the socket `gunicorn.dirty` clients reach (named in `GUNICORN_DIRTY_SOCKET`
//! for every process forked after it), forks the router and the dirty workers through
//! `python::fork_interpreter`, hands each worker's link to the router (SCM_RIGHTS),
//! and supervises them as it does HTTP workers: ready messages, heartbeats, a call's
//! time-out (the router says which worker: SIGABRT, then SIGKILL), replacements that
//! hold what the lost worker held (same index), `scale`, `--max-worker-rss`, and
//! reloads that switch to a new dirty generation only when all its apps' `init()`
//! succeeded.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::lifecycle::Event;
use super::metrics::ExitReason;
use super::workers::drain;
use super::{Arbiter, ABORT_GRACE, MAX_BACKOFF};
use crate::python::Forked;

/// Tokens of the dirty pool's pipes in the master's poll: the router's, then one per
/// dirty worker (between the worker slots and the metrics server's).
pub const TOKEN_BASE: usize = 1 << 38;
const ROUTER_TOKEN: Token = Token(TOKEN_BASE);

pub(super) struct DirtyPool {
    /// Keeps the socket's directory (private to rgun's user) until the pool ends.
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    listener: UnixListener,
    router: Option<RouterProc>,
    workers: BTreeMap<usize, DirtyProc>,
    next_serial: usize,
    pub target: usize,
    spawned: u64,
    pub timeouts: u64,
    failures: u32,
    next_spawn: Instant,
    /// The router's last counters (calls, errors, time-outs, queue).
    pub counters: Value,
    /// The counters as last sent to statsd (calls, errors, time-outs).
    statsd_sent: [u64; 3],
}

/// What `/metrics` and statsd show of the pool.
pub(super) struct DirtyMetrics {
    pub ready: u64,
    pub calls: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub call_us: u64,
    pub queued: u64,
    pub in_flight: u64,
}

struct RouterProc {
    pid: Pid,
    link: UnixStream,
    inbox: Vec<u8>,
}

pub(super) struct DirtyProc {
    pub pid: Pid,
    pub index: usize,
    pub generation: u32,
    pipe: UnixStream,
    inbox: Vec<u8>,
    pub ready: bool,
    pub apps: Vec<String>,
    pub spawned: Instant,
    pub last_beat: Instant,
    retiring: bool,
    aborted: Option<Instant>,
    age: u64,
}

impl DirtyPool {
    /// The socket and its directory; `GUNICORN_DIRTY_SOCKET` names it from now on.
    pub fn open(target: usize) -> anyhow::Result<DirtyPool> {
        let dir = tempfile::Builder::new()
            .prefix("rgun-dirty-")
            .tempdir()
            .context("cannot make the dirty socket's directory")?;
        let path = dir.path().join("arbiter.sock");
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen at {}", path.display()))?;
        pyo3::Python::with_gil(|py| {
            crate::python::set_environ(
                py,
                &[(
                    "GUNICORN_DIRTY_SOCKET".to_owned(),
                    path.to_string_lossy().into_owned(),
                )],
            )
        })
        .context("cannot set GUNICORN_DIRTY_SOCKET")?;
        Ok(DirtyPool {
            _dir: dir,
            path,
            listener,
            router: None,
            workers: BTreeMap::new(),
            next_serial: 1,
            target,
            spawned: 0,
            timeouts: 0,
            failures: 0,
            next_spawn: Instant::now(),
            counters: json!({}),
            statsd_sent: [0; 3],
        })
    }

    pub fn workers(&self) -> impl Iterator<Item = &DirtyProc> {
        self.workers.values()
    }

    pub fn pids(&self) -> Vec<Pid> {
        self.workers
            .values()
            .map(|w| w.pid)
            .chain(self.router.as_ref().map(|r| r.pid))
            .collect()
    }

    fn fds(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = self.workers.values().map(|w| w.pipe.as_raw_fd()).collect();
        fds.push(self.listener.as_raw_fd());
        fds.extend(self.router.as_ref().map(|r| r.link.as_raw_fd()));
        fds
    }

    /// Dirty workers of `generation` meant to stay.
    fn live(&self, generation: u32) -> impl Iterator<Item = &DirtyProc> {
        self.workers
            .values()
            .filter(move |w| w.generation == generation && !w.retiring)
    }

    /// Every dirty worker of `generation` has loaded its apps.
    pub fn generation_ready(&self, generation: u32, target: usize) -> bool {
        let live: Vec<&DirtyProc> = self.live(generation).collect();
        live.len() >= target && live.iter().all(|w| w.ready)
    }

    fn tell_router(&self, line: &str, fd: Option<i32>) {
        let Some(r) = &self.router else { return };
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        let iov = [IoSlice::new(line.as_bytes())];
        let fds = fd.map(|f| [f]);
        let cmsgs: Vec<ControlMessage<'_>> = fds
            .as_ref()
            .map(|f| vec![ControlMessage::ScmRights(f)])
            .unwrap_or_default();
        if let Err(e) =
            sendmsg::<UnixAddr>(r.link.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)
        {
            tracing::error!("cannot tell the dirty router {line:?}: {e}");
        }
    }
}

impl Arbiter {
    /// Start-up: the socket, the router, `on_dirty_starting`; workers follow from
    /// `manage_dirty`.
    pub(super) fn start_dirty(&mut self) -> anyhow::Result<()> {
        if !self.cfg.dirty.enabled() {
            return Ok(());
        }
        let pool = DirtyPool::open(self.cfg.dirty.dirty_workers as usize)?;
        tracing::info!("Dirty arbiter socket: {}", pool.path.display());
        self.dirty = Some(pool);
        self.call_hook("on_dirty_starting", json!({}));
        self.spawn_router()
    }

    fn spawn_router(&mut self) -> anyhow::Result<()> {
        let Some(pool) = self.dirty.as_mut() else {
            return Ok(());
        };
        let (master_end, router_end) = UnixStream::pair()?;
        master_end.set_nonblocking(true)?;
        let listener = pool.listener.try_clone()?;
        let keep = [listener.as_raw_fd(), router_end.as_raw_fd()];
        let master_pid = nix::unistd::getpid();
        // SAFETY: the master is single-threaded; the child runs only the router's
        // loop (no Python) and exits.
        match unsafe { crate::python::fork_interpreter(crate::python::Inherit::Only(&keep)) }
            .context("fork failed")?
        {
            Forked::Child(signals) => crate::dirty::router::run(crate::dirty::router::RouterInit {
                listener,
                master: router_end,
                timeout_secs: self.cfg.dirty.dirty_timeout,
                threads: self.cfg.dirty.dirty_threads as usize,
                master_pid,
                master_signals: self.signals.ids(),
                signals: Some(signals),
            }),
            Forked::Parent(pid) => {
                drop(router_end);
                self.poll.registry().register(
                    &mut SourceFd(&master_end.as_raw_fd()),
                    ROUTER_TOKEN,
                    Interest::READABLE,
                )?;
                tracing::info!("Dirty router started (pid: {pid})");
                let pool = self.dirty.as_mut().expect("present");
                pool.router = Some(RouterProc {
                    pid,
                    link: master_end,
                    inbox: Vec::new(),
                });
                let generation = self.generation;
                self.route_generation(generation);
                // A new router learns of the workers still running by their links,
                // which died with the old one: they are replaced.
                let orphans: Vec<Pid> = self
                    .dirty
                    .iter()
                    .flat_map(|p| p.workers.values())
                    .map(|w| w.pid)
                    .collect();
                for pid in orphans {
                    let _ = kill(pid, Signal::SIGTERM);
                }
                Ok(())
            }
        }
    }

    /// Tells the router which generation serves and the apps it was given.
    fn route_generation(&self, generation: u32) {
        let Some(pool) = &self.dirty else { return };
        let apps: Vec<String> = self
            .config_for(generation)
            .dirty
            .dirty_apps
            .iter()
            .map(|a| a.path.clone())
            .collect();
        pool.tell_router(&format!("G {generation} {}\n", apps.join(" ")), None);
    }

    /// Spawns or retires dirty workers of the serving generation to match the
    /// target: each index 0..target has one worker (a replacement takes its
    /// predecessor's index, so it holds the same apps).
    pub(super) fn manage_dirty(&mut self) {
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

    fn retire_dirty(&mut self, generation: u32, index: usize, _reason: ExitReason) {
        if let Some(w) = self.dirty.as_mut().and_then(|p| {
            p.workers
                .values_mut()
                .find(|w| w.generation == generation && w.index == index && !w.retiring)
        }) {
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

    pub(super) fn spawn_dirty_worker(
        &mut self,
        generation: u32,
        index: usize,
    ) -> anyhow::Result<()> {
        let (master_end, worker_pipe) = UnixStream::pair()?;
        master_end.set_nonblocking(true)?;
        let (router_end, worker_link) = UnixStream::pair()?;
        let keep = [worker_pipe.as_raw_fd(), worker_link.as_raw_fd()];
        let master_pid = nix::unistd::getpid();
        let age = self.dirty.as_ref().map_or(0, |p| p.spawned);
        // SAFETY: the master is single-threaded; the child runs only the dirty
        // worker's main, which never returns.
        match unsafe { crate::python::fork_interpreter(crate::python::Inherit::Only(&keep)) }
            .context("fork failed")?
        {
            Forked::Child(signals) => crate::dirty::worker::run(crate::dirty::worker::DirtyInit {
                cfg: self.config_for(generation),
                index,
                age,
                to_master: worker_pipe,
                to_router: worker_link,
                master_signals: self.signals.ids(),
                signals: Some(signals),
                identity: &self.identity,
                master_pid,
            }),
            Forked::Parent(pid) => {
                drop((worker_pipe, worker_link));
                self.adopt_dirty_worker(pid, generation, index, master_end, router_end)
            }
        }
    }

    fn adopt_dirty_worker(
        &mut self,
        pid: Pid,
        generation: u32,
        index: usize,
        pipe: UnixStream,
        router_end: UnixStream,
    ) -> anyhow::Result<()> {
        let pool = self.dirty.as_mut().expect("present");
        let serial = pool.next_serial;
        pool.next_serial += 1;
        pool.tell_router(
            &format!("W {} {generation} {index}\n", pid.as_raw()),
            Some(router_end.as_raw_fd()),
        );
        drop(router_end);
        let registered = self.poll.registry().register(
            &mut SourceFd(&pipe.as_raw_fd()),
            Token(TOKEN_BASE + serial),
            Interest::READABLE,
        );
        let age = pool.spawned;
        pool.spawned += 1;
        pool.workers.insert(
            serial,
            DirtyProc {
                pid,
                index,
                generation,
                pipe,
                inbox: Vec::new(),
                ready: false,
                apps: Vec::new(),
                spawned: Instant::now(),
                last_beat: Instant::now(),
                retiring: false,
                aborted: None,
                age,
            },
        );
        if let Err(e) = registered {
            let _ = kill(pid, Signal::SIGKILL);
            return Err(anyhow::Error::new(e).context("cannot watch a new dirty worker"));
        }
        tracing::debug!("spawned dirty worker {pid} (generation {generation}, index {index})");
        self.emit(
            "dirty_worker_spawned",
            json!({"pid": pid.as_raw(), "generation": generation, "index": index}),
        );
        Ok(())
    }

    /// A readable pipe of the pool: the router's lines, or a dirty worker's.
    pub(super) fn handle_dirty_event(&mut self, token: Token) {
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
    pub(super) fn dirty_ready(&self) -> bool {
        self.dirty
            .as_ref()
            .is_none_or(|p| p.generation_ready(self.generation, p.target))
    }

    /// `--dirty-timeout` for a silent worker (its I/O thread beats every second even
    /// while a call runs, so silence means the process is wedged): SIGKILL. And the
    /// SIGKILL that follows an abort's grace.
    pub(super) fn kill_stale_dirty(&mut self) {
        let timeout = self.cfg.dirty.dirty_timeout;
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
            if timeout > 0 && w.ready && w.last_beat.elapsed() > Duration::from_secs(timeout) {
                tracing::error!(
                    "DIRTY WORKER TIMEOUT (pid:{}): no heartbeat for {timeout} s",
                    w.pid
                );
                let _ = kill(w.pid, Signal::SIGKILL);
                w.aborted = Some(Instant::now());
            }
        }
    }

    /// `--max-worker-rss` applies to dirty workers too: one over it is replaced
    /// gracefully (its calls finish first).
    pub(super) fn recycle_bloated_dirty(&mut self, limit: u64) {
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
    pub(super) fn reap_dirty(
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
            let why = boot_error.unwrap_or_else(|| super::describe_exit(code, signal));
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

    /// A reload boots a whole new dirty generation beside the serving one.
    pub(super) fn dirty_begin_reload(&mut self, generation: u32) -> anyhow::Result<()> {
        let Some(pool) = &self.dirty else {
            return Ok(());
        };
        if !self.config_for(generation).dirty.enabled() {
            return Ok(());
        }
        let target = pool.target;
        for index in 0..target {
            self.spawn_dirty_worker(generation, index)?;
        }
        Ok(())
    }

    /// The reload's dirty generation is ready (or there is none to wait for).
    pub(super) fn dirty_reload_ready(&self, generation: u32) -> bool {
        match &self.dirty {
            Some(pool) if self.config_for(generation).dirty.enabled() => {
                pool.generation_ready(generation, pool.target)
            }
            _ => true,
        }
    }

    /// The new generation serves: calls go to its dirty workers; the old ones finish
    /// their calls and stop.
    pub(super) fn dirty_switch(&mut self, generation: u32) {
        if self.dirty.is_none() {
            return;
        }
        self.route_generation(generation);
        let old: Vec<(u32, usize)> = self
            .dirty
            .iter()
            .flat_map(|p| p.workers.values())
            .filter(|w| w.generation != generation && !w.retiring)
            .map(|w| (w.generation, w.index))
            .collect();
        for (g, index) in old {
            self.retire_dirty(g, index, ExitReason::Reload);
        }
    }

    /// A failed reload: its dirty workers go; the serving ones never stopped.
    pub(super) fn dirty_abandon(&mut self, generation: u32) {
        let Some(pool) = self.dirty.as_mut() else {
            return;
        };
        for w in pool
            .workers
            .values_mut()
            .filter(|w| w.generation == generation)
        {
            w.retiring = true;
            let _ = kill(w.pid, Signal::SIGKILL);
        }
    }

    /// While stopping: once the HTTP workers have gone, the dirty workers are told
    /// to stop (they finish their calls); once they have gone, the router.
    pub(super) fn stop_dirty(&mut self) {
        let http_gone = self.workers.is_empty();
        let Some(pool) = self.dirty.as_mut() else {
            return;
        };
        if !http_gone {
            return;
        }
        for w in pool.workers.values_mut().filter(|w| !w.retiring) {
            w.retiring = true;
            let _ = kill(w.pid, Signal::SIGTERM);
        }
        if pool.workers.is_empty() {
            if let Some(r) = &pool.router {
                let _ = kill(r.pid, Signal::SIGTERM);
            }
        }
    }

    /// Before a `--preload` reload re-executes the master: the new image starts a pool
    /// of its own (a new socket, which the new generation's workers are given), so
    /// this one's processes stop and its socket directory goes.
    pub(super) fn end_dirty_for_exec(&mut self) {
        let Some(pool) = self.dirty.take() else {
            return;
        };
        for pid in pool.pids() {
            let _ = kill(pid, Signal::SIGTERM);
        }
        drop(pool);
    }

    /// Nothing of the pool is left running.
    pub(super) fn dirty_gone(&self) -> bool {
        self.dirty
            .as_ref()
            .is_none_or(|p| p.workers.is_empty() && p.router.is_none())
    }

    /// The pool's descriptors, for a worker to close after fork.
    pub(super) fn dirty_fds(&self) -> Vec<i32> {
        self.dirty.as_ref().map(DirtyPool::fds).unwrap_or_default()
    }

    /// The pool's figures for `/metrics` and statsd (None: no pool).
    pub(super) fn dirty_metrics(&self) -> Option<DirtyMetrics> {
        let pool = self.dirty.as_ref()?;
        let n = |k: &str| pool.counters.get(k).and_then(Value::as_u64).unwrap_or(0);
        Some(DirtyMetrics {
            ready: pool.live(self.generation).filter(|w| w.ready).count() as u64,
            calls: n("calls"),
            errors: n("errors"),
            timeouts: n("timeouts"),
            call_us: n("call_us"),
            queued: n("queued"),
            in_flight: n("in_flight"),
        })
    }

    /// Once a second: the pool's gauges, and its counters as sums since the last send
    /// (`gunicorn.dirty.*`).
    pub(super) fn dirty_statsd(&mut self) {
        let Some(d) = self.dirty_metrics() else {
            return;
        };
        crate::statsd::gauge("gunicorn.dirty.workers", d.ready);
        crate::statsd::gauge("gunicorn.dirty.queued", d.queued);
        crate::statsd::gauge("gunicorn.dirty.in_flight", d.in_flight);
        let pool = self.dirty.as_mut().expect("present");
        let now = [d.calls, d.errors, d.timeouts];
        for (i, name) in [
            "gunicorn.dirty.calls",
            "gunicorn.dirty.errors",
            "gunicorn.dirty.timeouts",
        ]
        .into_iter()
        .enumerate()
        {
            // A new router counts from zero again: send its whole count.
            let since = now[i].checked_sub(pool.statsd_sent[i]).unwrap_or(now[i]);
            crate::statsd::count(name, since);
        }
        pool.statsd_sent = now;
    }

    /// `scale --dirty`: the pool's target; replacements and retirements follow from
    /// `manage_dirty` (the highest indices go first, so the apps limited to a few
    /// workers stay where they are).
    pub(super) fn scale_dirty(
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

    /// `status`'s `dirty` section.
    pub(super) fn dirty_status(&self) -> Value {
        let Some(pool) = &self.dirty else {
            return Value::Null;
        };
        let workers: Vec<Value> = pool
            .workers
            .values()
            .map(|w| {
                json!({
                    "pid": w.pid.as_raw(),
                    "generation": w.generation,
                    "index": w.index,
                    "state": if w.retiring { "stopping" } else if w.ready { "ready" } else { "booting" },
                    "apps": w.apps,
                    "age_s": w.spawned.elapsed().as_secs(),
                    "last_heartbeat_s": w.last_beat.elapsed().as_secs_f64(),
                    "rss_bytes": crate::process::rss_bytes(w.pid.as_raw()),
                })
            })
            .collect();
        json!({
            "socket": pool.path,
            "router_pid": pool.router.as_ref().map(|r| r.pid.as_raw()),
            "target": pool.target,
            "workers": workers,
            "timeouts": pool.timeouts,
            "calls": pool.counters,
        })
    }
}
