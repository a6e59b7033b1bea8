//! Settings: the command line (Gunicorn's flag names, defaults and meanings) parsed into
//! one [`Config`] the master and workers read. Parsing only: nothing here binds,
//! forks or touches Python.

pub mod bind;
mod dirty;
pub mod file;
mod http2;
mod layers;
pub mod logconfig;
pub mod logformat;
pub mod observability;
mod parser;
mod print;
mod probe;
pub mod reference;
pub mod reloader;
mod scaling;
mod syslog_target;
mod tls;
mod uwsgi;
mod values;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use self::bind::BindAddress;
pub use self::dirty::{DirtyAppSpec, DirtyArgs};
pub use self::http2::Http2Args;
pub use self::layers::{split_args, LayerError, ARGS_ENV_VARS};
pub use self::parser::ParserArgs;
pub use self::probe::{Probe, ProbeArgs};
pub use self::scaling::{ScalingArgs, ScalingPlan};
pub use self::tls::TlsArgs;
pub use self::uwsgi::ProtocolArgs;
use self::values::{
    non_negative, parse_allow_ips, parse_env, parse_header_map, parse_max_worker_rss, parse_mode,
    parse_worker_class, parse_workers,
};
pub use self::values::{worker_kind, AllowIps, MaxWorkerRss, WorkerKind, Workers};
use crate::http::forwarder::ForwarderHeaders;
use crate::http::head::HeadLimits;

/// The longest `--timeout`, `--graceful-timeout` and `--keep-alive`, in seconds (about
/// 24.8 days): workers hand time-outs to poll(2) as `i32` milliseconds, and a deadline
/// this far out already means "never".
pub const MAX_DURATION_SECS: u64 = i32::MAX as u64 / 1000;

/// The largest `--max-requests` and `--max-requests-jitter` (10^12 requests, years of
/// traffic): their sum is computed per worker and must not overflow.
pub const MAX_REQUESTS_LIMIT: u64 = 1_000_000_000_000;

/// The largest `--max-worker-rss` in MiB: the limit is compared in bytes.
pub const MAX_WORKER_RSS_MIB: u64 = u64::MAX >> 20;

/// Gunicorn's default access-log format.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str =
    r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "rgun",
    version,
    about = "A pre-fork HTTP server for Python WSGI and ASGI applications (a drop-in Gunicorn replacement)",
    args_override_self = true
)]
pub struct Config {
    /// The application (WSGI; ASGI with -k asgi): MODULE[:CALLABLE], e.g.
    /// `myproject.wsgi:application` or `app:create_app()`. The callable defaults to
    /// `application`.
    #[arg(value_name = "MODULE:CALLABLE", default_value = "")]
    pub app: String,

    /// The application, from a configuration file's `wsgi_app` (the positional wins).
    #[arg(long = "wsgi-app", hide = true, default_value = "")]
    pub wsgi_app: String,

    /// Gunicorn configuration file: a path, or python:MODULE [default: ./gunicorn.conf.py
    /// when present].
    #[arg(short = 'c', long = "config", value_name = "CONFIG")]
    pub config: Option<String>,

    /// Server hooks the configuration file defines (filled in after parsing).
    #[arg(skip)]
    pub hooks: Vec<String>,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub http2: Http2Args,

    #[command(flatten)]
    pub probe: ProbeArgs,

    #[command(flatten)]
    pub parser: ParserArgs,

    #[command(flatten)]
    pub protocol: ProtocolArgs,

    #[command(flatten)]
    pub reloader: reloader::ReloaderArgs,

    #[command(flatten)]
    pub dirty: DirtyArgs,

    /// The TLS configuration the master built from `tls` (filled in after parsing).
    #[arg(skip)]
    pub tls_server: Option<std::sync::Arc<rustls::ServerConfig>>,

    /// Address to listen on: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N. Repeatable.
    /// [default: 0.0.0.0:$PORT when PORT is set, else 127.0.0.1:8000]
    #[arg(short = 'b', long = "bind", value_name = "ADDRESS", value_parser = bind::parse)]
    pub bind: Vec<BindAddress>,

    /// Number of worker processes, or auto: the CPUs this process may use (cgroup
    /// quota and affinity mask, rounded up) [default: $WEB_CONCURRENCY, else 1].
    #[arg(short = 'w', long = "workers", value_name = "INT|auto", allow_negative_numbers = true, value_parser = parse_workers)]
    pub workers: Option<Workers>,

    #[command(flatten)]
    pub scaling: ScalingArgs,

    /// Python threads per worker.
    #[arg(long = "threads", value_name = "INT", default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,

    /// Workers silent (or on one request) for more than this many seconds are killed and
    /// restarted; 0 disables.
    #[arg(
        short = 't',
        long = "timeout",
        value_name = "INT",
        default_value_t = 30,
        allow_negative_numbers = true,
        value_parser = non_negative(MAX_DURATION_SECS)
    )]
    pub timeout: u64,

    /// Seconds workers get to finish requests in flight on a graceful stop.
    #[arg(long = "graceful-timeout", value_name = "INT", default_value_t = 30, allow_negative_numbers = true, value_parser = non_negative(MAX_DURATION_SECS))]
    pub graceful_timeout: u64,

    /// On TERM, seconds to keep serving, with /readyz answering 503 and keep-alive
    /// responses closing, before the graceful stop begins (so that load balancers and
    /// Kubernetes take the server out first). A second TERM or INT cuts it short.
    #[arg(long = "shutdown-delay", value_name = "INT", default_value_t = 0, allow_negative_numbers = true, value_parser = non_negative(MAX_DURATION_SECS))]
    pub shutdown_delay: u64,

    /// Seconds to wait for the next request on a keep-alive connection.
    #[arg(long = "keep-alive", value_name = "INT", default_value_t = 2, allow_negative_numbers = true, value_parser = non_negative(MAX_DURATION_SECS))]
    pub keepalive: u64,

    /// Largest request line in bytes (0 = unlimited).
    #[arg(long = "limit-request-line", value_name = "INT", default_value_t = 4094, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub limit_request_line: u32,

    /// Most header fields in a request.
    #[arg(long = "limit-request-fields", value_name = "INT", default_value_t = 100, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(0..=32768))]
    pub limit_request_fields: u32,

    /// Largest header field in bytes.
    #[arg(
        long = "limit-request-field_size",
        alias = "limit-request-field-size",
        value_name = "INT",
        default_value_t = 8190,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32)
    )]
    pub limit_request_field_size: u32,

    /// Change to this directory before loading the application.
    #[arg(long = "chdir", value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Comma-separated directories to add to the Python path.
    #[arg(long = "pythonpath", value_name = "STRING")]
    pub pythonpath: Option<String>,

    /// Set an environment variable in the workers: KEY=VALUE. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Access log file; `-` is stdout. Off by default.
    #[arg(long = "access-logfile", value_name = "FILE")]
    pub access_logfile: Option<String>,

    /// Access log format, with Gunicorn's atoms.
    #[arg(long = "access-logformat", value_name = "STRING", default_value = DEFAULT_ACCESS_LOG_FORMAT)]
    pub access_log_format: String,

    /// Error log file; `-` is stderr.
    #[arg(
        long = "error-logfile",
        alias = "log-file",
        value_name = "FILE",
        default_value = "-"
    )]
    pub error_logfile: String,

    /// Error log level (case-insensitive, as in Gunicorn).
    #[arg(long = "log-level", value_name = "LEVEL", default_value = "info", ignore_case = true, value_parser = ["debug", "info", "warning", "error", "critical"])]
    pub loglevel: String,

    /// Gunicorn's worker class: `sync`/`gthread` (the WSGI worker; use --threads) or
    /// `asgi` (also `uvicorn.workers.UvicornWorker`, `uvicorn_worker.UvicornWorker`,
    /// `uvicorn.workers.UvicornH11Worker`): the ASGI 3 worker. Any other is refused.
    #[arg(short = 'k', long = "worker-class", value_name = "STRING", value_parser = parse_worker_class)]
    pub worker_class: Option<String>,

    /// ASGI: the `root_path` of every request scope (the prefix the app is mounted at).
    #[arg(long = "root-path", value_name = "PATH", default_value = "")]
    pub root_path: String,

    /// ASGI: the lifespan protocol. `auto` runs it when the app supports it, `on`
    /// requires it, `off` never runs it.
    #[arg(long = "asgi-lifespan", value_name = "MODE", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub asgi_lifespan: String,

    /// ASGI: the event loop. `auto` is uvloop when installed, else asyncio.
    #[arg(long = "asgi-loop", value_name = "LOOP", default_value = "auto", value_parser = ["auto", "asyncio", "uvloop"])]
    pub asgi_loop: String,

    /// ASGI: the largest WebSocket message accepted, in bytes (a larger one closes
    /// the connection with 1009).
    #[arg(long = "websocket-max-message-size", value_name = "BYTES", default_value_t = 16 * 1024 * 1024, allow_negative_numbers = true, value_parser = non_negative(u64::MAX))]
    pub websocket_max_message_size: u64,

    /// ASGI: seconds an application may run on after its client disconnected before
    /// its task is cancelled.
    #[arg(
        long = "asgi-disconnect-grace-period",
        value_name = "SECONDS",
        default_value_t = 3,
        allow_negative_numbers = true,
        value_parser = non_negative(MAX_DURATION_SECS)
    )]
    pub asgi_disconnect_grace_period: u64,

    // Gunicorn options rgun accepts for compatibility and ignores (hidden from --help;
    // the configuration reference lists them apart).
    /// Accepted, no effect: heartbeats go through a shared-memory scoreboard, not
    /// temporary files.
    #[arg(long = "worker-tmp-dir", value_name = "DIR", hide = true)]
    pub worker_tmp_dir: Option<String>,
    /// Accepted, no effect: Python's stdout and stderr always go to the error log.
    #[arg(long = "capture-output", hide = true)]
    pub capture_output: bool,
    /// Accepted, no effect: `wsgi.file_wrapper` files always go out with sendfile(2).
    #[arg(long = "no-sendfile", hide = true)]
    pub no_sendfile: bool,
    /// Accepted, no effect: Python's stdout and stderr always go to the error log.
    #[arg(short = 'R', long = "enable-stdio-inheritance", hide = true)]
    pub enable_stdio_inheritance: bool,
    /// Accepted, `drop` only: header names with `_` are always dropped (but for
    /// --forwarder-headers from a trusted front end).
    #[arg(long = "header-map", value_name = "drop", hide = true, value_parser = parse_header_map)]
    pub header_map: Option<String>,
    /// Accepted, no effect: large request bodies spill to anonymous files in $TMPDIR
    /// (Gunicorn 27 does not use the setting either).
    #[arg(long = "tmp-upload-dir", value_name = "DIR", hide = true)]
    pub tmp_upload_dir: Option<String>,
    /// The process titles' name when -n gives none [default: the application].
    #[arg(long = "default-proc-name", value_name = "STRING", hide = true)]
    pub default_proc_name: Option<String>,
    /// The name in process titles (`rgun: master [NAME]`, `rgun: worker [NAME]`) and
    /// `ps` [default: the application].
    #[arg(short = 'n', long = "name", value_name = "STRING")]
    pub proc_name_setting: Option<String>,

    /// Peers trusted to set the URL scheme with X-Forwarded-* headers: comma-separated
    /// IP addresses, or `*`.
    #[arg(long = "forwarded-allow-ips", value_name = "STRING", default_value = "127.0.0.1,::1", value_parser = parse_allow_ips)]
    pub forwarded_allow_ips: AllowIps,

    /// Header names with `_` a trusted front end (--forwarded-allow-ips) may set,
    /// comma-separated: each reaches the application as HTTP_*, and SCRIPT_NAME sets
    /// the environ's SCRIPT_NAME (PATH_INFO is the rest of the path). `*`: any.
    #[arg(long = "forwarder-headers", value_name = "LIST", default_value = "SCRIPT_NAME,PATH_INFO", value_parser = parse_forwarder_headers)]
    pub forwarder_headers: ForwarderHeaders,

    /// Most simultaneous connections per worker.
    #[arg(long = "worker-connections", value_name = "INT", default_value_t = 1000, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub worker_connections: u32,

    /// Restart a worker after this many requests (0 = never).
    #[arg(long = "max-requests", value_name = "INT", default_value_t = 0, allow_negative_numbers = true, value_parser = non_negative(MAX_REQUESTS_LIMIT))]
    pub max_requests: u64,

    /// Gracefully replace a worker whose resident memory exceeds this many MiB (0 = off),
    /// or auto: 80% of the cgroup memory limit shared by the workers (off when there is
    /// no limit).
    #[arg(long = "max-worker-rss", value_name = "MIB|auto", default_value = "0", allow_negative_numbers = true, value_parser = parse_max_worker_rss)]
    pub max_worker_rss: MaxWorkerRss,

    /// Random extra requests, up to this many, added to --max-requests per worker.
    #[arg(long = "max-requests-jitter", value_name = "INT", default_value_t = 0, allow_negative_numbers = true, value_parser = non_negative(MAX_REQUESTS_LIMIT))]
    pub max_requests_jitter: u64,

    /// Listen queue size.
    #[arg(long = "backlog", value_name = "INT", default_value_t = 2048, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(1..))]
    pub backlog: i32,

    /// Set SO_REUSEPORT on listening sockets.
    #[arg(long = "reuse-port")]
    pub reuse_port: bool,

    /// A header that marks a request from a --forwarded-allow-ips peer as HTTPS:
    /// NAME=VALUE, repeatable; replaces Gunicorn's default set (X-Forwarded-Protocol=ssl,
    /// X-Forwarded-Proto=https, X-Forwarded-Ssl=on).
    #[arg(long = "secure-scheme-header", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub secure_scheme_header: Vec<(String, String)>,

    /// Accept a PROXY protocol header (v1, v2, or auto: either or none) from
    /// --proxy-allow-from peers; the bare flag means auto.
    #[arg(long = "proxy-protocol", value_name = "MODE", num_args = 0..=1, default_value = "off", default_missing_value = "auto", value_parser = ["off", "v1", "v2", "auto"])]
    pub proxy_protocol: String,

    /// Peers allowed to send a PROXY header: comma-separated IP addresses, or `*`.
    #[arg(long = "proxy-allow-from", value_name = "STRING", default_value = "127.0.0.1,::1", value_parser = parse_allow_ips)]
    pub proxy_allow_from: AllowIps,

    /// Control socket path [default: $RUNTIME_DIRECTORY/rgun.ctl under systemd, else
    /// one named after the first listener in $XDG_RUNTIME_DIR/rgun/, else in
    /// /tmp/rgun-UID/, e.g. /tmp/rgun-1000/127.0.0.1:8000.ctl].
    #[arg(long = "control-socket", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Permissions of the control socket, in octal.
    #[arg(long = "control-socket-mode", value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    pub control_socket_mode: u32,

    /// Do not open a control socket (it wins over --control-socket, as in Gunicorn).
    #[arg(long = "no-control-socket")]
    pub no_control_socket: bool,

    /// Write the master's pid to this file (refused if it names a live process).
    #[arg(short = 'p', long = "pid", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,

    /// Detach from the terminal and run in the background.
    #[arg(short = 'D', long = "daemon")]
    pub daemon: bool,

    /// Run workers as this user (name or uid).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,

    /// Run workers as this group (name or gid).
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    pub group: Option<String>,

    /// Also set the worker user's supplementary groups.
    #[arg(long = "initgroups")]
    pub initgroups: bool,

    /// File mode creation mask, in octal (Gunicorn's default 0).
    #[arg(short = 'm', long = "umask", value_name = "INT", default_value = "0", value_parser = parse_mode)]
    pub umask: u32,

    /// Development: restart workers when a Python source file of the application
    /// (or a --reload-extra-file) changes.
    #[arg(long = "reload")]
    pub reload: bool,

    /// Import the application in the master before forking workers (copy-on-write
    /// memory). A reload then re-executes the master in place (same pid) to bring in
    /// new code.
    #[arg(long = "preload")]
    pub preload: bool,

    /// Check the configuration and that the application imports, then exit (0 or 1).
    #[arg(long = "check-config")]
    pub check_config: bool,

    /// Print the effective settings and exit.
    #[arg(long = "print-config")]
    pub print_config: bool,

    #[command(flatten)]
    pub observability: observability::Observability,

    /// Print generated documentation and exit (for packaging): `man`,
    /// `config-reference`, or a shell for completions (bash, zsh, fish, elvish,
    /// powershell).
    #[arg(long = "generate", value_name = "WHAT", hide = true)]
    pub generate: Option<String>,
}

/// Gunicorn's default `secure_scheme_headers`.
pub const DEFAULT_SECURE_SCHEME_HEADERS: [(&str, &str); 3] = [
    ("X-FORWARDED-PROTOCOL", "ssl"),
    ("X-FORWARDED-PROTO", "https"),
    ("X-FORWARDED-SSL", "on"),
];

/// `--forwarder-headers`: any comma-separated list of names (`*`: any).
fn parse_forwarder_headers(s: &str) -> Result<ForwarderHeaders, String> {
    Ok(ForwarderHeaders::parse(s))
}

impl Config {
    /// The access log is in Uvicorn's format: Gunicorn running a Uvicorn worker class
    /// writes the lines Uvicorn logs, unless `--access-logformat` chose another format.
    pub fn uvicorn_access_log(&self) -> bool {
        self.uvicorn_class() && self.access_log_format == DEFAULT_ACCESS_LOG_FORMAT
    }

    /// `-k` names one of Uvicorn's worker classes: under Gunicorn such a worker writes
    /// Uvicorn's records (its access lines, `Started server process [PID]`,
    /// `Shutting down`, `Finished server process [PID]`), and so do rgun's.
    pub fn uvicorn_class(&self) -> bool {
        matches!(
            self.worker_class.as_deref(),
            Some(
                "uvicorn.workers.UvicornWorker"
                    | "uvicorn_worker.UvicornWorker"
                    | "uvicorn.workers.UvicornH11Worker"
            )
        )
    }

    /// The worker `-k` selects (an unknown value never gets this far: the flag's
    /// parser refuses it).
    pub fn worker_kind(&self) -> WorkerKind {
        worker_kind(self.worker_class.as_deref()).unwrap_or(WorkerKind::Wsgi)
    }

    /// Gunicorn's `proc_name`, else its `default_proc_name`: the application.
    pub fn proc_name(&self) -> &str {
        self.proc_name_setting
            .as_deref()
            .or(self.default_proc_name.as_deref())
            .unwrap_or(&self.app)
    }

    /// Binds in effect (Gunicorn's default when none given).
    pub fn binds(&self) -> Vec<BindAddress> {
        if self.bind.is_empty() {
            vec![BindAddress::Tcp("127.0.0.1:8000".into())]
        } else {
            self.bind.clone()
        }
    }

    /// `-w`, else `$WEB_CONCURRENCY`, else 1; `auto` resolved (see `sizing`).
    pub fn worker_count(&self) -> Result<u32, String> {
        self.worker_count_explained().map(|(n, _)| n)
    }

    /// `worker_count`, and for `auto` how it was derived (the start-up line).
    pub fn worker_count_explained(&self) -> Result<(u32, Option<String>), String> {
        let workers = match self.workers {
            Some(w) => w,
            None => match std::env::var("WEB_CONCURRENCY") {
                Ok(v) => parse_workers(&v).map_err(|_| {
                    format!("invalid WEB_CONCURRENCY {v:?}: expected a number of workers from 1 to 1024, or auto")
                })?,
                Err(_) => Workers::Count(1),
            },
        };
        Ok(match workers {
            Workers::Count(n) => (n, None),
            Workers::Auto => {
                let budget = crate::sizing::cpu_budget();
                (budget.workers, Some(budget.how))
            }
        })
    }

    /// `--secure-scheme-header`s, or Gunicorn's defaults.
    pub fn secure_scheme_headers(&self) -> Vec<(String, String)> {
        if self.secure_scheme_header.is_empty() {
            DEFAULT_SECURE_SCHEME_HEADERS
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        } else {
            self.secure_scheme_header.clone()
        }
    }

    pub fn proxy_mode(&self) -> crate::http::proxy::ProxyMode {
        use crate::http::proxy::ProxyMode;
        match self.proxy_protocol.as_str() {
            "v1" => ProxyMode::V1,
            "v2" => ProxyMode::V2,
            "auto" => ProxyMode::Auto,
            _ => ProxyMode::Off,
        }
    }

    /// The head limits; 0 means Gunicorn's maximum, as in Gunicorn.
    pub fn head_limits(&self) -> HeadLimits {
        let or = |v: u32, max: usize| if v == 0 { max } else { v as usize };
        HeadLimits {
            request_line_bytes: or(self.limit_request_line, 8190),
            fields: or(self.limit_request_fields, 32768),
            field_bytes: or(self.limit_request_field_size, 8190),
            lenient: self.parser.leniency(),
        }
    }

    pub fn pythonpath_dirs(&self) -> Vec<PathBuf> {
        self.pythonpath
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive)
    }

    pub fn graceful_timeout(&self) -> Duration {
        Duration::from_secs(self.graceful_timeout)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_secs(self.shutdown_delay)
    }

    /// Where the control socket is: `--control-socket`, or the default the master chose
    /// from its first listener (`master::listeners::open_control`); None with
    /// `--no-control-socket` or before the master has chosen.
    pub fn control_socket_path(&self) -> Option<PathBuf> {
        if self.no_control_socket {
            return None;
        }
        self.control_socket.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::{worker_kind, WorkerKind};

    #[test]
    fn worker_class_names() {
        for name in [
            "asgi",
            "uvicorn.workers.UvicornWorker",
            "uvicorn_worker.UvicornWorker",
            "uvicorn.workers.UvicornH11Worker",
        ] {
            assert_eq!(worker_kind(Some(name)), Some(WorkerKind::Asgi), "{name}");
        }
        for name in ["sync", "gthread", "gunicorn.workers.sync.SyncWorker"] {
            assert_eq!(worker_kind(Some(name)), Some(WorkerKind::Wsgi), "{name}");
        }
        assert_eq!(worker_kind(None), Some(WorkerKind::Wsgi));
        assert_eq!(worker_kind(Some("eventlet")), None);
        assert_eq!(
            worker_kind(Some("ASGI")),
            None,
            "Gunicorn's names are exact"
        );
    }
}
