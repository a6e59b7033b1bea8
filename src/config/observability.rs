//! Settings for watching a running server: Prometheus's `--metrics-bind` and statsd as
//! Gunicorn sends it (`--statsd-host`, `--statsd-prefix`, `--dogstatsd-tags`,
//! `--enable-backlog-metric`). Parsing only.

use std::path::PathBuf;

use clap::Args;

use super::bind::{self, BindAddress};

#[derive(Debug, Clone, Default, Args)]
pub struct Observability {
    /// Serve Prometheus metrics (text exposition format) at http://ADDRESS/metrics from
    /// the master: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N.
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

    /// Also send the listen queue's length (summed over the TCP listeners) to statsd
    /// as `gunicorn.backlog`.
    #[arg(long = "enable-backlog-metric")]
    pub enable_backlog_metric: bool,
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
}
