//! Gunicorn configuration files (`-c gunicorn.conf.py`, `-c python:module`, or
//! `./gunicorn.conf.py` when present).
//!
//! The file is Python, so the embedded interpreter runs it — in a short-lived child
//! process, so the master itself stays Python-free and safe to fork. The child turns
//! the file's settings into command-line arguments (`file_loader.py`), which the
//! caller layers below the environment and the real command line.

use std::io::Read;
use std::path::Path;

use pyo3::prelude::*;

const LOADER: &str = include_str!("file_loader.py");

/// Gunicorn setting name → (rgun flag, value kind). The one table both the loader and
/// `rgunctl config` agree on.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    ("wsgi_app", "--wsgi-app", "str"),
    ("bind", "--bind", "list"),
    ("workers", "--workers", "int"),
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
    ("secure_scheme_headers", "--secure-scheme-header", "dict"),
    ("worker_connections", "--worker-connections", "int"),
    ("max_requests", "--max-requests", "int"),
    ("max_requests_jitter", "--max-requests-jitter", "int"),
    ("max_worker_rss", "--max-worker-rss", "int"),
    ("backlog", "--backlog", "int"),
    ("proxy_protocol", "--proxy-protocol", "proxy"),
    ("proxy_allow_ips", "--proxy-allow-from", "csv"),
    ("reuse_port", "--reuse-port", "bool"),
    ("pidfile", "--pid", "str"),
    ("preload_app", "--preload", "bool"),
    ("reload", "--reload", "bool"),
    ("daemon", "--daemon", "bool"),
    ("user", "--user", "str"),
    ("group", "--group", "str"),
    ("initgroups", "--initgroups", "bool"),
    ("umask", "--umask", "octal"),
    ("control_socket", "--control-socket", "str"),
    ("control_socket_mode", "--control-socket-mode", "octal"),
];

/// What a configuration file amounts to.
#[derive(Debug, Default)]
pub struct FileSettings {
    pub args: Vec<String>,
    /// Names that are neither settings rgun knows nor hooks.
    pub unknown: Vec<String>,
    pub hooks: Vec<String>,
}

/// Runs the file in a forked child with its own interpreter and returns its settings;
/// `Err` is a one-line reason (a Python error, a wrong type) naming the problem.
pub fn load(location: &str) -> Result<FileSettings, String> {
    if !location.starts_with("python:") && !Path::new(location).exists() {
        return Err(format!("config file {location} does not exist"));
    }
    let (mut read, write) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    // SAFETY: called before any thread or interpreter exists in this process; the
    // child only evaluates the file, writes to the pipe and exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| e.to_string())? {
        nix::unistd::ForkResult::Child => {
            drop(read);
            let reply = evaluate(location);
            let mut write = write;
            let _ = std::io::Write::write_all(&mut write, reply.as_bytes());
            // SAFETY: _exit skips atexit handlers and destructors that belong to the
            // parent's state (the interpreter is the child's alone).
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut text = String::new();
            let _ = read.read_to_string(&mut text);
            let _ = nix::sys::wait::waitpid(child, None);
            parse_reply(&text)
        }
    }
}

/// In the child: `OK<json>` or `ER<message>`.
fn evaluate(location: &str) -> String {
    if let Err(e) = crate::python::initialize() {
        return format!("ER{e}");
    }
    Python::with_gil(|py| {
        let run = || -> PyResult<String> {
            let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
            py.import("sys")?
                .getattr("path")?
                .call_method1("insert", (0, cwd.to_string_lossy().as_ref()))?;
            let module = PyModule::from_code(
                py,
                &std::ffi::CString::new(LOADER).expect("no NUL"),
                c"rgun_config_loader.py",
                c"rgun_config_loader",
            )?;
            let table: serde_json::Map<String, serde_json::Value> = SETTINGS
                .iter()
                .map(|(n, f, k)| ((*n).to_owned(), serde_json::json!([f, k])))
                .collect();
            module
                .getattr("to_args")?
                .call1((location, serde_json::Value::Object(table).to_string()))?
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
                format!("ER{kind}: {message}")
            }
        }
    })
}

fn parse_reply(text: &str) -> Result<FileSettings, String> {
    if let Some(msg) = text.strip_prefix("ER") {
        return Err(msg.lines().next().unwrap_or("error").to_owned());
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
    Ok(FileSettings {
        args: strings("args"),
        unknown: strings("unknown"),
        hooks: strings("hooks"),
    })
}
