//! A worker's set-up after fork (`run`, `boot_and_serve`): it takes the process over
//! from the master's state (signals, identity, limits), imports the application (or
//! takes the preloaded one), opens its logs, runs an ASGI lifespan's start-up, then
//! serves until told to stop. A boot that fails tells the master why and exits with a
//! code it understands (`exit`). Also `--check-config`'s import in a child.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use super::event_loop::EventLoop;
use super::{abort, asyncio_driver, loggers, probe, stack};
use super::{exit, Application, Preloaded, Service, Settings, Shared};
use crate::asgi::{AsgiApp, LifespanMode, Startup};
use crate::config::Config;
use crate::config::WorkerKind;
use crate::log::{AccessFormat, AccessLog};
use crate::net::Listener;
use crate::scoreboard::{Peers, Slot, WorkerState};
use crate::signals::SignalPipe;
use crate::wsgi::App;

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

/// The process-wide part of the set-up: the statsd sender, leaving the master
/// (`leave_master`), our signal handlers (`own_signals`), the environment (`-e`), the
/// descriptor limit and the user to run as. Returns this worker's signal pipe.
fn take_over_process(init: &mut WorkerInit<'_>) -> Result<SignalPipe, i32> {
    let cfg = init.cfg;
    if !leave_master(cfg, &mut init.master_signals, init.master_pid) {
        return Err(exit::BOOT_ERROR);
    }
    // This worker's own statsd sender (the master's, inherited, closes).
    crate::statsd::start(&cfg.observability);
    crate::process::set_title(&format!("rgun: worker [{}]", cfg.proc_name()));
    // Before anything of the application runs, as in Gunicorn.
    tracing::info!("Booting worker with pid: {}", std::process::id());
    use signal_hook::consts::*;
    // The master handles HUP/TTIN/...; a worker ignores them rather than dying.
    let handled = [SIGTERM, SIGINT, SIGQUIT, SIGUSR1];
    let ignored = [SIGHUP, SIGTTIN, SIGTTOU, SIGUSR2, SIGWINCH];
    let signals = own_signals(&handled, &ignored, init.signals.take()).map_err(|e| {
        boot_failure(
            &mut init.to_master,
            &format!("cannot install signal handlers: {e}"),
            exit::BOOT_ERROR,
        )
    })?;
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

/// What a child of the master (a worker, a dirty worker) does first: the master's signal
/// handlers go, its log and syslog sender are this process's own, and it dies with the
/// master (SIGTERM: finish what is in flight). False: the master is gone already, and
/// the child stops rather than serve as an orphan.
pub(crate) fn leave_master(
    cfg: &Config,
    master_signals: &mut Vec<signal_hook::SigId>,
    master_pid: nix::unistd::Pid,
) -> bool {
    for id in master_signals.drain(..) {
        signal_hook::low_level::unregister(id);
    }
    crate::log::switch_after_fork(cfg);
    crate::syslog::start(&cfg.observability, cfg.proc_name());
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    nix::unistd::getppid() == master_pid
}

/// A child's own signal handling: a pipe for `handled`, `ignored` ignored, then the
/// signals blocked since before fork let through. A TERM sent to a child that was just
/// forked (`scale +1` then `scale -1`) is delivered now, to the child's handler,
/// instead of to the master's inherited one, which would have lost it.
pub(crate) fn own_signals(
    handled: &[libc::c_int],
    ignored: &[libc::c_int],
    blocked: Option<crate::python::BlockedSignals>,
) -> std::io::Result<SignalPipe> {
    let signals = SignalPipe::install(handled)?;
    for &sig in ignored {
        // SAFETY: setting a standard disposition.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    if let Some(blocked) = blocked {
        blocked.release();
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

/// Lets a worker hold `--worker-connections` sockets.
fn raise_fd_limit() {
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}
