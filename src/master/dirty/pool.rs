//! The dirty pool's processes and how they start: the socket `gunicorn.dirty`
//! clients reach (named in `GUNICORN_DIRTY_SOCKET` for every process forked after it),
//! the router and the dirty workers forked through `python::fork_interpreter`, and
//! each worker's link handed to the router (SCM_RIGHTS). It decides nothing about how
//! many run or when they go (`supervise`, `generations`).

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::master::Arbiter;
use crate::python::Forked;

/// Tokens of the dirty pool's pipes in the master's poll: the router's, then one per
/// dirty worker (between the worker slots and the metrics server's).
pub const TOKEN_BASE: usize = 1 << 38;
pub(super) const ROUTER_TOKEN: Token = Token(TOKEN_BASE);

pub(in crate::master) struct DirtyPool {
    /// Keeps the socket's directory (private to rgun's user) until the pool ends.
    _dir: tempfile::TempDir,
    pub(super) path: PathBuf,
    pub(super) listener: UnixListener,
    pub(super) router: Option<RouterProc>,
    pub(super) workers: BTreeMap<usize, DirtyProc>,
    pub(super) next_serial: usize,
    pub(super) target: usize,
    pub(super) spawned: u64,
    pub(super) timeouts: u64,
    pub(super) failures: u32,
    pub(super) next_spawn: Instant,
    /// The router's last counters (calls, errors, time-outs, queue).
    pub(super) counters: Value,
    /// The counters as last sent to statsd (calls, errors, time-outs, call time).
    pub(super) statsd_sent: [u64; 4],
}

pub(super) struct RouterProc {
    pub(super) pid: Pid,
    pub(super) link: UnixStream,
    pub(super) inbox: Vec<u8>,
}

pub(super) struct DirtyProc {
    pub(super) pid: Pid,
    pub(super) index: usize,
    pub(super) generation: u32,
    pub(super) pipe: UnixStream,
    pub(super) inbox: Vec<u8>,
    pub(super) ready: bool,
    pub(super) apps: Vec<String>,
    pub(super) spawned: Instant,
    pub(super) last_beat: Instant,
    pub(super) retiring: bool,
    pub(super) aborted: Option<Instant>,
    pub(super) age: u64,
}

impl DirtyPool {
    /// The socket and its directory; `GUNICORN_DIRTY_SOCKET` names it from now on.
    pub(super) fn open(target: usize) -> anyhow::Result<DirtyPool> {
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
            statsd_sent: [0; 4],
        })
    }

    pub(super) fn pids(&self) -> Vec<Pid> {
        self.workers
            .values()
            .map(|w| w.pid)
            .chain(self.router.as_ref().map(|r| r.pid))
            .collect()
    }

    pub(super) fn fds(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = self.workers.values().map(|w| w.pipe.as_raw_fd()).collect();
        fds.push(self.listener.as_raw_fd());
        fds.extend(self.router.as_ref().map(|r| r.link.as_raw_fd()));
        fds
    }

    /// Dirty workers of `generation` meant to stay.
    pub(super) fn live(&self, generation: u32) -> impl Iterator<Item = &DirtyProc> {
        self.workers
            .values()
            .filter(move |w| w.generation == generation && !w.retiring)
    }

    /// Every dirty worker of `generation` has loaded its apps.
    pub(super) fn generation_ready(&self, generation: u32, target: usize) -> bool {
        let live: Vec<&DirtyProc> = self.live(generation).collect();
        live.len() >= target && live.iter().all(|w| w.ready)
    }

    pub(super) fn tell_router(&self, line: &str, fd: Option<i32>) {
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
    pub(in crate::master) fn start_dirty(&mut self) -> anyhow::Result<()> {
        if !self.cfg.dirty.enabled() {
            return Ok(());
        }
        let pool = DirtyPool::open(self.cfg.dirty.dirty_workers as usize)?;
        tracing::info!("Dirty arbiter socket: {}", pool.path.display());
        self.dirty = Some(pool);
        self.call_hook("on_dirty_starting", json!({}));
        self.spawn_router()
    }

    pub(super) fn spawn_router(&mut self) -> anyhow::Result<()> {
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
    pub(super) fn route_generation(&self, generation: u32) {
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
}
