//! Logging in Gunicorn's formats.
//!
//! The error log is file descriptor 2 in every process: `--error-logfile` is opened and
//! dup'ed onto it, so Rust's `tracing` output, Python's `sys.stderr`/`sys.stdout` and
//! `wsgi.errors` all land in one place and a reopen is one dup2.
//!
//! What a process's error log is (`ErrorLog`: path, level, format) is installed once
//! (`init_error_log`) and switched on a reload (`switch`): the master when it begins
//! booting the new generation, and every worker and dirty worker, right after fork, to
//! its own generation's settings — the old generation, forked earlier, keeps what it
//! had. The level sits in a `tracing_subscriber::reload` layer, so `tracing`'s global
//! maximum follows it and a disabled record still costs one atomic load; the format is
//! read only when a record is written.
//!
//! The access log is one write(2) per line on an O_APPEND descriptor, so processes
//! never interleave lines.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::logformat::{Field, LineFormat, Piece};
use crate::http::head::RequestHead;

mod access;

pub use access::{AccessFormat, AccessLog, AccessRecord};

/// How a process's error log is set up: `--error-logfile`, `--log-level` and a logging
/// configuration's format.
#[derive(Clone, PartialEq)]
pub struct ErrorLog {
    pub path: String,
    pub level: String,
    pub format: Option<LineFormat>,
}

impl ErrorLog {
    pub fn of(cfg: &crate::config::Config) -> ErrorLog {
        ErrorLog {
            path: cfg.error_logfile.clone(),
            level: cfg.loglevel.clone(),
            format: cfg.observability.error_log_format.clone(),
        }
    }

    fn max_level(&self) -> LevelFilter {
        match self.level.to_ascii_lowercase().as_str() {
            "debug" => LevelFilter::DEBUG,
            "info" => LevelFilter::INFO,
            "warning" => LevelFilter::WARN,
            _ => LevelFilter::ERROR,
        }
    }
}

/// Sets the subscriber's level (the `reload` layer's handle, type-erased).
type SetLevel = Box<dyn Fn(LevelFilter) + Send + Sync>;

static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();
/// The settings in force (`None` until `init_error_log`).
static CURRENT: Mutex<Option<ErrorLog>> = Mutex::new(None);
/// The format `GunicornFormat` renders records with (`None`: Gunicorn's line).
static LINE: RwLock<Option<Arc<LineFormat>>> = RwLock::new(None);
/// The process's stderr as it was before any `--error-logfile` was put on fd 2: where
/// `-` writes after a reload from a file back to `-`.
static ORIGINAL_STDERR: OnceLock<OwnedFd> = OnceLock::new();

/// Points fd 2 at `--error-logfile` (unless it is `-`) and installs the formatter:
/// Gunicorn's line, or a logging configuration's `format`.
pub fn init_error_log(log: &ErrorLog) -> std::io::Result<()> {
    if let Ok(fd) = nix::fcntl::fcntl(2, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) {
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        let _ = ORIGINAL_STDERR.set(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
    }
    put_on_stderr(&log.path)?;
    set_line(log.format.clone());
    let (filter, handle) = reload::Layer::new(log.max_level());
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(GunicornFormat);
    if tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .try_init()
        .is_ok()
    {
        let _ = SET_LEVEL.set(Box::new(move |level| {
            let _ = handle.reload(level);
        }));
    }
    *lock_current() = Some(log.clone());
    Ok(())
}

/// Switches this process's error log to `log`: the file first (an error changes
/// nothing), then the level and the format. What is already in force is left alone.
pub fn switch(log: &ErrorLog) -> std::io::Result<()> {
    let mut current = lock_current();
    let Some(now) = current.as_mut() else {
        return Ok(());
    };
    if now.path != log.path {
        put_on_stderr(&log.path)?;
    }
    if now.max_level() != log.max_level() {
        if let Some(set) = SET_LEVEL.get() {
            set(log.max_level());
        }
    }
    if now.format != log.format {
        set_line(log.format.clone());
    }
    *now = log.clone();
    Ok(())
}

/// Checks that `path` can be opened as the error log, changing nothing.
pub fn check_path(path: &str) -> std::io::Result<()> {
    if path != "-" {
        open_append(path)?;
    }
    Ok(())
}

/// Reopens `path` onto fd 2 (USR1, after a rotation); `-` stays as it is.
pub fn reopen_error_log(path: &str) -> std::io::Result<()> {
    match path {
        "-" => Ok(()),
        path => put_on_stderr(path),
    }
}

/// Reopens the error log in force (the master's, which a reload switches before its
/// configuration is adopted).
pub fn reopen_current_error_log() -> std::io::Result<()> {
    let path = lock_current().as_ref().map(|log| log.path.clone());
    path.map_or(Ok(()), |path| reopen_error_log(&path))
}

/// A worker or dirty worker, right after fork: its own generation's error log from
/// its first record (the master's may be the next generation's, or the previous').
pub fn switch_after_fork(cfg: &crate::config::Config) {
    if let Err(e) = switch(&ErrorLog::of(cfg)) {
        tracing::warn!("keeping the master's error log: {e}");
    }
}

/// The format records are rendered with (`None`: Gunicorn's line).
fn line() -> Option<Arc<LineFormat>> {
    LINE.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn set_line(format: Option<LineFormat>) {
    *LINE.write().unwrap_or_else(|e| e.into_inner()) = format.map(Arc::new);
}

fn lock_current() -> std::sync::MutexGuard<'static, Option<ErrorLog>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts `path` (opened for appending) on fd 2; `-` puts back the stderr the process
/// started with.
fn put_on_stderr(path: &str) -> std::io::Result<()> {
    if path == "-" {
        if let Some(original) = ORIGINAL_STDERR.get() {
            nix::unistd::dup2(original.as_raw_fd(), 2).map_err(std::io::Error::from)?;
        }
        return Ok(());
    }
    let file = open_append(path)?;
    nix::unistd::dup2(file.as_raw_fd(), 2).map_err(std::io::Error::from)?;
    Ok(())
}

/// An exception the application raised while handling a request, logged as Gunicorn
/// logs it: `Error handling request GET /path?query`, then the traceback
/// (`python::format_exception`) on the lines below. Every request path (WSGI and ASGI,
/// HTTP/1 and HTTP/2, in the call or while the body is produced) logs through here.
pub fn request_error(head_bytes: &[u8], head: &RequestHead, traceback: &str) {
    let text = |range: std::ops::Range<usize>| {
        String::from_utf8_lossy(head_bytes.get(range).unwrap_or_default()).into_owned()
    };
    tracing::error!(
        "Error handling request {} {}\n{traceback}",
        text(head.method.clone()),
        text(head.target.clone())
    );
}

pub(crate) fn open_append(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot open log file {path}: {e}")))
}

/// `[2024-05-01 12:00:00 +0000] [1234] [INFO] message`, or the logging
/// configuration's format in force (`line`).
struct GunicornFormat;

impl<S, N> FormatEvent<S, N> for GunicornFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let (level, levelno) = match *event.metadata().level() {
            Level::ERROR => ("ERROR", 40),
            Level::WARN => ("WARNING", 30),
            Level::INFO => ("INFO", 20),
            _ => ("DEBUG", 10),
        };
        // Gunicorn's statsd logger counts its errors and warnings.
        match *event.metadata().level() {
            Level::ERROR => crate::statsd::increment("gunicorn.log.error"),
            Level::WARN => crate::statsd::increment("gunicorn.log.warning"),
            _ => {}
        }
        if let Some(format) = line() {
            let mut message = String::new();
            ctx.field_format()
                .format_fields(Writer::new(&mut message), event)?;
            let line = render_record(&format, level, levelno, "gunicorn.error", &message);
            crate::syslog::error_log(*event.metadata().level(), &message, Some(&line));
            return writeln!(writer, "{line}");
        }
        write!(
            writer,
            "[{}] [{}] [{}] ",
            local_time("%Y-%m-%d %H:%M:%S %z"),
            std::process::id(),
            level
        )?;
        if crate::syslog::enabled() {
            let mut message = String::new();
            ctx.field_format()
                .format_fields(Writer::new(&mut message), event)?;
            crate::syslog::error_log(*event.metadata().level(), &message, None);
            writer.write_str(&message)?;
        } else {
            ctx.field_format().format_fields(writer.by_ref(), event)?;
        }
        writeln!(writer)
    }
}

/// A log record through a logging configuration's format.
pub(crate) fn render_record(
    format: &LineFormat,
    level: &str,
    levelno: u8,
    name: &str,
    message: &str,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for piece in &format.pieces {
        let (field, left, width) = match piece {
            Piece::Literal(s) => {
                out.push_str(s);
                continue;
            }
            Piece::Field { name, left, width } => (*name, *left, *width),
        };
        let value = match field {
            Field::Asctime => match &format.datefmt {
                Some(f) => local_time(f),
                // Python's default: `2024-05-01 12:00:00,123`.
                None => format!(
                    "{},{:03}",
                    local_time("%Y-%m-%d %H:%M:%S"),
                    unix_now().subsec_millis()
                ),
            },
            Field::Created => format!("{:.6}", unix_now().as_secs_f64()),
            Field::Levelname => level.to_owned(),
            Field::Levelno => levelno.to_string(),
            Field::Message => message.to_owned(),
            Field::Name => name.to_owned(),
            Field::Process => std::process::id().to_string(),
        };
        let _ = if left {
            write!(out, "{value:<width$}")
        } else {
            write!(out, "{value:>width$}")
        };
    }
    out
}

fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The current local time through strftime(3).
pub fn local_time(format: &str) -> String {
    let fmt = std::ffi::CString::new(format).unwrap_or_default();
    let mut buf = [0u8; 64];
    // SAFETY: localtime_r fills `tm` from a valid time_t; strftime writes at most
    // buf.len() bytes into `buf` and returns how many.
    let n = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm)
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
