//! Settings for watching a running server: Prometheus's `--metrics-bind` and statsd as
//! Gunicorn sends it (`--statsd-host`, `--statsd-prefix`, `--dogstatsd-tags`,
//! `--enable-backlog-metric`), the JSON access log, and Gunicorn's syslog flags.
//! Parsing only.

use std::path::PathBuf;

use clap::Args;

use super::bind::{self, BindAddress};
use super::logconfig::{self, LogPlan, SyslogRecords};
use super::logformat::LineFormat;
pub use super::syslog_target::{facility_code, SyslogAddress};

#[derive(Debug, Clone, Default, Args)]
pub struct Observability {
    /// The operations listener: the master serves Prometheus metrics at
    /// http://ADDRESS/metrics and the probes /livez and /readyz: HOST:PORT,
    /// [IPV6]:PORT, unix:PATH or fd://N.
    #[arg(long = "metrics-bind", value_name = "ADDRESS", value_parser = bind::parse)]
    pub metrics_bind: Option<BindAddress>,

    /// Send statsd metrics (UDP, best effort) to HOST[:PORT] (port 8125 when omitted)
    /// or unix:PATH (a datagram socket), with Gunicorn's metric names.
    #[arg(long = "statsd-host", value_name = "STATSD_ADDR", value_parser = parse_statsd_host)]
    pub statsd_host: Option<StatsdHost>,

    /// Prefix of every statsd metric name (a trailing `.` is added if missing).
    #[arg(
        long = "statsd-prefix",
        value_name = "STATSD_PREFIX",
        default_value = ""
    )]
    pub statsd_prefix: String,

    /// Datadog (dogstatsd) tags appended to every statsd metric: `tag1:value1,tag2`.
    #[arg(
        long = "dogstatsd-tags",
        value_name = "DOGSTATSD_TAGS",
        default_value = ""
    )]
    pub dogstatsd_tags: String,

    /// Write the access log as JSON lines: one object per request, keyed by Gunicorn's
    /// access-log atoms (`h`, `t`, `r`, `s`, `b`, `a`, `D`, ...; numbers unquoted),
    /// instead of --access-logformat.
    #[arg(long = "access-log-json")]
    pub access_log_json: bool,

    /// A logging configuration in dictConfig's JSON schema for the gunicorn.error and
    /// gunicorn.access loggers (one stream, file, syslog or null handler each, format
    /// strings); what rgun cannot honour is refused, naming it.
    #[arg(long = "log-config-json", value_name = "FILE", value_parser = logconfig::parse_json_file)]
    pub log_config_json: Option<LogPlan>,

    /// The same as a JSON string: the configuration file's `logconfig_dict` (wins over
    /// --log-config-json).
    #[arg(long = "log-config-dict", value_name = "JSON", value_parser = logconfig::parse_json_text)]
    pub log_config_dict: Option<LogPlan>,

    /// Gunicorn's fileConfig ini file: not supported (use --log-config-json).
    #[arg(long = "log-config", value_name = "FILE", hide = true, value_parser = logconfig::refuse_ini)]
    pub log_config_ini: Option<String>,

    /// The error log's line format, from a logging configuration.
    #[arg(skip)]
    pub error_log_format: Option<LineFormat>,

    /// The access log's line format around the access line, from a logging
    /// configuration.
    #[arg(skip)]
    pub access_log_wrap: Option<LineFormat>,

    /// A logging configuration's `SysLogHandler`s: which records go to syslog, framed
    /// as Python's handler frames them (`None`: `--log-syslog`'s Gunicorn framing).
    #[arg(skip)]
    pub syslog_records: Option<SyslogRecords>,

    /// Also send the error log (and the access log) to syslog, as Gunicorn does.
    #[arg(long = "log-syslog")]
    pub log_syslog: bool,

    /// Where syslog is: udp://HOST[:PORT] (port 514), tcp://HOST[:PORT], or
    /// unix://PATH[#dgram|#stream].
    #[arg(long = "log-syslog-to", value_name = "SYSLOG_ADDR", default_value = "udp://localhost:514", value_parser = parse_syslog_address)]
    pub log_syslog_to: SyslogAddress,

    /// The syslog program name is `gunicorn.PREFIX.error` / `.access` [default: the
    /// process name (-n), with `:` as `.`].
    #[arg(long = "log-syslog-prefix", value_name = "SYSLOG_PREFIX")]
    pub log_syslog_prefix: Option<String>,

    /// Syslog facility name.
    #[arg(long = "log-syslog-facility", value_name = "SYSLOG_FACILITY", default_value = "user", value_parser = parse_facility)]
    pub log_syslog_facility: String,

    /// With --log-syslog, keep the access log out of syslog.
    #[arg(long = "disable-redirect-access-to-syslog")]
    pub disable_redirect_access_to_syslog: bool,

    /// Also send the listen queue's length (summed over the TCP listeners) to statsd
    /// as `gunicorn.backlog`.
    #[arg(long = "enable-backlog-metric")]
    pub enable_backlog_metric: bool,
}

impl Observability {
    /// Whether the error log's records go to syslog.
    pub fn error_to_syslog(&self) -> bool {
        self.log_syslog && self.syslog_records.is_none_or(|r| r.error)
    }

    /// Whether the access log's lines go to syslog (with `--log-syslog`, even without
    /// an access log file, as in Gunicorn).
    pub fn access_to_syslog(&self) -> bool {
        self.log_syslog
            && match self.syslog_records {
                Some(r) => r.access,
                None => !self.disable_redirect_access_to_syslog,
            }
    }

    /// These settings under Gunicorn's names, for `rgunctl config` and `--print-config`.
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let text = |v: &Option<String>| v.clone().map_or(serde_json::Value::Null, Into::into);
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            m.insert(k.into(), v);
        };
        put(
            "metrics_bind",
            text(&self.metrics_bind.as_ref().map(ToString::to_string)),
        );
        put(
            "statsd_host",
            text(&self.statsd_host.as_ref().map(ToString::to_string)),
        );
        put("statsd_prefix", self.statsd_prefix.clone().into());
        put("dogstatsd_tags", self.dogstatsd_tags.clone().into());
        put("enable_backlog_metric", self.enable_backlog_metric.into());
        put("access_log_json", self.access_log_json.into());
        put("syslog", self.log_syslog.into());
        put("syslog_addr", self.log_syslog_to.to_string().into());
        put("syslog_prefix", text(&self.log_syslog_prefix));
        put("syslog_facility", self.log_syslog_facility.clone().into());
        let configured = |p: &Option<LogPlan>| p.as_ref().map(|_| "(applied)".into());
        put("logconfig_dict", text(&configured(&self.log_config_dict)));
        put("logconfig_json", text(&configured(&self.log_config_json)));
        put(
            "disable_redirect_access_to_syslog",
            self.disable_redirect_access_to_syslog.into(),
        );
        m
    }
}

/// Gunicorn's `syslog_addr` spellings.
fn parse_syslog_address(s: &str) -> Result<SyslogAddress, String> {
    if let Some(rest) = s.strip_prefix("unix://") {
        let (path, kind) = rest.split_once('#').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err("unix:// needs a path".into());
        }
        let stream = match kind {
            "" | "dgram" => false,
            "stream" => true,
            other => return Err(format!("{other:?}: the socket type is dgram or stream")),
        };
        return Ok(SyslogAddress::Unix {
            path: path.into(),
            stream,
        });
    }
    let (tcp, rest) = if let Some(r) = s.strip_prefix("udp://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("tcp://") {
        (true, r)
    } else {
        return Err(format!(
            "{s:?} is not a syslog address: udp://HOST:PORT, tcp://HOST:PORT or unix://PATH"
        ));
    };
    let rest = if rest.is_empty() { "localhost" } else { rest };
    let addr = match parse_statsd_host(rest)? {
        StatsdHost::Udp(a) if a.ends_with(":8125") && !rest.ends_with(":8125") => {
            format!("{}:514", &a[..a.len() - 5])
        }
        StatsdHost::Udp(a) => a,
        StatsdHost::Unix(_) => return Err(format!("{s:?} is not a syslog address")),
    };
    Ok(if tcp {
        SyslogAddress::Tcp(addr)
    } else {
        SyslogAddress::Udp(addr)
    })
}

fn parse_facility(s: &str) -> Result<String, String> {
    facility_code(s)
        .map(|_| s.to_ascii_lowercase())
        .ok_or_else(|| format!("unknown syslog facility {s:?} (user, daemon, local0..local7, ...)"))
}

/// Where statsd packets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsdHost {
    /// `host:port`, resolved when the sender starts.
    Udp(String),
    /// A Unix datagram socket.
    Unix(PathBuf),
}

impl std::fmt::Display for StatsdHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatsdHost::Udp(a) => f.write_str(a),
            StatsdHost::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Gunicorn's spellings: `unix:PATH` or `unix://PATH`, `HOST:PORT`, `HOST` (port 8125),
/// `[IPV6]:PORT`.
fn parse_statsd_host(s: &str) -> Result<StatsdHost, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err("unix: needs a path".into());
        }
        return Ok(StatsdHost::Unix(PathBuf::from(path)));
    }
    if s.is_empty() {
        return Err("an empty statsd address".into());
    }
    let has_port = if let Some(rest) = s.strip_prefix('[') {
        let Some((_, after)) = rest.split_once(']') else {
            return Err(format!("{s:?}: an IPv6 address needs its closing ']'"));
        };
        !after.is_empty()
    } else {
        s.matches(':').count() == 1
    };
    let addr = if has_port {
        s.to_owned()
    } else if s.contains(':') && !s.starts_with('[') {
        format!("[{s}]:8125")
    } else {
        format!("{s}:8125")
    };
    let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    port.parse::<u16>()
        .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
    Ok(StatsdHost::Udp(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statsd_addresses_as_gunicorn_spells_them() {
        let udp = |s: &str| StatsdHost::Udp(s.into());
        assert_eq!(
            parse_statsd_host("localhost:9125"),
            Ok(udp("localhost:9125"))
        );
        assert_eq!(parse_statsd_host("localhost"), Ok(udp("localhost:8125")));
        assert_eq!(parse_statsd_host("[::1]:9"), Ok(udp("[::1]:9")));
        assert_eq!(parse_statsd_host("::1"), Ok(udp("[::1]:8125")));
        assert_eq!(
            parse_statsd_host("unix:///run/statsd.sock"),
            Ok(StatsdHost::Unix("/run/statsd.sock".into()))
        );
        assert_eq!(
            parse_statsd_host("unix:/run/s"),
            Ok(StatsdHost::Unix("/run/s".into()))
        );
        assert!(parse_statsd_host("host:port").is_err());
        assert!(parse_statsd_host("unix:").is_err());
        assert!(parse_statsd_host("").is_err());
    }

    #[test]
    fn syslog_addresses_as_gunicorn_spells_them() {
        assert_eq!(
            parse_syslog_address("udp://localhost:514"),
            Ok(SyslogAddress::Udp("localhost:514".into()))
        );
        assert_eq!(
            parse_syslog_address("udp://logs"),
            Ok(SyslogAddress::Udp("logs:514".into()))
        );
        assert_eq!(
            parse_syslog_address("tcp://[::1]:601"),
            Ok(SyslogAddress::Tcp("[::1]:601".into()))
        );
        assert_eq!(
            parse_syslog_address("unix:///dev/log#stream"),
            Ok(SyslogAddress::Unix {
                path: "/dev/log".into(),
                stream: true
            })
        );
        assert!(parse_syslog_address("/dev/log").is_err());
        assert!(parse_syslog_address("unix:///x#raw").is_err());
        assert!(parse_facility("local9").is_err());
    }
}
