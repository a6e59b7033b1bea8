//! A worker process: the state every connection shares (`Shared`, `Settings`,
//! `Service`) and the exit codes the master understands. The set-up after fork lives in
//! `boot`, the event loop in `event_loop`, the `--threads N` pool in `pool`.

mod abort;
mod asyncio_driver;
mod body;
mod boot;
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
pub use self::boot::{check_app, run, WorkerInit};
pub(crate) use self::boot::{leave_master, own_signals};
pub use self::loggers::set_up as set_up_loggers;
mod watch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use crate::asgi::AsgiApp;
use crate::config::{AllowIps, Config};
use crate::http::head::HeadLimits;
use crate::log::{AccessLog, AccessRecord};
use crate::scoreboard::{Peers, Slot, WorkerState};
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

fn jittered(max_requests: u64, jitter: u64) -> u64 {
    if max_requests == 0 || jitter == 0 {
        return max_requests;
    }
    let seed = u64::from(std::process::id()) ^ crate::scoreboard::monotonic_ms();
    // Both are at most MAX_REQUESTS_LIMIT (the command line checks), so neither the
    // `+ 1` nor the sum can overflow; saturate anyway rather than trust that here.
    max_requests.saturating_add(seed % jitter.saturating_add(1))
}

/// A quarter of `--timeout`, between 100 ms and 1 s (1 s when time-outs are off).
fn sweep_interval(timeout_secs: u64) -> Duration {
    match timeout_secs {
        0 => Duration::from_secs(1),
        t => (Duration::from_secs(t) / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
    }
}
