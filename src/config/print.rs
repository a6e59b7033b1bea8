//! The effective settings under Gunicorn's names: as JSON (`settings_json`, for
//! `rgunctl config` and the hooks), and as `--print-config` prints them, the way
//! Gunicorn prints its own: one `name = value` line per setting or hook, values in
//! Python's spelling.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::values::MaxWorkerRss;
use super::{file, Config};

impl Config {
    /// The effective settings under Gunicorn's names, for `rgunctl config`.
    pub fn settings_json(&self, workers: usize) -> Value {
        let mut all = self.core_settings(workers);
        all.extend(self.compat_settings());
        all.extend(self.section_settings());
        Value::Object(all)
    }

    /// Gunicorn's own settings that rgun honours (beside the sections' in
    /// `section_settings`).
    fn core_settings(&self, workers: usize) -> Map<String, Value> {
        let mut core = self.server_settings(workers);
        core.extend(self.process_settings());
        core.insert("root_path".into(), self.root_path.clone().into());
        core.insert("asgi_lifespan".into(), self.asgi_lifespan.clone().into());
        core.insert("asgi_loop".into(), self.asgi_loop.clone().into());
        core.insert(
            "websocket_max_message_size".into(),
            self.websocket_max_message_size.into(),
        );
        core.insert(
            "asgi_disconnect_grace_period".into(),
            self.asgi_disconnect_grace_period.into(),
        );
        core
    }

    /// The application, the sockets, the workers, requests and logging.
    fn server_settings(&self, workers: usize) -> Map<String, Value> {
        object(json!({
            "wsgi_app": self.app,
            "config": self.config,
            "bind": self.binds().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "workers": workers,
            "worker_class": self.worker_class,
            "threads": self.threads,
            "timeout": self.timeout,
            "graceful_timeout": self.graceful_timeout,
            "shutdown_delay": self.shutdown_delay,
            "keepalive": self.keepalive,
            "limit_request_line": self.limit_request_line,
            "limit_request_fields": self.limit_request_fields,
            "limit_request_field_size": self.limit_request_field_size,
            "accesslog": self.access_logfile,
            "access_log_format": self.access_log_format,
            "errorlog": self.error_logfile,
            "loglevel": self.loglevel,
            "forwarded_allow_ips": self.forwarded_allow_ips.to_text(),
            "secure_scheme_headers": self.secure_scheme_headers().into_iter().collect::<BTreeMap<_, _>>(),
            "forwarder_headers": self.forwarder_headers.to_text(),
            "worker_connections": self.worker_connections,
            "max_requests": self.max_requests,
            "max_requests_jitter": self.max_requests_jitter,
            "max_worker_rss": match self.max_worker_rss {
                MaxWorkerRss::Mib(n) => json!(n),
                MaxWorkerRss::Auto => json!("auto"),
            },
            "backlog": self.backlog,
            "proxy_protocol": self.proxy_protocol,
            "proxy_allow_ips": self.proxy_allow_from.to_text(),
            "reuse_port": self.reuse_port,
        }))
    }

    /// The master process: its environment, identity, files and control socket.
    fn process_settings(&self) -> Map<String, Value> {
        object(json!({
            "chdir": self.chdir,
            "pythonpath": self.pythonpath,
            "raw_env": self.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "control_socket": self.control_socket_path(),
            "control_socket_mode": format!("{:04o}", self.control_socket_mode),
            "control_socket_disable": self.no_control_socket,
            "pidfile": self.pidfile,
            "daemon": self.daemon,
            "user": self.user,
            "group": self.group,
            "initgroups": self.initgroups,
            "umask": format!("{:04o}", self.umask),
            "preload_app": self.preload,
            "reload": self.reload,
            "default_proc_name": self.default_proc_name.as_deref().unwrap_or(&self.app),
            "proc_name": self.proc_name_setting,
        }))
    }

    /// Settings accepted for compatibility, shown as they were given.
    fn compat_settings(&self) -> Map<String, Value> {
        object(json!({
            "check_config": self.check_config,
            "print_config": self.print_config,
            "worker_tmp_dir": self.worker_tmp_dir,
            "capture_output": self.capture_output,
            "enable_stdio_inheritance": self.enable_stdio_inheritance,
            // Gunicorn's default; the only value rgun takes.
            "header_map": self.header_map.as_deref().unwrap_or("drop"),
            // Gunicorn's default is None (use it); --no-sendfile is False.
            "sendfile": self.no_sendfile.then_some(false),
            "tmp_upload_dir": self.tmp_upload_dir,
        }))
    }

    /// The flattened sections' settings, each section naming its own.
    fn section_settings(&self) -> Map<String, Value> {
        let mut all = object(self.tls.settings_json());
        all.extend(self.observability.settings_json());
        all.extend(self.http2.settings_json());
        all.extend(self.probe.settings_json());
        all.extend(self.parser.settings_json());
        all.extend(self.protocol.settings_json());
        all.extend(self.reloader.settings_json());
        all.extend(self.scaling.settings_json());
        all.extend(self.dirty.settings_json());
        all
    }

    /// `--print-config`: every setting rgun knows, hooks included, sorted, one
    /// `name = value` line each with Python's spelling of the value, as Gunicorn prints
    /// its configuration (a hook shows as `<qualified_name()>`).
    pub fn print_config_text(&self, workers: usize) -> String {
        let mut lines: BTreeMap<String, String> = BTreeMap::new();
        if let serde_json::Value::Object(settings) = self.settings_json(workers) {
            for (name, value) in settings {
                lines.insert(name, python_str(&value));
            }
        }
        for (hook, default) in file::HOOKS {
            let shown = if self.hooks.iter().any(|h| h == hook) {
                format!("<{hook}()>")
            } else {
                format!("<{default}()>")
            };
            lines.insert((*hook).to_owned(), shown);
        }
        let width = lines.keys().map(String::len).max().unwrap_or(0);
        let mut text = String::new();
        for (name, value) in lines {
            text.push_str(&format!("{name:<width$} = {value}\n"));
        }
        text
    }
}

/// Python's `str()` of a setting's value: strings bare, `None`, `True`/`False`, and
/// lists and dicts with their items in `repr()` form.
fn python_str(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => python_repr(other),
    }
}

fn python_repr(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            let mut out = String::from(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
            out
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!(
                    "{}: {}",
                    python_repr(&Value::String(k.clone())),
                    python_repr(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A `json!` object's map (an empty one for anything else).
fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
