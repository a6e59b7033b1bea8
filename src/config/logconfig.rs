//! Gunicorn's `logconfig_dict` / `--log-config-json`: the part of Python's dictConfig
//! schema that configures the `gunicorn.error` and `gunicorn.access` loggers — one
//! handler each (`StreamHandler` to stderr or stdout, `FileHandler` or
//! `WatchedFileHandler` to a file, `SysLogHandler` to syslog, `NullHandler`), its
//! formatter's `format` and
//! `datefmt`, the error logger's level — is turned into rgun's own settings
//! (`LogPlan::apply`). Anything else is refused with one line naming it. Parsing
//! only: the rendering is `log`'s.

use serde_json::{Map, Value};

use super::logformat::{compile, LineFormat};
use super::syslog_target::{facility_code, SyslogAddress};

/// Where one logger writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    Stderr,
    Stdout,
    File(String),
    /// `SysLogHandler`: each record, formatted, framed as Python frames it
    /// (`<PRI>record` and a NUL); `facility` is a name `facility_code` knows.
    Syslog {
        to: SyslogAddress,
        facility: String,
    },
    Null,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub to: Destination,
    pub format: Option<LineFormat>,
}

/// What a dictConfig asks of rgun's two logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogPlan {
    pub error: Option<Route>,
    pub access: Option<Route>,
    /// `gunicorn.error`'s level, lower-cased.
    pub level: Option<String>,
}

impl LogPlan {
    /// The destination as `--error-logfile`/`--access-logfile` spell it (`None`: off;
    /// syslog is off for the stream, the records go to syslog instead).
    pub fn path(to: &Destination) -> Option<String> {
        match to {
            Destination::Stderr => Some("-".into()),
            Destination::Stdout => Some("/dev/stdout".into()),
            Destination::File(p) => Some(p.clone()),
            Destination::Syslog { .. } | Destination::Null => None,
        }
    }

    /// The syslog server and facility the plan's `SysLogHandler`s name (one per
    /// process: both loggers must agree, checked by `parse`).
    pub fn syslog(&self) -> Option<(&SyslogAddress, &str)> {
        [&self.error, &self.access]
            .into_iter()
            .flatten()
            .find_map(|r| match &r.to {
                Destination::Syslog { to, facility } => Some((to, facility.as_str())),
                _ => None,
            })
    }

    /// Whether `route`'s records go to syslog.
    pub fn to_syslog(route: &Option<Route>) -> bool {
        matches!(
            route,
            Some(Route {
                to: Destination::Syslog { .. },
                ..
            })
        )
    }
}

/// clap value parser for `--log-config-json FILE`.
pub fn parse_json_file(path: &str) -> Result<LogPlan, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))?;
    parse(&value).map_err(|e| format!("{path}: {e}"))
}

/// clap value parser for the configuration file's `logconfig_dict` (as JSON).
pub fn parse_json_text(text: &str) -> Result<LogPlan, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    parse(&value).map_err(|e| format!("logconfig_dict: {e}"))
}

/// `--log-config FILE` (fileConfig's ini format) is not supported.
pub fn refuse_ini(_: &str) -> Result<String, String> {
    Err("logconfig (fileConfig's ini files) is not supported: write the same as logconfig_dict or --log-config-json (dictConfig's schema)".into())
}

fn parse(v: &Value) -> Result<LogPlan, String> {
    let root = v
        .as_object()
        .ok_or("a logging configuration is a JSON object")?;
    only(
        root,
        &[
            "version",
            "disable_existing_loggers",
            "incremental",
            "loggers",
            "handlers",
            "formatters",
            "root",
        ],
        "the configuration",
    )?;
    if root.get("version").and_then(Value::as_i64).unwrap_or(1) != 1 {
        return Err("\"version\" must be 1".into());
    }
    let empty = Map::new();
    let section = |key: &str| root.get(key).and_then(Value::as_object).unwrap_or(&empty);
    let (handlers, formatters) = (section("handlers"), section("formatters"));
    let mut plan = LogPlan::default();
    for (name, logger) in section("loggers") {
        let logger = logger
            .as_object()
            .ok_or_else(|| format!("logger {name:?} must be an object"))?;
        match name.as_str() {
            "gunicorn.error" | "gunicorn.access" => {}
            other => return Err(format!(
                "logger {other:?} is not supported: rgun configures gunicorn.error and gunicorn.access (the application configures its own loggers)"
            )),
        }
        only(
            logger,
            &["level", "handlers", "propagate", "qualname"],
            &format!("logger {name:?}"),
        )?;
        let names: Vec<&str> = logger
            .get("handlers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let route = match names.as_slice() {
            [] => None,
            [one] => Some(handler(one, handlers, formatters)?),
            _ => {
                return Err(format!(
                    "logger {name:?}: rgun writes each log to one handler, not {}",
                    names.len()
                ))
            }
        };
        if name == "gunicorn.error" {
            plan.error = route;
            if let Some(level) = logger.get("level") {
                let level = level
                    .as_str()
                    .map(str::to_ascii_lowercase)
                    .filter(|l| {
                        ["debug", "info", "warning", "error", "critical"].contains(&l.as_str())
                    })
                    .ok_or_else(|| format!("logger \"gunicorn.error\": unknown level {level}"))?;
                plan.level = Some(level);
            }
        } else {
            plan.access = route;
        }
    }
    if let (Some(a), Some(b)) = (&plan.error, &plan.access) {
        if let (Destination::Syslog { .. }, Destination::Syslog { .. }) = (&a.to, &b.to) {
            if a.to != b.to {
                return Err("the two loggers' SysLogHandlers name different addresses or facilities: rgun sends to one syslog server".into());
            }
        }
    }
    Ok(plan)
}

fn handler(
    name: &str,
    handlers: &Map<String, Value>,
    formatters: &Map<String, Value>,
) -> Result<Route, String> {
    let h = handlers
        .get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| format!("handler {name:?} is not defined"))?;
    let what = format!("handler {name:?}");
    only(
        h,
        &[
            "class",
            "formatter",
            "stream",
            "filename",
            "mode",
            "encoding",
            "level",
            "address",
            "facility",
            "socktype",
        ],
        &what,
    )?;
    let text = |k: &str| h.get(k).and_then(Value::as_str);
    if text("mode").is_some_and(|m| m != "a") {
        return Err(format!("{what}: only mode \"a\" (append) is supported"));
    }
    if text("encoding").is_some_and(|e| !e.eq_ignore_ascii_case("utf-8")) {
        return Err(format!("{what}: only utf-8 is supported"));
    }
    let to = match text("class").unwrap_or("") {
        "logging.StreamHandler" => match text("stream").unwrap_or("ext://sys.stderr") {
            "ext://sys.stderr" => Destination::Stderr,
            "ext://sys.stdout" => Destination::Stdout,
            other => return Err(format!("{what}: stream {other:?} is not supported (ext://sys.stderr or ext://sys.stdout)")),
        },
        "logging.FileHandler" | "logging.handlers.WatchedFileHandler" => Destination::File(
            text("filename")
                .ok_or_else(|| format!("{what}: needs \"filename\""))?
                .to_owned(),
        ),
        "logging.NullHandler" => Destination::Null,
        "logging.handlers.SysLogHandler" => syslog_handler(h).map_err(|e| format!("{what}: {e}"))?,
        other => return Err(format!(
            "{what}: class {other:?} is not supported (logging.StreamHandler, logging.FileHandler, logging.handlers.WatchedFileHandler, logging.handlers.SysLogHandler, logging.NullHandler)"
        )),
    };
    if !matches!(to, Destination::Syslog { .. }) {
        if let Some(k) = ["address", "facility", "socktype"]
            .into_iter()
            .find(|k| h.contains_key(*k))
        {
            return Err(format!("{what}: {k:?} is for a SysLogHandler"));
        }
    }
    let format = match text("formatter") {
        None => None,
        Some(f) => {
            let spec = formatters
                .get(f)
                .and_then(Value::as_object)
                .ok_or_else(|| format!("formatter {f:?} is not defined"))?;
            only(
                spec,
                &["format", "datefmt", "class", "style"],
                &format!("formatter {f:?}"),
            )?;
            if let Some(class) = spec.get("class").and_then(Value::as_str) {
                if class != "logging.Formatter" {
                    return Err(format!("formatter {f:?}: class {class:?} is not supported"));
                }
            }
            if spec
                .get("style")
                .and_then(Value::as_str)
                .is_some_and(|s| s != "%")
            {
                return Err(format!(
                    "formatter {f:?}: only %-style formats are supported"
                ));
            }
            let fmt = spec
                .get("format")
                .and_then(Value::as_str)
                .unwrap_or("%(message)s");
            Some(LineFormat {
                pieces: compile(fmt).map_err(|e| format!("formatter {f:?}: {e}"))?,
                datefmt: spec
                    .get("datefmt")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            })
        }
    };
    Ok(Route { to, format })
}

/// `SysLogHandler(address, facility, socktype)` as dictConfig passes them: `address`
/// a `[host, port]` pair (UDP, or TCP with `SOCK_STREAM`) or a Unix socket path
/// (datagram, else stream, as Python tries them), default `["localhost", 514]`;
/// `facility` a name, a number or `ext://logging.handlers.SysLogHandler.LOG_*`;
/// `socktype` `ext://socket.SOCK_DGRAM`/`SOCK_STREAM` or its number.
fn syslog_handler(h: &Map<String, Value>) -> Result<Destination, String> {
    let stream = match h.get("socktype") {
        None | Some(Value::Null) => false,
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some("ext://socket.SOCK_STREAM"), _) | (_, Some(1)) => true,
            (Some("ext://socket.SOCK_DGRAM"), _) | (_, Some(2)) => false,
            _ => return Err(format!("socktype {v} is not supported (ext://socket.SOCK_DGRAM or ext://socket.SOCK_STREAM)")),
        },
    };
    let to = match h.get("address") {
        None => SyslogAddress::Udp("localhost:514".into()),
        Some(Value::String(path)) if !path.is_empty() => SyslogAddress::Unix {
            path: path.into(),
            stream,
        },
        Some(Value::Array(pair)) => match pair.as_slice() {
            [Value::String(host), Value::Number(port)]
                if port.as_u64().is_some_and(|p| p <= 65535) && !host.is_empty() =>
            {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                let addr = format!("{host}:{port}");
                if stream {
                    SyslogAddress::Tcp(addr)
                } else {
                    SyslogAddress::Udp(addr)
                }
            }
            _ => {
                return Err(format!(
                    "address {} is not [host, port]",
                    Value::Array(pair.clone())
                ))
            }
        },
        Some(other) => {
            return Err(format!(
                "address {other} is not [host, port] or a socket path"
            ))
        }
    };
    let facility = match h.get("facility") {
        None | Some(Value::Null) => "user".to_owned(),
        Some(v) => {
            let name = match (v.as_str(), v.as_u64()) {
                (Some(s), _) => s
                    .strip_prefix("ext://logging.handlers.SysLogHandler.LOG_")
                    .unwrap_or(s)
                    .to_ascii_lowercase(),
                (None, Some(n)) => facility_name(n).unwrap_or_default().to_owned(),
                _ => String::new(),
            };
            if facility_code(&name).is_none() {
                return Err(format!("unknown syslog facility {v}"));
            }
            name
        }
    };
    Ok(Destination::Syslog { to, facility })
}

/// The name of a facility number (`SysLogHandler.LOG_LOCAL3` is 19).
fn facility_name(code: u64) -> Option<&'static str> {
    const NAMES: [&str; 20] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
        "authpriv", "ftp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
        "local7",
    ];
    NAMES
        .into_iter()
        .find(|n| facility_code(n).map(u64::from) == Some(code))
}

fn only(obj: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), String> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("{what}: {k:?} is not supported")),
        None => Ok(()),
    }
}

/// Which records a logging configuration's `SysLogHandler`s take: each sent as
/// Python's handler sends it (`<PRI>`, the formatted record, a NUL), instead of
/// `--log-syslog`'s Gunicorn framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyslogRecords {
    pub error: bool,
    pub access: bool,
}

impl super::Config {
    /// A logging configuration (`logconfig_dict` wins over `--log-config-json`, as in
    /// Gunicorn) overrides the log destinations, level and formats it names.
    pub fn apply_log_plan(&mut self) {
        let obs = &mut self.observability;
        let Some(plan) = obs
            .log_config_dict
            .clone()
            .or_else(|| obs.log_config_json.clone())
        else {
            return;
        };
        if let Some(level) = &plan.level {
            self.loglevel = level.clone();
        }
        if let Some((to, facility)) = plan.syslog() {
            obs.log_syslog = true;
            obs.log_syslog_to = to.clone();
            obs.log_syslog_facility = facility.to_owned();
            obs.syslog_records = Some(SyslogRecords {
                error: LogPlan::to_syslog(&plan.error),
                access: LogPlan::to_syslog(&plan.access),
            });
        }
        if let Some(route) = plan.error {
            match (&route.to, LogPlan::path(&route.to)) {
                (_, Some(path)) => self.error_logfile = path,
                // The records go to syslog instead of a stream.
                (Destination::Syslog { .. }, None) => self.error_logfile = "/dev/null".into(),
                // A null handler: the error log still exists (stderr), it says nothing
                // more than errors.
                (_, None) => self.loglevel = "critical".into(),
            }
            obs.error_log_format = route.format;
        }
        if let Some(route) = plan.access {
            self.access_logfile = LogPlan::path(&route.to);
            obs.access_log_wrap = route.format;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::logformat::{Field, Piece};
    use serde_json::json;

    #[test]
    fn a_gunicorn_style_dict_becomes_a_plan() {
        let plan = parse(&json!({
            "version": 1,
            "disable_existing_loggers": false,
            "root": {"level": "INFO", "handlers": []},
            "loggers": {
                "gunicorn.error": {"level": "DEBUG", "handlers": ["err"], "propagate": true, "qualname": "gunicorn.error"},
                "gunicorn.access": {"handlers": ["acc"]}
            },
            "handlers": {
                "err": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"},
                "acc": {"class": "logging.FileHandler", "filename": "/tmp/a.log"}
            },
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)-8s %(message)s", "datefmt": "%H:%M"}}
        }))
        .unwrap();
        assert_eq!(plan.level.as_deref(), Some("debug"));
        let err = plan.error.unwrap();
        assert_eq!(err.to, Destination::Stdout);
        let f = err.format.unwrap();
        assert_eq!(f.datefmt.as_deref(), Some("%H:%M"));
        assert_eq!(
            f.pieces[2],
            Piece::Field {
                name: Field::Levelname,
                left: true,
                width: 8
            }
        );
        assert_eq!(
            plan.access.unwrap().to,
            Destination::File("/tmp/a.log".into())
        );
    }

    #[test]
    fn syslog_handlers_name_a_server_and_a_facility() {
        let dest = |h: Value| {
            let v = json!({"loggers": {"gunicorn.access": {"handlers": ["h"]}},
                           "handlers": {"h": h}});
            parse(&v).map(|p| p.access.unwrap().to)
        };
        let syslog = |to: SyslogAddress, facility: &str| Destination::Syslog {
            to,
            facility: facility.into(),
        };
        let class = "logging.handlers.SysLogHandler";
        assert_eq!(
            dest(json!({"class": class})),
            Ok(syslog(SyslogAddress::Udp("localhost:514".into()), "user"))
        );
        assert_eq!(
            dest(
                json!({"class": class, "address": ["::1", 601], "socktype": "ext://socket.SOCK_STREAM", "facility": 19})
            ),
            Ok(syslog(SyslogAddress::Tcp("[::1]:601".into()), "local3"))
        );
        assert_eq!(
            dest(
                json!({"class": class, "address": "/dev/log", "facility": "ext://logging.handlers.SysLogHandler.LOG_DAEMON"})
            ),
            Ok(syslog(
                SyslogAddress::Unix {
                    path: "/dev/log".into(),
                    stream: false
                },
                "daemon"
            ))
        );
        assert!(dest(json!({"class": class, "facility": "local9"}))
            .unwrap_err()
            .contains("local9"));
        assert!(dest(json!({"class": class, "address": ["h"]}))
            .unwrap_err()
            .contains("[host, port]"));
        let two = json!({"loggers": {"gunicorn.access": {"handlers": ["a"]}, "gunicorn.error": {"handlers": ["e"]}},
            "handlers": {"a": {"class": class}, "e": {"class": class, "facility": "local0"}}});
        assert!(parse(&two).unwrap_err().contains("one syslog server"));
    }

    #[test]
    fn what_is_not_supported_is_named() {
        let err = |v: Value| parse(&v).unwrap_err();
        assert!(err(json!({"loggers": {"myapp": {}}})).contains("\"myapp\""));
        assert!(err(json!({"filters": {}})).contains("\"filters\""));
        let h = |class: &str| {
            json!({"loggers": {"gunicorn.error": {"handlers": ["h"]}},
                                    "handlers": {"h": {"class": class}}})
        };
        assert!(err(h("logging.handlers.RotatingFileHandler")).contains("RotatingFileHandler"));
        let null_with_facility = json!({"loggers": {"gunicorn.error": {"handlers": ["h"]}},
            "handlers": {"h": {"class": "logging.NullHandler", "facility": "user"}}});
        assert!(err(null_with_facility).contains("\"facility\" is for a SysLogHandler"));
        assert!(compile("%(funcName)s").unwrap_err().contains("funcName"));
        assert!(compile("%s").is_err());
    }
}
