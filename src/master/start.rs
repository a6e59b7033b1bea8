//! Start-up: `run` opens everything the master owns (hooks, listeners, the scoreboard,
//! signals, the control and metrics sockets), imports a `--preload`ed application, builds
//! the `Arbiter` and hands it the loop; `check_config` is `--check-config`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Instant, SystemTime};

use anyhow::Context;
use mio::Poll;
use nix::sys::wait::{waitpid, WaitStatus};
use serde_json::json;

use super::listeners::{bind_all, open_control};
use super::metrics::server::MetricsServer;
use super::metrics::Ledger;
use super::notify::Notifier;
use super::{hooks, reexec, tls, upgrade, Arbiter, Phase, Totals, SIGNAL_TOKEN, UPGRADE_FROM_ENV};
use crate::config::Config;
use crate::control::ControlServer;
use crate::python::Forked;
use crate::scoreboard::Scoreboard;
use crate::signals::SignalPipe;
use crate::worker::{self, exit};

/// `--check-config`: the settings parsed; now import the application in a child
/// process (the master never imports it) and report. Returns the exit status.
pub fn check_config(cfg: &Config) -> i32 {
    if let Err(e) = cfg.worker_count().and_then(|_| cfg.scaling_plan()) {
        eprintln!("rgun: {e}");
        return 1;
    }
    if let Some(dir) = &cfg.chdir {
        if let Err(e) = std::env::set_current_dir(dir) {
            eprintln!("rgun: cannot chdir to {}: {e}", dir.display());
            return 1;
        }
    }
    if let Err(e) = tls::load(&mut cfg.clone()) {
        eprintln!("rgun: {e}");
        return 1;
    }
    // SAFETY: single-threaded; the child only imports the app and exits.
    match unsafe { crate::python::fork_interpreter(crate::python::Inherit::AllBut(&[])) } {
        Ok(Forked::Child(signals)) => {
            signals.release();
            std::process::exit(worker::check_app(cfg))
        }
        Ok(Forked::Parent(child)) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => {
                println!("rgun: configuration OK; {} imports", cfg.app);
                0
            }
            _ => 1,
        },
        Err(e) => {
            eprintln!("rgun: fork failed: {e}");
            1
        }
    }
}

/// `--preload`: imports the application in this process; `Err` is the traceback.
fn preload(cfg: &Config) -> Result<crate::worker::Preloaded, String> {
    use crate::worker::Preloaded;
    use pyo3::Python;
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let workers = cfg.worker_count().unwrap_or(1);
    let asgi = cfg.worker_kind() == crate::config::WorkerKind::Asgi;
    Python::with_gil(|py| {
        crate::python::configure_sys(py, &cwd, &cfg.pythonpath_dirs())
            .and_then(|()| {
                if asgi {
                    // The event loop is made in each worker, after fork.
                    crate::loader::import_callable(py, &cfg.app)
                        .map(|c| Preloaded::Asgi(c.unbind()))
                } else {
                    crate::wsgi::App::load(py, &cfg.app, cfg.threads > 1, workers > 1)
                        .map(|app| Preloaded::Wsgi(Box::new(app)))
                }
            })
            .map_err(|e| crate::python::format_exception(py, &e))
    })
}

/// `--preload`'s import: `Err` is the exit status of a master that cannot load the
/// application. A master re-executed in place by a reload imports with a stop able to
/// cut it short (`reexec::guarded_import`), and a failure fails the reload instead.
fn preload_app(
    cfg: &Config,
    reexecuted: bool,
    old_master: &mut Option<std::os::unix::net::UnixStream>,
) -> Result<(Option<crate::worker::Preloaded>, reexec::Then), i32> {
    use reexec::{Import, Then};
    if !cfg.preload {
        return Ok((None, Then::Boot));
    }
    let limit = super::reload::boot_timeout(cfg.timeout);
    let imported = if reexecuted {
        reexec::guarded_import(limit, || preload(cfg))
    } else {
        preload(cfg).map_or_else(Import::Failed, Import::Done)
    };
    let answer = match imported {
        Import::Done(app) => (Some(app), Then::Boot),
        Import::Stopped => (None, Then::Hold),
        Import::Failed(text) => {
            tracing::error!("Exception while preloading the application\n{text}");
            if !reexecuted {
                upgrade::report_failure(old_master, &text);
                tracing::error!("Shutting down: App failed to load.");
                return Err(exit::APP_LOAD_ERROR);
            }
            // The old image's workers serve on; the reload fails with the traceback.
            (None, Then::Fail(text))
        }
    };
    // With `--preload`, Gunicorn's first record comes after the import.
    log_starting(cfg);
    Ok(answer)
}

/// Runs the server until it stops; returns the process exit status.
pub fn run(mut cfg: Config) -> anyhow::Result<i32> {
    let (target, sized) = cfg.worker_count_explained().map_err(anyhow::Error::msg)?;
    let plan = cfg.scaling_plan().map_err(anyhow::Error::msg)?;
    let target = plan.as_ref().map_or(target, |plan| plan.start);
    let identity = prepare_process(&mut cfg)?;
    let hook_host = start_hook_host(&cfg, target);
    // A `--preload` reload re-executed this master in place: what the old image left.
    let handoff = reexec::take_handoff();
    // Gunicorn's first record precedes the binds' (`--preload`: it follows the import).
    if !cfg.preload {
        log_starting(&cfg);
    }
    let listeners = bind_all(&cfg)?;
    let mut old_master = upgrade::pipe_to_old_master();
    let deferred_takeover = std::env::var_os(UPGRADE_FROM_ENV).is_some();
    let pidfile = open_pidfile(&cfg, deferred_takeover)?;
    warn_ignored_threads(&cfg);
    let (preloaded, then) = match preload_app(&cfg, handoff.is_some(), &mut old_master) {
        Ok(imported) => imported,
        Err(code) => return Ok(code),
    };
    let sockets = MasterSockets::open(&mut cfg, &listeners, deferred_takeover, handoff.as_ref())?;
    start_reporting(&cfg, &listeners, &sockets);
    let scaling = plan.map(|p| log_scaling(&p, cfg.scaling.workers_idle));
    let mut arbiter = Arbiter {
        listeners,
        scoreboard: Scoreboard::new().context("cannot map the scoreboard")?,
        poll: sockets.poll,
        signals: sockets.signals,
        control: sockets.control,
        metrics: sockets.metrics,
        ledger: Ledger::default(),
        gauges_sent: Instant::now(),
        notifier: Notifier::from_env(),
        identity,
        pidfile,
        upgraded_to: None,
        upgrade_child: None,
        old_master,
        deferred_takeover,
        preloaded,
        hooks: hook_host,
        workers: BTreeMap::new(),
        dirty: None,
        deferred: VecDeque::new(),
        deferred_requests: VecDeque::new(),
        target: target as usize,
        generation: inherited_generation(),
        reload: None,
        reexec_pending: false,
        queued_reload: None,
        accept_watch: Default::default(),
        scale_waiters: Vec::new(),
        stack_waiters: Vec::new(),
        history: VecDeque::new(),
        totals: Totals::default(),
        phase: first_phase(handoff.is_some()),
        started: Instant::now(),
        started_at: SystemTime::now(),
        stop_deadline: None,
        shutdown_delay_until: None,
        failures: 0,
        boot_failing: false,
        memory_limit: log_sizing(&cfg, target, sized),
        last_rss_check: Instant::now(),
        next_spawn: Instant::now(),
        threads_warned: 1,
        scaling,
        exit_code: 0,
        halt_reason: None,
        cfg,
    };
    arbiter.start_dirty()?;
    if let Some(h) = handoff {
        arbiter.resume_after_reexec(h, &sockets.adopted_conns, then);
    }
    arbiter.call_hook("when_ready", json!({}));
    arbiter.run();
    Ok(arbiter.exit_code)
}

/// A master re-executed in place goes on with the reload it was running.
fn first_phase(reexecuted: bool) -> Phase {
    if reexecuted {
        Phase::Reloading
    } else {
        Phase::Starting
    }
}

/// `--pidfile`, written now unless a deferred takeover writes it once the old master
/// has let go.
fn open_pidfile(
    cfg: &Config,
    deferred_takeover: bool,
) -> anyhow::Result<Option<crate::process::PidFile>> {
    Ok(match &cfg.pidfile {
        Some(path) if !deferred_takeover => Some(crate::process::PidFile::create(path)?),
        _ => None,
    })
}

/// `--threads` means nothing to an ASGI worker: said once, at start.
fn warn_ignored_threads(cfg: &Config) {
    if cfg.worker_kind() == crate::config::WorkerKind::Asgi && cfg.threads > 1 {
        tracing::warn!("--threads is ignored by -k asgi: its concurrency is the event loop");
    }
}

/// The generation an upgraded master's workers continue from (1 for a fresh start).
fn inherited_generation() -> u32 {
    std::env::var(upgrade::GENERATION_ENV)
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1)
}

/// What applies to the whole process before anything is opened: the umask, the
/// user to become (resolved, applied by each worker), `--chdir`, the TLS files.
fn prepare_process(cfg: &mut Config) -> anyhow::Result<crate::process::Identity> {
    // SAFETY: umask only sets this process's creation mask.
    unsafe { libc::umask(cfg.umask as libc::mode_t) };
    let identity = crate::process::Identity::resolve(
        cfg.user.as_deref(),
        cfg.group.as_deref(),
        cfg.initgroups,
    )?;
    if let Some(dir) = &cfg.chdir {
        std::env::set_current_dir(dir)
            .with_context(|| format!("cannot chdir to {}", dir.display()))?;
    }
    tls::load(cfg).map_err(anyhow::Error::msg)?;
    Ok(identity)
}

/// The master hooks' host, after `nworkers_changed` and `on_starting` ran in it; `None`
/// when there are no hooks or it could not start (logged: the server runs without).
fn start_hook_host(cfg: &Config, target: u32) -> Option<hooks::HookHost> {
    let mut hook_host = match hooks::HookHost::start(cfg) {
        Ok(host) => host,
        Err(e) => {
            tracing::error!(
                "cannot start the hook host: {e:#}; the master hooks of {} will not run",
                cfg.config.as_deref().unwrap_or("the configuration file")
            );
            None
        }
    };
    if let Some(h) = hook_host.as_mut() {
        // As Gunicorn: the worker count is set (from nothing) before on_starting.
        let wait = &mut crate::config::file::poll_readable;
        h.call(
            "nworkers_changed",
            json!({"new": target, "old": null}),
            wait,
        );
        h.call("on_starting", json!({}), wait);
    }
    hook_host
}

/// The master's own descriptors in its poll: the signal pipe, the control socket (not
/// yet for an upgraded master, which takes it over later) and `--metrics-bind`.
struct MasterSockets {
    poll: Poll,
    signals: SignalPipe,
    control: Option<ControlServer>,
    metrics: Option<MetricsServer>,
    /// After a re-execution in place: the ids of the control connections handed over,
    /// in the handoff's order.
    adopted_conns: Vec<crate::control::ConnId>,
    /// This master was re-executed in place (a `--preload` reload).
    reexecuted: bool,
}

impl MasterSockets {
    fn open(
        cfg: &mut Config,
        listeners: &[crate::net::Listener],
        deferred_takeover: bool,
        handoff: Option<&reexec::Handoff>,
    ) -> anyhow::Result<MasterSockets> {
        use signal_hook::consts::*;
        let signals = SignalPipe::install(&[
            SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGWINCH, SIGCHLD,
        ])?;
        if handoff.is_some() {
            // Blocked across execve; anything sent meanwhile is handled now.
            reexec::release_signals();
        }
        let poll = Poll::new()?;
        signals.register(poll.registry(), SIGNAL_TOKEN)?;
        // A master re-executed in place keeps the socket it had (and its waiting clients).
        let adopt = handoff.and_then(|h| h.control_fd.map(|fd| (h, fd)));
        let adopting = deferred_takeover || adopt.is_some();
        let mut control = open_control(cfg, listeners, adopting, poll.registry())?;
        let mut adopted_conns = Vec::new();
        if let (Some((h, fd)), Some(path)) = (adopt, cfg.control_socket.clone()) {
            let (server, ids) = ControlServer::adopt(fd, &path, &h.conns, poll.registry())?;
            adopted_conns = ids;
            control = Some(server);
        }
        let metrics = match &cfg.observability.metrics_bind {
            Some(addr) => Some(MetricsServer::bind(addr, cfg.backlog, poll.registry())?),
            None => None,
        };
        Ok(MasterSockets {
            poll,
            signals,
            control,
            metrics,
            adopted_conns,
            reexecuted: handoff.is_some(),
        })
    }
}

/// The statsd and syslog senders, then the start-up lines.
fn start_reporting(cfg: &Config, listeners: &[crate::net::Listener], sockets: &MasterSockets) {
    crate::statsd::start(&cfg.observability);
    crate::syslog::start(&cfg.observability, cfg.proc_name());
    log_start(cfg, listeners, sockets);
}

/// Gunicorn's first start-up record, with the master's process title.
fn log_starting(cfg: &Config) {
    crate::process::set_title(&format!("rgun: master [{}]", cfg.proc_name()));
    tracing::info!("Starting rgun {}", env!("CARGO_PKG_VERSION"));
}

/// Gunicorn's start-up lines after the first: listeners, worker class (and ours: the
/// control and metrics sockets, the master this one upgraded from).
fn log_start(cfg: &Config, listeners: &[crate::net::Listener], sockets: &MasterSockets) {
    for l in listeners {
        tracing::info!("Listening at: {} ({})", l.display, std::process::id());
    }
    if let Some(c) = &sockets.control {
        tracing::info!("Control socket: {}", c.path().display());
        if let Some(alias) = c.alias() {
            tracing::info!("Control socket also at {} (for gunicornc)", alias.display());
        }
    }
    if let Some(m) = &sockets.metrics {
        tracing::info!("Metrics at: {}", m.display);
    }
    if cfg.reload {
        cfg.reloader.warn_of_patterns_matching_nothing();
    }
    if sockets.reexecuted {
        tracing::info!("Re-executed in place for a reload; the workers serve on meanwhile");
    }
    if let Ok(old) = std::env::var(UPGRADE_FROM_ENV) {
        tracing::info!("Upgraded from master {old}; it keeps serving until it is stopped");
        std::env::remove_var(UPGRADE_FROM_ENV);
    }
    // Gunicorn's line names the class as given (`sync` when none is).
    tracing::info!(
        "Using worker: {}",
        cfg.worker_class.as_deref().unwrap_or("sync")
    );
}

/// Says how `workers = "auto"` and `--max-worker-rss auto` were derived; returns the
/// cgroup memory limit `auto` divides (None: no limit, or not asked for).
/// Autoscaling's state, its range said once at start.
fn log_scaling(plan: &crate::config::ScalingPlan, idle_secs: u64) -> super::scaling::Scaling {
    let how = plan
        .ceiling_how
        .as_ref()
        .map_or(String::new(), |h| format!(" (ceiling: {h})"));
    tracing::info!(
        "Autoscaling between {} and {} workers{how}, starting with {}; idle after {idle_secs}s",
        plan.floor,
        plan.ceiling,
        plan.start
    );
    super::scaling::Scaling::new(plan, idle_secs)
}

fn log_sizing(cfg: &Config, workers: u32, sized: Option<String>) -> Option<u64> {
    if let Some(how) = sized {
        tracing::info!("workers = auto: {workers} ({how})");
    }
    if cfg.max_worker_rss != crate::config::MaxWorkerRss::Auto {
        return None;
    }
    match crate::sizing::memory_limit() {
        Some(m) => {
            tracing::info!(
                "max_worker_rss = auto: 80% of {} MiB shared by the workers ({}; {} MiB each at {workers} workers)",
                m.bytes >> 20,
                m.how,
                (m.bytes / 10 * 8 / u64::from(workers.max(1))) >> 20
            );
            Some(m.bytes)
        }
        None => {
            tracing::info!("max_worker_rss = auto: no cgroup memory limit, so no limit");
            None
        }
    }
}
