//! Gunicorn's `logconfig_dict` / `--log-config-json`: the part of Python's dictConfig
//! schema that configures the `gunicorn.error` and `gunicorn.access` loggers — one
//! handler each (`StreamHandler` to stderr or stdout, `FileHandler` or
//! `WatchedFileHandler` to a file, `NullHandler`), its formatter's `format` and
//! `datefmt`, the error logger's level — is turned into rgun's own settings
//! (`LogPlan::apply`). Anything else is refused with one line naming it. Parsing
//! only: the rendering is `log`'s.

use serde_json::{Map, Value};

/// A Python logging format, compiled: `%(asctime)s [%(process)d] %(message)s`.
#[derive(Debug, Clone, PartialEq)]
pub struct LineFormat {
    pub pieces: Vec<Piece>,
    /// strftime format for `asctime` (Python's default: `%Y-%m-%d %H:%M:%S,mmm`).
    pub datefmt: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Literal(String),
    /// A LogRecord attribute, with its `-`/width (`%(levelname)-8s`).
    Field {
        name: Field,
        left: bool,
        width: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Asctime,
    Created,
    Levelname,
    Levelno,
    Message,
    Name,
    Process,
}

/// Where one logger writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    Stderr,
    Stdout,
    File(String),
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
    /// The destination as `--error-logfile`/`--access-logfile` spell it (`None`: off).
    pub fn path(to: &Destination) -> Option<String> {
        match to {
            Destination::Stderr => Some("-".into()),
            Destination::Stdout => Some("/dev/stdout".into()),
            Destination::File(p) => Some(p.clone()),
            Destination::Null => None,
        }
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
        "logging.handlers.SysLogHandler" => {
            return Err(format!("{what}: SysLogHandler is not supported here: use --log-syslog with --log-syslog-to (Gunicorn's syslog settings)"))
        }
        other => return Err(format!(
            "{what}: class {other:?} is not supported (logging.StreamHandler, logging.FileHandler, logging.handlers.WatchedFileHandler, logging.NullHandler)"
        )),
    };
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

fn only(obj: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), String> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("{what}: {k:?} is not supported")),
        None => Ok(()),
    }
}

/// Compiles `%(name)[-][width]s|d|f` fields and literal text (`%%` is a `%`).
pub fn compile(fmt: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = fmt;
    while let Some(i) = rest.find('%') {
        literal.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("%%") {
            literal.push('%');
            rest = after;
            continue;
        }
        let Some((name, after)) = rest.strip_prefix("%(").and_then(|r| r.split_once(')')) else {
            return Err(format!("{rest:?}: only %(name)s fields are supported"));
        };
        let spec_len = after
            .find(|c: char| c.is_ascii_alphabetic())
            .ok_or_else(|| format!("%({name}) has no conversion"))?;
        let (spec, conv) = (&after[..spec_len], &after[spec_len..spec_len + 1]);
        if !["s", "d", "f", "r"].contains(&conv) {
            return Err(format!(
                "%({name}){spec}{conv}: conversion {conv:?} is not supported"
            ));
        }
        let left = spec.starts_with('-');
        let width = spec
            .trim_start_matches('-')
            .split('.')
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or(0);
        let field = match name {
            "asctime" => Field::Asctime,
            "created" => Field::Created,
            "levelname" => Field::Levelname,
            "levelno" => Field::Levelno,
            "message" => Field::Message,
            "name" => Field::Name,
            "process" => Field::Process,
            other => return Err(format!(
                "%({other}) is not supported (asctime, created, levelname, levelno, message, name, process)"
            )),
        };
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Field {
            name: field,
            left,
            width,
        });
        rest = &after[spec_len + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
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
        if let Some(level) = plan.level {
            self.loglevel = level;
        }
        if let Some(route) = plan.error {
            // A null handler: the error log still exists (stderr), it says nothing more
            // than errors.
            match LogPlan::path(&route.to) {
                Some(path) => self.error_logfile = path,
                None => self.loglevel = "critical".into(),
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
    fn what_is_not_supported_is_named() {
        let err = |v: Value| parse(&v).unwrap_err();
        assert!(err(json!({"loggers": {"myapp": {}}})).contains("\"myapp\""));
        assert!(err(json!({"filters": {}})).contains("\"filters\""));
        let h = |class: &str| {
            json!({"loggers": {"gunicorn.error": {"handlers": ["h"]}},
                                    "handlers": {"h": {"class": class}}})
        };
        assert!(err(h("logging.handlers.RotatingFileHandler")).contains("RotatingFileHandler"));
        assert!(err(h("logging.handlers.SysLogHandler")).contains("--log-syslog"));
        assert!(compile("%(funcName)s").unwrap_err().contains("funcName"));
        assert!(compile("%s").is_err());
    }
}
