//! Gunicorn configuration files (`-c gunicorn.conf.py`, `-c python:module`, or
//! `./gunicorn.conf.py` when present).
//!
//! The file is Python, so the interpreter runs it — in a short-lived forked child, so
//! the master never runs the file's code (its imports could start threads, which would
//! make the master's later forks unsafe, and would stay in every worker). The child turns
//! the file's settings into command-line arguments (`file_loader.py`), which the
//! caller layers below the environment and the real command line.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

const LOADER: &str = include_str!("file_loader.py");

/// Gunicorn setting name → (rgun flag, value kind). The one table both the loader and
/// `rgunctl config` agree on.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    ("wsgi_app", "--wsgi-app", "str"),
    ("bind", "--bind", "list"),
    ("workers", "--workers", "int_or_auto"),
    ("workers_min", "--workers-min", "int"),
    ("workers_max", "--workers-max", "int"),
    ("workers_idle", "--workers-idle", "int"),
    ("worker_class", "--worker-class", "str"),
    ("threads", "--threads", "int"),
    ("root_path", "--root-path", "str"),
    ("asgi_lifespan", "--asgi-lifespan", "str"),
    ("asgi_loop", "--asgi-loop", "str"),
    (
        "asgi_disconnect_grace_period",
        "--asgi-disconnect-grace-period",
        "int",
    ),
    (
        "websocket_max_message_size",
        "--websocket-max-message-size",
        "int",
    ),
    ("timeout", "--timeout", "int"),
    ("graceful_timeout", "--graceful-timeout", "int"),
    ("shutdown_delay", "--shutdown-delay", "int"),
    ("keepalive", "--keep-alive", "int"),
    ("limit_request_line", "--limit-request-line", "int"),
    ("limit_request_fields", "--limit-request-fields", "int"),
    (
        "limit_request_field_size",
        "--limit-request-field_size",
        "int",
    ),
    ("chdir", "--chdir", "str"),
    ("pythonpath", "--pythonpath", "str"),
    ("raw_env", "--env", "list"),
    ("accesslog", "--access-logfile", "str"),
    ("access_log_format", "--access-logformat", "str"),
    ("errorlog", "--error-logfile", "str"),
    ("loglevel", "--log-level", "str"),
    ("forwarded_allow_ips", "--forwarded-allow-ips", "csv"),
    ("forwarder_headers", "--forwarder-headers", "csv"),
    ("secure_scheme_headers", "--secure-scheme-header", "dict"),
    ("worker_connections", "--worker-connections", "int"),
    ("max_requests", "--max-requests", "int"),
    ("max_requests_jitter", "--max-requests-jitter", "int"),
    ("max_worker_rss", "--max-worker-rss", "int_or_auto"),
    ("backlog", "--backlog", "int"),
    ("proxy_protocol", "--proxy-protocol", "proxy"),
    ("http_protocols", "--http-protocols", "csv"),
    ("http2_cleartext", "--http2-cleartext", "h2c"),
    (
        "http2_max_concurrent_streams",
        "--http2-max-concurrent-streams",
        "int",
    ),
    (
        "http2_initial_window_size",
        "--http2-initial-window-size",
        "int",
    ),
    ("http2_max_frame_size", "--http2-max-frame-size", "int"),
    (
        "http2_max_header_list_size",
        "--http2-max-header-list-size",
        "int",
    ),
    ("proxy_allow_ips", "--proxy-allow-from", "csv"),
    ("protocol", "--protocol", "str"),
    ("uwsgi_allow_ips", "--uwsgi-allow-from", "csv"),
    ("reuse_port", "--reuse-port", "bool"),
    ("pidfile", "--pid", "str"),
    ("preload_app", "--preload", "bool"),
    ("reload", "--reload", "bool"),
    ("reload_engine", "--reload-engine", "str"),
    ("reload_extra_files", "--reload-extra-file", "list"),
    ("reload_probe", "--reload-probe", "str"),
    ("reload_probe_host", "--reload-probe-host", "str"),
    ("reload_probe_status", "--reload-probe-status", "int"),
    ("daemon", "--daemon", "bool"),
    ("user", "--user", "str"),
    ("group", "--group", "str"),
    ("initgroups", "--initgroups", "bool"),
    ("umask", "--umask", "octal"),
    ("control_socket", "--control-socket", "str"),
    ("control_socket_mode", "--control-socket-mode", "octal"),
    ("control_socket_disable", "--no-control-socket", "bool"),
    ("http_parser", "--http-parser", "str"),
    (
        "permit_obsolete_folding",
        "--permit-obsolete-folding",
        "bool",
    ),
    ("strip_header_spaces", "--strip-header-spaces", "bool"),
    (
        "permit_unconventional_http_method",
        "--permit-unconventional-http-method",
        "bool",
    ),
    (
        "permit_unconventional_http_version",
        "--permit-unconventional-http-version",
        "bool",
    ),
    ("casefold_http_method", "--casefold-http-method", "bool"),
    ("certfile", "--certfile", "str"),
    ("keyfile", "--keyfile", "str"),
    ("ca_certs", "--ca-certs", "str"),
    ("cert_reqs", "--cert-reqs", "int"),
    ("ciphers", "--ciphers", "str"),
    ("ssl_version", "--ssl-version", "str"),
    (
        "do_handshake_on_connect",
        "--do-handshake-on-connect",
        "bool",
    ),
    ("suppress_ragged_eofs", "--suppress-ragged-eofs", "bool"),
    ("proc_name", "--name", "str"),
    ("access_log_json", "--access-log-json", "bool"),
    ("logconfig_dict", "--log-config-dict", "json"),
    ("logconfig_json", "--log-config-json", "str"),
    ("syslog", "--log-syslog", "bool"),
    ("syslog_addr", "--log-syslog-to", "str"),
    ("syslog_prefix", "--log-syslog-prefix", "str"),
    ("syslog_facility", "--log-syslog-facility", "str"),
    (
        "disable_redirect_access_to_syslog",
        "--disable-redirect-access-to-syslog",
        "bool",
    ),
    ("metrics_bind", "--metrics-bind", "str"),
    ("statsd_host", "--statsd-host", "str"),
    ("statsd_prefix", "--statsd-prefix", "str"),
    ("dogstatsd_tags", "--dogstatsd-tags", "str"),
    ("enable_backlog_metric", "--enable-backlog-metric", "bool"),
    ("dirty_apps", "--dirty-app", "list"),
    ("dirty_workers", "--dirty-workers", "int"),
    ("dirty_timeout", "--dirty-timeout", "int"),
    ("dirty_threads", "--dirty-threads", "int"),
    ("dirty_graceful_timeout", "--dirty-graceful-timeout", "int"),
    ("check_config", "--check-config", "bool"),
    ("print_config", "--print-config", "bool"),
    ("default_proc_name", "--default-proc-name", "str"),
    // Accepted for Gunicorn's configurations, with no effect (docs/gunicorn-compat.md).
    ("worker_tmp_dir", "--worker-tmp-dir", "str"),
    ("capture_output", "--capture-output", "bool"),
    ("sendfile", "--no-sendfile", "bool_off"),
    (
        "enable_stdio_inheritance",
        "--enable-stdio-inheritance",
        "bool",
    ),
    ("header_map", "--header-map", "str"),
    ("tmp_upload_dir", "--tmp-upload-dir", "str"),
];

/// Gunicorn settings rgun does not provide (docs/gunicorn-compat.md says why), with
/// Gunicorn's default: a configuration file setting one to anything else gets a
/// warning that says so, not "unknown".
pub const NOT_PROVIDED: &[(&str, &str)] = &[
    ("spew", "False"),
    ("logger_class", "gunicorn.glogging.Logger"),
    ("logconfig", "None"),
    ("paste", "None"),
    ("raw_paste_global_conf", "[]"),
];

/// Gunicorn's server hooks, each with the `__qualname__` of Gunicorn's default, which
/// `--print-config` shows (as Gunicorn does) when the file does not define it.
pub const HOOKS: &[(&str, &str)] = &[
    ("on_starting", "OnStarting.on_starting"),
    ("on_reload", "OnReload.on_reload"),
    ("when_ready", "WhenReady.when_ready"),
    ("pre_fork", "Prefork.pre_fork"),
    ("post_fork", "Postfork.post_fork"),
    ("post_worker_init", "PostWorkerInit.post_worker_init"),
    ("worker_int", "WorkerInt.worker_int"),
    ("worker_abort", "WorkerAbort.worker_abort"),
    ("pre_exec", "PreExec.pre_exec"),
    ("pre_request", "PreRequest.pre_request"),
    ("post_request", "PostRequest.post_request"),
    ("child_exit", "ChildExit.child_exit"),
    ("worker_exit", "WorkerExit.worker_exit"),
    ("nworkers_changed", "NumWorkersChanged.nworkers_changed"),
    ("on_exit", "OnExit.on_exit"),
    ("ssl_context", "NewSSLContext.ssl_context"),
    ("on_dirty_starting", "OnDirtyStarting.on_dirty_starting"),
    ("dirty_post_fork", "DirtyPostFork.dirty_post_fork"),
    ("dirty_worker_init", "DirtyWorkerInit.dirty_worker_init"),
    ("dirty_worker_exit", "DirtyWorkerExit.dirty_worker_exit"),
];

/// What a configuration file amounts to.
#[derive(Debug, Default)]
pub struct FileSettings {
    pub args: Vec<String>,
    /// Names that are neither settings rgun knows nor hooks.
    pub unknown: Vec<String>,
    pub hooks: Vec<String>,
    /// Where each setting was assigned in the file (line numbers), for errors.
    pub lines: Vec<(String, u64)>,
}

/// Longest a configuration file may take to evaluate; then its child is killed and
/// the file counts as failed (at start-up: exit 1; on a reload: the reload fails).
pub const EVALUATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until a descriptor is readable or a deadline passes (false: the deadline).
/// The master passes one that keeps answering its control socket meanwhile.
pub type WaitReadable<'a> = &'a mut dyn FnMut(RawFd, Instant) -> bool;

/// Runs the file in a forked child with its own interpreter and returns its settings;
/// `Err` names the problem on its first line (a wrong type, a time-out, or where the
/// file's code raised, then the traceback of its frames). `wait` is called while the
/// child evaluates.
pub fn load(location: &str, wait: WaitReadable<'_>) -> Result<FileSettings, String> {
    let path = Path::new(location);
    if !location.starts_with("python:") && !path.exists() {
        return Err("the file does not exist".into());
    }
    if path.is_dir() {
        let inside = path.join("gunicorn.conf.py");
        let hint = if inside.is_file() {
            format!(" (did you mean {}?)", inside.display())
        } else {
            String::new()
        };
        return Err(format!(
            "is a directory; -c takes a Python file or python:MODULE{hint}"
        ));
    }
    let (read, write) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    read.set_nonblocking(true).map_err(|e| e.to_string())?;
    // SAFETY: called before any thread exists in this process; the child only
    // evaluates the file, writes to the pipe and exits.
    // The child keeps only its end of the pipe: at a reload the master's listeners,
    // control socket and worker pipes are open, and the file is user code.
    let inherit = crate::python::Inherit::Only(&[write.as_raw_fd()]);
    match unsafe { crate::python::fork_interpreter(inherit) }.map_err(|e| e.to_string())? {
        crate::python::Forked::Child(signals) => {
            signals.release();
            // Already closed by the fork (`Inherit::Only`).
            std::mem::forget(read);
            let reply = evaluate(location);
            let mut write = write;
            let _ = std::io::Write::write_all(&mut write, reply.as_bytes());
            // SAFETY: _exit skips atexit handlers and destructors that belong to the
            // parent's state (the interpreter's included).
            unsafe { libc::_exit(0) };
        }
        crate::python::Forked::Parent(child) => {
            drop(write);
            let text = read_reply(&read, wait);
            if text.is_err() {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = nix::sys::wait::waitpid(child, None);
            parse_reply(&text?)
        }
    }
}

/// Everything the evaluating child writes, until it closes its end, within
/// [`EVALUATION_TIMEOUT`].
fn read_reply(
    read: &std::os::unix::net::UnixStream,
    wait: WaitReadable<'_>,
) -> Result<String, String> {
    let deadline = Instant::now() + EVALUATION_TIMEOUT;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match (&*read).read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !wait(read.as_raw_fd(), deadline) {
                    return Err(format!(
                        "the configuration file did not finish within {} s (is it waiting for something?); its evaluation was stopped",
                        EVALUATION_TIMEOUT.as_secs()
                    ));
                }
            }
            Err(e) => {
                return Err(format!(
                    "cannot read the configuration file's settings: {e}"
                ))
            }
        }
    }
}

/// [`WaitReadable`] with nothing else to do: poll(2) on the descriptor alone.
pub fn poll_readable(fd: RawFd, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return true; // let the read report the error
        }
    }
}

/// In the child: `OK<json>` or `ER<message>`.
fn evaluate(location: &str) -> String {
    Python::with_gil(|py| {
        let run = || -> PyResult<String> {
            let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
            py.import("sys")?
                .getattr("path")?
                .call_method1("insert", (0, cwd.to_string_lossy().as_ref()))?;
            let module = crate::python::embedded_module(py, LOADER, "rgun_config_loader")?;
            let table: serde_json::Map<String, serde_json::Value> = SETTINGS
                .iter()
                .map(|(n, f, k)| ((*n).to_owned(), serde_json::json!([f, k])))
                .chain(NOT_PROVIDED.iter().map(|(n, default)| {
                    (
                        (*n).to_owned(),
                        serde_json::json!([default, "not_provided"]),
                    )
                }))
                .collect();
            let hooks: Vec<&str> = HOOKS.iter().map(|(name, _)| *name).collect();
            module
                .getattr("to_args")?
                .call1((
                    location,
                    serde_json::Value::Object(table).to_string(),
                    serde_json::json!(hooks).to_string(),
                ))?
                .extract()
        };
        match run() {
            Ok(json) => format!("OK{json}"),
            Err(e) => {
                let value = e.value(py);
                let kind = value
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                let message = value.str().map(|s| s.to_string()).unwrap_or_default();
                if kind == "FileRaised" {
                    // The loader's account of the file's own error: where, then the
                    // traceback.
                    format!("ER{message}")
                } else {
                    format!("ER{kind}: {message}")
                }
            }
        }
    })
}

fn parse_reply(text: &str) -> Result<FileSettings, String> {
    if let Some(msg) = text.strip_prefix("ER") {
        return Err(msg.trim_end().to_owned());
    }
    let json = text
        .strip_prefix("OK")
        .ok_or("the configuration file could not be evaluated")?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let strings = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let lines = v["lines"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, line)| Some((name.clone(), line.as_u64()?)))
        .collect();
    Ok(FileSettings {
        args: strings("args"),
        unknown: strings("unknown"),
        hooks: strings("hooks"),
        lines,
    })
}
