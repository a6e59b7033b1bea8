//! A worker process: set-up after fork (`boot_and_serve`), the state every connection
//! shares (`Shared`), and the exit codes the master understands. The event loop lives
//! in `event_loop`, the `--threads N` pool in `pool`.

mod abort;
mod asyncio_driver;
mod body;
mod conn;

/// The connection state machine without a worker around it, for the fuzz targets.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::conn::harness::{drive_stream, drive_uwsgi_stream, Outcome};
}
mod bridge;
mod event_loop;
mod exchange;
mod listening;
mod loggers;
mod pool;
mod probe;
pub mod stack;
pub use self::abort::thread_stacks;
pub use self::loggers::set_up as set_up_loggers;
mod watch;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use self::event_loop::EventLoop;
use crate::asgi::{AsgiApp, LifespanMode, Startup};
use crate::config::WorkerKind;
use crate::config::{AllowIps, Config};
use crate::http::head::HeadLimits;
use crate::log::{AccessFormat, AccessLog, AccessRecord};
use crate::net::Listener;
use crate::scoreboard::{Peers, Slot, WorkerState};
use crate::signals::SignalPipe;
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
    /// How often an idle loop wakes up: to heartbeat (the master takes a worker
    /// silent for `--timeout` for hung, so well within it) and close expired
    /// connections.
    pub sweep_every: Duration,
    pub max_connections: usize,
    pub max_requests: u64,
    pub forwarded_allow_ips: AllowIps,
    /// Names with `_` a trusted peer may set (`--forwarder-headers`).
    pub forwarder_headers: crate::http::forwarder::ForwarderHeaders,
    pub proxy_mode: crate::http::proxy::ProxyMode,
    pub proxy_allow_from: AllowIps,
    /// `--protocol uwsgi`: every connection speaks uwsgi, and only these peers may
    /// (`--uwsgi-allow-from`). None: HTTP.
    pub uwsgi: Option<AllowIps>,
    /// `--reload`: watch the application's source files (and the extra ones) this way.
    pub reload: Option<crate::config::reloader::ReloaderArgs>,
    /// `--error-logfile`, reopened on USR1.
    pub error_logfile: String,
    /// Header/value pairs that mark a request from a trusted proxy as HTTPS.
    pub secure_scheme_headers: Vec<(String, String)>,
    /// Every connection speaks TLS from this configuration (`--certfile`), loaded by
    /// the master.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--http2-cleartext`: a plain connection opening with the HTTP/2 preface speaks it.
    pub http2_cleartext: bool,
    pub http2: crate::http::h2::H2Settings,
    /// Autoscaling is on: an ASGI worker counts the time its loop waits in its
    /// selector (`Slot::loop_idle_us`).
    pub measure_loop_idle: bool,
    /// A Uvicorn worker class (`Config::uvicorn_class`): a stop is logged as Uvicorn
    /// logs it (`Shutting down`), not `Worker exiting (pid: N)`.
    pub uvicorn_records: bool,
}

/// The application side, called with the GIL: the application and the server hooks
/// around each request. The connection core reaches it only through `Exec`.
pub struct Service {
    pub app: Application,
    pub hooks: Option<crate::hooks::Hooks>,
}

/// What kind of application a worker serves (`-k`).
pub enum Application {
    Wsgi(App),
    Asgi(AsgiApp),
}

/// What a `--preload` master imported, for its workers: a WSGI application, or the
/// callable an ASGI worker wraps (its event loop is made in each worker, after fork).
pub enum Preloaded {
    Wsgi(Box<App>),
    Asgi(Py<PyAny>),
}

/// What every connection of a worker shares, also across `--threads` pool threads.
pub struct Shared {
    pub settings: Settings,
    /// The requests inside the application, for a time-out's answer and log.
    pub lanes: abort::Lanes,
    pub slot: &'static Slot,
    pub peers: Peers,
    /// `--access-logfile`; whether there is one is fixed at boot, so a worker without
    /// one takes no lock per request.
    access_log: Option<Mutex<AccessLog>>,
    /// The access log's format shows response headers: responses keep their heads.
    pub keep_response_heads: bool,
    served: AtomicU64,
    stopping: AtomicBool,
}

impl Shared {
    pub fn scoreboard_begin(&self) {
        if self.slot.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            // A draining worker stays `Stopping`: its peers must not count it as one
            // that accepts (`Peers`), and `status` shows it leaving.
            if !self.stopping() {
                self.slot.set_state(WorkerState::Busy);
            }
        }
    }

    pub fn scoreboard_end(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
        if self.slot.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.slot.request_end();
            self.slot.set_state(if self.stopping() {
                WorkerState::Stopping
            } else {
                WorkerState::Idle
            });
        } else {
            self.slot.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A response sent (or abandoned) with this status: `/metrics`'s tally in the
    /// scoreboard and statsd's lines.
    pub fn count_response(&self, status: u16, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.slot.tally.record(status, us);
        crate::statsd::request(status, elapsed);
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// This request reaches `--max-requests`: close its connection afterwards.
    pub fn last_request(&self) -> bool {
        let max = self.settings.max_requests;
        max > 0 && self.served() + u64::from(self.slot.in_flight.load(Ordering::Relaxed)) >= max
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// This connection ends after its current response: the worker is stopping, the
    /// master is in its shutdown delay, or rebalancing asks for some connections
    /// (`Slot::take_close`: a yes is counted, so ask once per connection).
    pub fn closing(&self) -> bool {
        self.stopping() || self.slot.take_close()
    }

    /// Some connections are to end after their response (nothing taken).
    pub fn close_pending(&self) -> bool {
        self.stopping() || self.slot.close_pending()
    }

    /// The whole server stops gracefully: a stopping worker serves the listeners'
    /// backlog before it exits (`Slot::closing` is `STOP_ALL`).
    pub fn server_stopping(&self) -> bool {
        self.slot.closing.load(Ordering::Relaxed) == crate::scoreboard::STOP_ALL
    }

    #[inline]
    pub fn log_access(&self, record: &AccessRecord<'_>) {
        if let Some(log) = &self.access_log {
            write_access(log, record);
        }
    }

    /// USR1: the error log (fd 2) and the access log, after a rotation.
    pub fn reopen_logs(&self) {
        if let Err(e) = crate::log::reopen_error_log(&self.settings.error_logfile) {
            tracing::error!("{e}");
        }
        self.reopen_access_log();
    }

    fn reopen_access_log(&self) {
        if let Some(log) = &self.access_log {
            if let Err(e) = log.lock().unwrap_or_else(|e| e.into_inner()).reopen() {
                tracing::error!("{e}");
            }
        }
    }
}

/// One access log line: out of the request path's line, which only asks whether
/// there is a log.
#[inline(never)]
fn write_access(log: &Mutex<AccessLog>, record: &AccessRecord<'_>) {
    log.lock().unwrap_or_else(|e| e.into_inner()).write(record);
}

/// Everything a worker receives from the master at fork time.
pub struct WorkerInit<'a> {
    pub cfg: &'a Config,
    pub listeners: &'a [Listener],
    pub slot: &'static Slot,
    pub peers: Peers,
    pub to_master: UnixStream,
    pub master_signals: Vec<signal_hook::SigId>,
    /// The master's signal mask before it blocked every signal around fork; restored
    /// once the worker's own handlers are in place (taken then).
    pub signals: Option<crate::python::BlockedSignals>,
    /// Who to become before importing the application.
    pub identity: &'a crate::process::Identity,
    /// How many workers the master had spawned before this one (Gunicorn's `age`).
    pub age: u64,
    /// The master's pid (this process's parent).
    pub master_pid: nix::unistd::Pid,
    /// The application the master imported (`--preload`).
    pub preloaded: Option<&'a Preloaded>,
}

/// `--check-config` in a child: start Python, import the app, report. Exit status.
pub fn check_app(cfg: &Config) -> i32 {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    Python::with_gil(|py| {
        let loaded =
            crate::python::configure_sys(py, &cwd, &cfg.pythonpath_dirs()).and_then(|()| match cfg
                .worker_kind()
            {
                WorkerKind::Wsgi => App::load(py, &cfg.app, cfg.threads > 1, true).map(drop),
                WorkerKind::Asgi => crate::loader::import_callable(py, &cfg.app).map(drop),
            });
        match loaded {
            Ok(_) => 0,
            Err(e) => {
                eprintln!(
                    "rgun: {} cannot be loaded:\n{}",
                    cfg.app,
                    crate::python::format_exception(py, &e)
                );
                exit::APP_LOAD_ERROR
            }
        }
    })
}

/// The worker process's main; never returns.
pub fn run(init: WorkerInit<'_>) -> ! {
    let code = match boot_and_serve(init) {
        Ok(()) => 0,
        Err(code) => code,
    };
    crate::statsd::flush_now();
    std::process::exit(code);
}

/// After fork: take the process over from the master, load the application, open
/// what the loop needs, tell the master we are ready, serve until stopped.
fn boot_and_serve(mut init: WorkerInit<'_>) -> Result<(), i32> {
    let cfg = init.cfg;
    let signals = take_over_process(&mut init)?;
    let service = Arc::new(load_service(&mut init)?);
    let access_log = open_access_log(cfg)
        .map_err(|e| boot_failure(&mut init.to_master, &e.to_string(), exit::BOOT_ERROR))?;
    let shared = Arc::new(Shared {
        settings: Settings::from_config(cfg),
        lanes: abort::Lanes::new(cfg.threads as usize, init.slot),
        slot: init.slot,
        peers: init.peers,
        keep_response_heads: access_log
            .as_ref()
            .is_some_and(AccessLog::wants_response_headers),
        access_log: access_log.map(Mutex::new),
        served: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
    });
    let mut worker = start_loop(&mut init, signals, &shared, &service)?;
    init.slot.set_state(WorkerState::Idle);
    init.slot.heartbeat();
    if init.to_master.write_all(b"R\n").is_err() {
        return Err(exit::BOOT_ERROR);
    }
    serve(&mut worker, &service, cfg);
    if let Some(h) = &service.hooks {
        Python::with_gil(|py| h.call(py, "worker_exit", Vec::new()));
    }
    Ok(())
}

/// The process-wide part of the set-up: the master's signal handlers go and ours come,
/// the statsd and syslog senders, dying with the master, the environment (`-e`), the
/// descriptor limit and the user to run as. Returns this worker's signal pipe.
fn take_over_process(init: &mut WorkerInit<'_>) -> Result<SignalPipe, i32> {
    for id in init.master_signals.drain(..) {
        signal_hook::low_level::unregister(id);
    }
    let cfg = init.cfg;
    crate::log::switch_after_fork(cfg);
    // This worker's own statsd and syslog senders (the master's, inherited, close).
    crate::statsd::start(&cfg.observability);
    crate::syslog::start(&cfg.observability, cfg.proc_name());
    // Die with the master (SIGTERM: finish what is in flight); if it is already gone,
    // stop now rather than serve as an orphan.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    if nix::unistd::getppid() != init.master_pid {
        return Err(exit::BOOT_ERROR);
    }
    crate::process::set_title(&format!("rgun: worker [{}]", cfg.proc_name()));
    // Before anything of the application runs, as in Gunicorn.
    tracing::info!("Booting worker with pid: {}", std::process::id());
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
    // Signals were blocked since before fork: a TERM sent to a worker that was just
    // forked (`scale +1` then `scale -1`) is delivered now, to the worker's handler,
    // instead of to the master's inherited one, which would have lost it.
    if let Some(blocked) = init.signals.take() {
        blocked.release();
    }
    Python::with_gil(|py| crate::python::set_environ(py, &cfg.env)).map_err(|e| {
        boot_failure(
            &mut init.to_master,
            &format!("cannot set the environment: {e}"),
            exit::BOOT_ERROR,
        )
    })?;
    raise_fd_limit();
    if let Err(e) = init.identity.drop_privileges() {
        return Err(boot_failure(
            &mut init.to_master,
            &format!("cannot switch user/group: {e}"),
            exit::BOOT_ERROR,
        ));
    }
    Ok(signals)
}

/// The application and the server hooks (`post_fork`, `post_worker_init` run here),
/// then an ASGI application's lifespan startup and the `--reload-probe` request.
fn load_service(init: &mut WorkerInit<'_>) -> Result<Service, i32> {
    let cfg = init.cfg;
    let loaded = Python::with_gil(|py| {
        let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
        crate::python::configure_sys(py, &cwd, &cfg.pythonpath_dirs())?;
        loggers::set_up(py, cfg)?;
        let hooks = crate::hooks::Hooks::load(py, cfg, init.age)?;
        if let Some(h) = &hooks {
            h.call(py, "post_fork", Vec::new());
        }
        let app = load_app(py, cfg, init.preloaded)?;
        if let Some(h) = &hooks {
            h.call(py, "post_worker_init", Vec::new());
        }
        // Everything imported so far lives as long as the worker: keep it out of the
        // cyclic collector's way, so full collections stay short (and pages shared
        // with a --preload master are not dirtied by GC bookkeeping).
        py.import("gc")?.call_method0("freeze")?;
        Ok::<_, PyErr>(Service { app, hooks })
    });
    let mut service = match loaded {
        Ok(service) => service,
        Err(e) => {
            let text = Python::with_gil(|py| crate::python::format_exception(py, &e));
            return Err(boot_failure(
                &mut init.to_master,
                &format!("Exception in worker process\n{text}"),
                exit::APP_LOAD_ERROR,
            ));
        }
    };
    if let Application::Asgi(asgi) = &mut service.app {
        if cfg.uvicorn_class() {
            tracing::info!("Started server process [{}]", std::process::id());
        }
        lifespan_startup(asgi, LifespanMode::parse(&cfg.asgi_lifespan))
            .map_err(|text| boot_failure(&mut init.to_master, &text, exit::APP_LOAD_ERROR))?;
    }
    if let Some(p) = cfg.probe.probe() {
        let local = init.listeners.first().map(|l| l.local.clone());
        let target = match &service.app {
            Application::Wsgi(wsgi) => probe::Target::Wsgi(wsgi),
            Application::Asgi(asgi) => probe::Target::Asgi(asgi),
        };
        let local = local.unwrap_or_default();
        Python::with_gil(|py| probe::check(py, target, &p, &local, &cfg.head_limits()))
            .map_err(|text| boot_failure(&mut init.to_master, &text, exit::APP_LOAD_ERROR))?;
    }
    Ok(service)
}

/// The application this worker serves: the master's `--preload`ed one, or imported now.
fn load_app(py: Python<'_>, cfg: &Config, preloaded: Option<&Preloaded>) -> PyResult<Application> {
    let workers = cfg.worker_count().unwrap_or(1);
    Ok(match (cfg.worker_kind(), preloaded) {
        (WorkerKind::Wsgi, Some(Preloaded::Wsgi(app))) => Application::Wsgi(app.clone_ref(py)),
        (WorkerKind::Wsgi, _) => {
            Application::Wsgi(App::load(py, &cfg.app, cfg.threads > 1, workers > 1)?)
        }
        (WorkerKind::Asgi, preloaded) => Application::Asgi(AsgiApp::new(
            py,
            match preloaded {
                Some(Preloaded::Asgi(callable)) => callable.bind(py).clone(),
                _ => crate::loader::import_callable(py, &cfg.app)?,
            },
            &cfg.root_path,
            &cfg.asgi_loop,
            cfg.websocket_max_message_size,
            Duration::from_secs(cfg.asgi_disconnect_grace_period),
        )?),
    })
}

/// `--access-logfile`; with `--log-syslog` the access log goes there even without a
/// file, as in Gunicorn.
fn open_access_log(cfg: &Config) -> std::io::Result<Option<AccessLog>> {
    let syslog_access = cfg.observability.access_to_syslog();
    match cfg
        .access_logfile
        .as_deref()
        .or(syslog_access.then_some(""))
    {
        Some(path) => AccessLog::open(
            path,
            if cfg.uvicorn_access_log() {
                AccessFormat::Uvicorn
            } else {
                AccessFormat::Gunicorn(&cfg.access_log_format)
            },
            cfg.observability.access_log_json,
            cfg.observability.access_log_wrap.clone(),
        )
        .map(Some),
        None => Ok(None),
    }
}

impl Settings {
    fn from_config(cfg: &Config) -> Settings {
        Settings {
            limits: cfg.head_limits(),
            keepalive: cfg.keepalive(),
            request_timeout: Duration::from_secs(if cfg.timeout == 0 { 30 } else { cfg.timeout }),
            sweep_every: sweep_interval(cfg.timeout),
            max_connections: cfg.worker_connections as usize,
            max_requests: jittered(cfg.max_requests, cfg.max_requests_jitter),
            forwarded_allow_ips: cfg.forwarded_allow_ips.clone(),
            forwarder_headers: cfg.forwarder_headers.clone(),
            proxy_mode: cfg.proxy_mode(),
            proxy_allow_from: cfg.proxy_allow_from.clone(),
            uwsgi: cfg.protocol.uwsgi_peers(),
            reload: cfg.reload.then(|| cfg.reloader.clone()),
            error_logfile: cfg.error_logfile.clone(),
            secure_scheme_headers: cfg.secure_scheme_headers(),
            tls: cfg.tls_server.clone(),
            http2_cleartext: cfg.http2.http2_cleartext,
            http2: cfg.http2.settings(),
            measure_loop_idle: cfg.scaling_plan().is_ok_and(|p| p.is_some()),
            uvicorn_records: cfg.uvicorn_class(),
        }
    }
}

/// The time-out watcher, the event loop on the listeners and `rgunctl stack`'s
/// answerer.
fn start_loop<'a>(
    init: &mut WorkerInit<'a>,
    signals: SignalPipe,
    shared: &Arc<Shared>,
    service: &Arc<Service>,
) -> Result<EventLoop<'a>, i32> {
    let cfg = init.cfg;
    Python::with_gil(|py| abort::watch(py, Arc::clone(shared), Arc::clone(service))).map_err(
        |e| {
            let text = Python::with_gil(|py| crate::python::format_exception(py, &e));
            boot_failure(
                &mut init.to_master,
                &format!("cannot watch for time-outs: {text}"),
                exit::BOOT_ERROR,
            )
        },
    )?;
    let worker = EventLoop::new(
        init.listeners,
        signals,
        Arc::clone(shared),
        Arc::clone(service),
        // The ASGI worker's concurrency is its event loop: no pool.
        match cfg.worker_kind() {
            WorkerKind::Wsgi => cfg.threads as usize,
            WorkerKind::Asgi => 1,
        },
        cfg.graceful_timeout(),
    )
    .map_err(|e| {
        boot_failure(
            &mut init.to_master,
            &format!("cannot start event loop: {e}"),
            exit::BOOT_ERROR,
        )
    })?;
    let answers = init
        .to_master
        .try_clone()
        .and_then(|pipe| stack::serve(Arc::clone(shared), pipe));
    if let Err(e) = answers {
        // The worker serves without: `rgunctl stack` then names the error.
        tracing::warn!("rgunctl stack will not reach this worker: {e}");
    }
    Ok(worker)
}

/// Serves until the worker stops: the blocking loop for WSGI; for ASGI, asyncio's
/// loop driving ours, then the lifespan shutdown within the graceful time left.
fn serve(worker: &mut EventLoop<'_>, service: &Service, cfg: &Config) {
    let Application::Asgi(asgi) = &service.app else {
        worker.run();
        return;
    };
    Python::with_gil(|py| {
        if let Err(e) = asyncio_driver::serve(py, worker, service, asgi) {
            tracing::error!(
                "the event loop failed\n{}",
                crate::python::format_exception(py, &e)
            );
        }
        let limit = worker
            .stop_deadline()
            .map(|t| t.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or(cfg.graceful_timeout());
        if asgi.has_lifespan() {
            tracing::info!("Waiting for application shutdown.");
        }
        match asgi.shutdown(py, limit) {
            Ok(None) if asgi.has_lifespan() => tracing::info!("Application shutdown complete."),
            Ok(None) => {}
            Ok(Some(message)) => tracing::error!("Application shutdown failed. {message}"),
            Err(e) => tracing::error!(
                "Application shutdown failed.\n{}",
                crate::python::format_exception(py, &e)
            ),
        }
    });
    if cfg.uvicorn_class() {
        tracing::info!("Finished server process [{}]", std::process::id());
    }
}

/// Runs the ASGI lifespan startup; `Err` is the text the master logs before it stops.
fn lifespan_startup(asgi: &mut AsgiApp, mode: LifespanMode) -> Result<(), String> {
    if mode == LifespanMode::Off {
        return Ok(());
    }
    tracing::info!("Waiting for application startup.");
    Python::with_gil(|py| match asgi.startup(py, mode) {
        Ok(Startup::Ready) => {
            tracing::info!("Application startup complete.");
            Ok(())
        }
        Ok(Startup::Unsupported) => {
            tracing::info!("ASGI 'lifespan' protocol appears unsupported.");
            Ok(())
        }
        Ok(Startup::Failed(message)) => {
            Err(format!("Application startup failed. Exiting.\n{message}"))
        }
        Err(e) => Err(format!(
            "Application startup failed. Exiting.\n{}",
            crate::python::format_exception(py, &e)
        )),
    })
}

/// Logs why boot failed and tells the master (a failed reload answers with the text);
/// the exit code. The records are the worker's own, as in Gunicorn.
fn boot_failure(to_master: &mut UnixStream, text: &str, code: i32) -> i32 {
    tracing::error!("{text}");
    let mut msg = Vec::with_capacity(text.len() + 2);
    msg.push(b'E');
    msg.extend_from_slice(text.as_bytes());
    // Without the master (gone already) there is no one to answer.
    let _ = to_master.write_all(&msg);
    tracing::info!("Worker exiting (pid: {})", std::process::id());
    code
}

fn jittered(max_requests: u64, jitter: u64) -> u64 {
    if max_requests == 0 || jitter == 0 {
        return max_requests;
    }
    let seed = u64::from(std::process::id()) ^ crate::scoreboard::monotonic_ms();
    // Both are at most MAX_REQUESTS_LIMIT (the command line checks), so neither the
    // `+ 1` nor the sum can overflow; saturate anyway rather than trust that here.
    max_requests.saturating_add(seed % jitter.saturating_add(1))
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

/// A quarter of `--timeout`, between 100 ms and 1 s (1 s when time-outs are off).
fn sweep_interval(timeout_secs: u64) -> Duration {
    match timeout_secs {
        0 => Duration::from_secs(1),
        t => (Duration::from_secs(t) / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
    }
}
