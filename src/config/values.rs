//! The value types of the command line's flags and their parsers (clap's
//! `value_parser`s): a file mode, `--forwarded-allow-ips`, `KEY=VALUE`, and the `-k`
//! values with the worker each selects.

use std::net::IpAddr;

use clap::builder::RangedI64ValueParser;

/// An integer flag from 0 to `max`, parsed as a signed number so that `-t -5` is a
/// range error rather than a digit error (the flag itself has `allow_negative_numbers`,
/// so `-5` is its value, not an unknown option).
pub(super) fn non_negative(max: u64) -> RangedI64ValueParser<u64> {
    RangedI64ValueParser::new().range(0..=i64::try_from(max).unwrap_or(i64::MAX))
}

pub(super) fn parse_worker_class(s: &str) -> Result<String, String> {
    match worker_kind(Some(s)) {
        Some(_) => Ok(s.to_owned()),
        None => Err(format!(
            "rgun cannot run worker class {s:?}: it has a WSGI worker (sync or gthread; use --threads) and an ASGI one (asgi, or uvicorn.workers.UvicornWorker)"
        )),
    }
}

/// `--header-map`: rgun always drops header names with `_` (Gunicorn's default).
pub(super) fn parse_header_map(s: &str) -> Result<String, String> {
    match s {
        "drop" => Ok(s.to_owned()),
        _ => Err(format!(
            "{s:?}: rgun drops header names containing '_' (Gunicorn's `drop`); \
             `refuse` and `dangerous` are not supported"
        )),
    }
}

pub(super) fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0600"))
}

/// `--forwarded-allow-ips`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowIps {
    Any,
    List(Vec<IpAddr>),
}

impl AllowIps {
    /// As Gunicorn's setting spells it: `*`, or the addresses comma-separated.
    pub fn to_text(&self) -> String {
        match self {
            AllowIps::Any => "*".to_owned(),
            AllowIps::List(ips) => ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        match self {
            AllowIps::Any => true,
            AllowIps::List(ips) => ips
                .iter()
                .any(|a| *a == ip || a.to_canonical() == ip.to_canonical()),
        }
    }
}

pub(super) fn parse_allow_ips(s: &str) -> Result<AllowIps, String> {
    if s.split(',').any(|p| p.trim() == "*") {
        return Ok(AllowIps::Any);
    }
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpAddr>()
                .map_err(|_| format!("{p:?} is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(AllowIps::List)
}

pub(super) fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Which worker a `-k` value selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// PEP 3333 (`sync`, `gthread`, Gunicorn's module paths for them, or no `-k`).
    Wsgi,
    /// ASGI 3 on an asyncio loop.
    Asgi,
}

/// The accepted `-k` values and the worker each selects; `None` for any other. The one
/// place that list lives.
pub fn worker_kind(class: Option<&str>) -> Option<WorkerKind> {
    match class {
        None
        | Some(
            "sync"
            | "gthread"
            | "egg:gunicorn#sync"
            | "egg:gunicorn#gthread"
            | "gunicorn.workers.sync.SyncWorker"
            | "gunicorn.workers.gthread.ThreadWorker",
        ) => Some(WorkerKind::Wsgi),
        Some(
            "asgi"
            | "uvicorn.workers.UvicornWorker"
            | "uvicorn_worker.UvicornWorker"
            | "uvicorn.workers.UvicornH11Worker",
        ) => Some(WorkerKind::Asgi),
        Some(_) => None,
    }
}

/// `-w`/`workers`/`$WEB_CONCURRENCY`: a count, or `auto` (the CPU this process may
/// use, see `sizing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Count(u32),
    Auto,
}

impl std::fmt::Display for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workers::Count(n) => write!(f, "{n}"),
            Workers::Auto => f.write_str("auto"),
        }
    }
}

pub(super) fn parse_workers(s: &str) -> Result<Workers, String> {
    if s.trim() == "auto" {
        return Ok(Workers::Auto);
    }
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .map(Workers::Count)
        .ok_or_else(|| format!("{s} is not in 1..=1024 (or auto)"))
}

/// `--max-worker-rss`: MiB (0: off), or `auto` (from the cgroup memory limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxWorkerRss {
    Mib(u64),
    Auto,
}

impl std::fmt::Display for MaxWorkerRss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxWorkerRss::Mib(n) => write!(f, "{n}"),
            MaxWorkerRss::Auto => f.write_str("auto"),
        }
    }
}

pub(super) fn parse_max_worker_rss(s: &str) -> Result<MaxWorkerRss, String> {
    if s.trim() == "auto" {
        return Ok(MaxWorkerRss::Auto);
    }
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= super::MAX_WORKER_RSS_MIB)
        .map(MaxWorkerRss::Mib)
        .ok_or_else(|| {
            format!(
                "{s} is not in 0..={} (MiB, or auto)",
                super::MAX_WORKER_RSS_MIB
            )
        })
}
