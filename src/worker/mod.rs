//! A worker process: set-up after fork, then one event loop that accepts connections
//! on the shared listeners, drives each connection's state machine and calls the
//! application on the same thread (no hand-off per request).
//!
//! The GIL is held while requests are processed and released only while the loop
//! waits in epoll, so application background threads still run.

mod body;
mod conn;
mod respond;

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use pyo3::prelude::*;

use self::conn::{Conn, Drive};
use crate::config::{AllowIps, Config};
use crate::http::head::HeadLimits;
use crate::log::AccessLog;
use crate::master::listeners::Listener;
use crate::scoreboard::{Slot, WorkerState};
use crate::signals::SignalPipe;
use crate::wsgi::environ::{Local, Peer};
use crate::wsgi::App;

/// Exit statuses a worker uses to tell the master not to simply respawn it.
pub mod exit {
    /// The worker could not set itself up (Gunicorn's WORKER_BOOT_ERROR).
    pub const BOOT_ERROR: i32 = 3;
    /// The application could not be imported (Gunicorn's APP_LOAD_ERROR).
    pub const APP_LOAD_ERROR: i32 = 4;
}

/// What a worker reads from the configuration, resolved once.
pub struct Settings {
    pub limits: HeadLimits,
    pub keepalive: Duration,
    /// Deadline for a request's head and body to arrive, and for a stalled write.
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_requests: u64,
    pub forwarded_allow_ips: AllowIps,
}

/// The state a connection needs while serving, borrowed from the worker.
pub struct ServeContext<'a> {
    pub app: &'a App,
    pub settings: &'a Settings,
    pub slot: &'a Slot,
    pub access_log: Option<&'a mut AccessLog>,
    pub stopping: bool,
    pub served: &'a mut u64,
}

impl ServeContext<'_> {
    pub fn scoreboard_begin(&self) {
        self.slot.request_begin();
        self.slot.set_state(WorkerState::Busy);
    }

    pub fn scoreboard_end(&mut self) {
        self.slot.request_end();
        self.slot.set_state(WorkerState::Idle);
        *self.served += 1;
    }

    /// This request reaches `--max-requests`: close its connection afterwards.
    pub fn last_request(&self) -> bool {
        self.settings.max_requests > 0 && *self.served + 1 >= self.settings.max_requests
    }
}

/// Everything a worker receives from the master at fork time.
pub struct WorkerInit<'a> {
    pub cfg: &'a Config,
    pub listeners: &'a [Listener],
    pub slot: &'static Slot,
    pub to_master: UnixStream,
    /// Descriptors that belong to the master (other workers' pipes, its signal pipe).
    pub master_fds: Vec<RawFd>,
    pub master_signals: Vec<signal_hook::SigId>,
}

/// The worker process's main; never returns.
pub fn run(init: WorkerInit<'_>) -> ! {
    let code = match boot_and_serve(init) {
        Ok(()) => 0,
        Err(code) => code,
    };
    std::process::exit(code);
}

fn boot_and_serve(mut init: WorkerInit<'_>) -> Result<(), i32> {
    for id in init.master_signals.drain(..) {
        signal_hook::low_level::unregister(id);
    }
    for fd in &init.master_fds {
        // SAFETY: these descriptors are the master's and unused in the worker.
        unsafe { libc::close(*fd) };
    }
    let cfg = init.cfg;
    use signal_hook::consts::*;
    let signals = SignalPipe::install(&[SIGTERM, SIGINT, SIGQUIT, SIGUSR1]).map_err(|e| {
        boot_failure(
            &mut init.to_master,
            &format!("cannot install signal handlers: {e}"),
            exit::BOOT_ERROR,
        )
    })?;
    // The master handles HUP/TTIN/...; a worker ignores them rather than dying.
    for sig in [SIGHUP, SIGTTIN, SIGTTOU, SIGUSR2, SIGWINCH] {
        // SAFETY: setting a standard disposition.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    for (k, v) in &cfg.env {
        std::env::set_var(k, v);
    }
    raise_fd_limit();
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    crate::python::initialize()
        .map_err(|e| boot_failure(&mut init.to_master, &e.to_string(), exit::BOOT_ERROR))?;
    let workers = cfg.worker_count().unwrap_or(1);
    let app = Python::with_gil(|py| {
        crate::python::configure_sys(py, &cwd, &cfg.pythonpath_dirs())?;
        App::load(py, &cfg.app, cfg.threads > 1, workers > 1)
    });
    let app = match app {
        Ok(app) => app,
        Err(e) => {
            let text = Python::with_gil(|py| crate::python::format_exception(py, &e));
            return Err(boot_failure(
                &mut init.to_master,
                &format!("Exception in worker process\n{text}"),
                exit::APP_LOAD_ERROR,
            ));
        }
    };
    let access_log = match &cfg.access_logfile {
        Some(path) => Some(
            AccessLog::open(path, &cfg.access_log_format)
                .map_err(|e| boot_failure(&mut init.to_master, &e.to_string(), exit::BOOT_ERROR))?,
        ),
        None => None,
    };
    let settings = Settings {
        limits: cfg.head_limits(),
        keepalive: cfg.keepalive(),
        request_timeout: Duration::from_secs(if cfg.timeout == 0 { 30 } else { cfg.timeout }),
        max_connections: cfg.worker_connections as usize,
        max_requests: jittered(cfg.max_requests, cfg.max_requests_jitter),
        forwarded_allow_ips: cfg.forwarded_allow_ips.clone(),
    };
    let mut worker = EventLoop::new(
        init.listeners,
        signals,
        app,
        settings,
        access_log,
        init.slot,
        cfg.graceful_timeout(),
    )
    .map_err(|e| {
        boot_failure(
            &mut init.to_master,
            &format!("cannot start event loop: {e}"),
            exit::BOOT_ERROR,
        )
    })?;
    tracing::info!("Booting worker with pid: {}", std::process::id());
    init.slot.set_state(WorkerState::Idle);
    init.slot.heartbeat();
    if init.to_master.write_all(b"R\n").is_err() {
        return Err(exit::BOOT_ERROR);
    }
    Python::with_gil(|py| worker.run(py));
    Ok(())
}

/// Tells the master why boot failed (the text is its to log) and picks the exit code.
fn boot_failure(to_master: &mut UnixStream, text: &str, code: i32) -> i32 {
    let mut msg = Vec::with_capacity(text.len() + 2);
    msg.push(b'E');
    msg.extend_from_slice(text.as_bytes());
    if to_master.write_all(&msg).is_err() {
        tracing::error!("{text}");
    }
    code
}

fn jittered(max_requests: u64, jitter: u64) -> u64 {
    if max_requests == 0 || jitter == 0 {
        return max_requests;
    }
    let seed = std::process::id() as u64 ^ crate::scoreboard::monotonic_ms();
    max_requests + seed % (jitter + 1)
}

/// Lets a worker hold `--worker-connections` sockets.
fn raise_fd_limit() {
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
/// Most connections accepted per listener wake-up.
const ACCEPT_BATCH: usize = 64;
const LISTENER_BASE: usize = usize::MAX - 1024;

struct EventLoop<'a> {
    poll: Poll,
    listeners: &'a [Listener],
    locals: Vec<Rc<Local>>,
    signals: SignalPipe,
    app: App,
    settings: Settings,
    access_log: Option<AccessLog>,
    slot: &'static Slot,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    accepting: bool,
    stop_by: Option<Instant>,
    graceful_timeout: Duration,
    served: u64,
}

impl<'a> EventLoop<'a> {
    fn new(
        listeners: &'a [Listener],
        signals: SignalPipe,
        app: App,
        settings: Settings,
        access_log: Option<AccessLog>,
        slot: &'static Slot,
        graceful_timeout: Duration,
    ) -> std::io::Result<EventLoop<'a>> {
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&signals.fd()),
            SIGNAL_TOKEN,
            Interest::READABLE,
        )?;
        for (i, l) in listeners.iter().enumerate() {
            register_exclusive(&poll, l.socket.as_raw_fd(), LISTENER_BASE + i)?;
        }
        let locals = listeners.iter().map(|l| Rc::new(l.local.clone())).collect();
        Ok(EventLoop {
            poll,
            listeners,
            locals,
            signals,
            app,
            settings,
            access_log,
            slot,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            accepting: true,
            stop_by: None,
            graceful_timeout,
            served: 0,
        })
    }

    fn run(&mut self, py: Python<'_>) {
        let mut events = Events::with_capacity(256);
        let mut next_sweep = Instant::now() + Duration::from_secs(1);
        loop {
            let timeout = next_sweep.saturating_duration_since(Instant::now());
            let poll = &mut self.poll;
            let result = py.allow_threads(|| poll.poll(&mut events, Some(timeout)));
            if let Err(e) = result {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("epoll failed: {e}");
                    return;
                }
            }
            self.slot.heartbeat();
            for event in events.iter() {
                match event.token() {
                    SIGNAL_TOKEN => self.handle_signals(),
                    Token(t) if t >= LISTENER_BASE => self.accept(py, t - LISTENER_BASE),
                    Token(t) => self.drive(py, t),
                }
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.close_expired(now);
                next_sweep = now + Duration::from_secs(1);
            }
            if let Some(deadline) = self.stop_by {
                self.close_idle();
                if self.open == 0 || Instant::now() >= deadline {
                    return;
                }
            }
        }
    }

    fn handle_signals(&mut self) {
        use signal_hook::consts::*;
        for sig in self.signals.take() {
            match sig {
                SIGINT | SIGQUIT => std::process::exit(0),
                SIGUSR1 => {
                    if let Some(Err(e)) = self.access_log.as_mut().map(AccessLog::reopen) {
                        tracing::error!("{e}");
                    }
                }
                SIGTERM if self.stop_by.is_none() => {
                    tracing::info!("Worker exiting (pid: {})", std::process::id());
                    self.begin_stop(Instant::now() + self.graceful_timeout);
                }
                _ => {}
            }
        }
    }

    /// Stop accepting; finish what is in flight; close idle keep-alive connections.
    fn begin_stop(&mut self, deadline: Instant) {
        self.accepting = false;
        self.stop_by = Some(deadline);
        self.slot.set_state(WorkerState::Stopping);
        for l in self.listeners {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&l.socket.as_raw_fd()));
        }
    }

    fn accept(&mut self, py: Python<'_>, index: usize) {
        if !self.accepting {
            return;
        }
        let listener = &self.listeners[index];
        // Bounded, so one busy listener cannot starve the rest of the loop; the
        // listener is level-triggered and wakes us again for what is left.
        for _ in 0..ACCEPT_BATCH {
            if !self.accepting {
                return;
            }
            if self.open >= self.settings.max_connections && !self.evict_idle() {
                // Leave the rest in the kernel's backlog until a connection frees up.
                return;
            }
            let (sock, addr) = match listener.socket.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("accept failed: {e}");
                    return;
                }
            };
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let peer = match addr.as_socket() {
                Some(sa) => {
                    let _ = sock.set_nodelay(true);
                    Peer {
                        addr: sa.ip().to_canonical().to_string(),
                        port: sa.port().to_string(),
                        trusted: self.settings.forwarded_allow_ips.allows(sa.ip()),
                    }
                }
                None => Peer {
                    addr: String::new(),
                    port: String::new(),
                    trusted: true,
                },
            };
            let conn = Conn::new(
                sock,
                peer,
                Rc::clone(&self.locals[index]),
                self.settings.request_timeout,
            );
            let key = match self.free.pop() {
                Some(k) => k,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut SourceFd(&conn.fd()), Token(key), interest)
                .is_err()
            {
                self.free.push(key);
                continue;
            }
            self.conns[key] = Some(conn);
            self.open += 1;
            self.drive(py, key);
        }
    }

    /// `--max-requests` reached: drain and exit so the master starts a fresh worker.
    fn check_max_requests(&mut self) {
        if self.settings.max_requests > 0
            && self.served >= self.settings.max_requests
            && self.accepting
        {
            tracing::info!("Autorestarting worker after current request.");
            self.begin_stop(Instant::now() + self.graceful_timeout);
        }
    }

    fn drive(&mut self, py: Python<'_>, key: usize) {
        let Some(conn) = self.conns.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        let mut ctx = ServeContext {
            app: &self.app,
            settings: &self.settings,
            slot: self.slot,
            access_log: self.access_log.as_mut(),
            stopping: self.stop_by.is_some(),
            served: &mut self.served,
        };
        if conn.drive(py, &mut ctx) == Drive::Close {
            self.close(key);
        }
        self.check_max_requests();
    }

    fn close(&mut self, key: usize) {
        if let Some(conn) = self.conns[key].take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&conn.fd()));
            if conn.in_request {
                // A request abandoned mid-way still leaves the slot idle.
                self.slot.request_started_ms.store(0, Ordering::Relaxed);
                self.slot.set_state(if self.stop_by.is_some() {
                    WorkerState::Stopping
                } else {
                    WorkerState::Idle
                });
            }
            self.free.push(key);
            self.open -= 1;
        }
    }

    /// At the connection limit, an idle connection makes room for a new client (limits
    /// are on requests in flight, not on idle sockets): a keep-alive one first, else the
    /// oldest silent fresh one.
    fn evict_idle(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(k, c)| {
                c.as_ref()
                    .filter(|c| c.is_idle())
                    .map(|c| (c.served() == 0, c.deadline, k))
            })
            .min();
        match oldest {
            Some((_, _, key)) => {
                self.close(key);
                true
            }
            None => false,
        }
    }

    fn close_expired(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(k, c)| c.as_ref().filter(|c| c.deadline <= now).map(|_| k))
            .collect();
        for key in expired {
            self.close(key);
        }
    }

    /// Draining: close keep-alive connections between requests.
    fn close_idle(&mut self) {
        let idle: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(k, c)| {
                c.as_ref()
                    .filter(|c| c.is_idle() && c.served() > 0)
                    .map(|_| k)
            })
            .collect();
        for key in idle {
            self.close(key);
        }
    }
}

/// Registers a listener with EPOLLEXCLUSIVE so that one incoming connection wakes one
/// worker, not all of them (mio has no flag for it; the token layout is mio's).
fn register_exclusive(poll: &Poll, fd: RawFd, token: usize) -> std::io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
        u64: token as u64,
    };
    // SAFETY: both descriptors are open; `event` is a valid epoll_event.
    let rc = unsafe { libc::epoll_ctl(poll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
