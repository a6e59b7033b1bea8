//! Logging in Gunicorn's formats.
//!
//! The error log is file descriptor 2 in every process: `--error-logfile` is opened and
//! dup'ed onto it, so Rust's `tracing` output, Python's `sys.stderr`/`sys.stdout` and
//! `wsgi.errors` all land in one place and a reopen is one dup2. The access log is one
//! write(2) per line on an O_APPEND descriptor, so processes never interleave lines.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::logformat::{Field, LineFormat, Piece};
use crate::http::head::RequestHead;

mod access;

pub use access::{AccessFormat, AccessLog, AccessRecord};

/// Points fd 2 at `--error-logfile` (unless it is `-`) and installs the formatter:
/// Gunicorn's line, or a logging configuration's `format`.
pub fn init_error_log(path: &str, level: &str, format: Option<LineFormat>) -> std::io::Result<()> {
    reopen_error_log(path)?;
    let max = match level.to_ascii_lowercase().as_str() {
        "debug" => Level::DEBUG,
        "info" => Level::INFO,
        "warning" => Level::WARN,
        _ => Level::ERROR,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(max)
        .with_writer(std::io::stderr)
        .event_format(GunicornFormat { line: format })
        .try_init();
    Ok(())
}

/// (Re)opens the error log file onto fd 2; `-` leaves stderr alone.
pub fn reopen_error_log(path: &str) -> std::io::Result<()> {
    if path == "-" {
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

/// `[2024-05-01 12:00:00 +0000] [1234] [INFO] message`, or `line`'s format.
struct GunicornFormat {
    line: Option<LineFormat>,
}

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
        if let Some(format) = &self.line {
            let mut message = String::new();
            ctx.field_format()
                .format_fields(Writer::new(&mut message), event)?;
            let line = render_record(format, level, levelno, "gunicorn.error", &message);
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
