//! Logging in Gunicorn's formats.
//!
//! The error log is file descriptor 2 in every process: `--error-logfile` is opened and
//! dup'ed onto it, so Rust's `tracing` output, Python's `sys.stderr`/`sys.stdout` and
//! `wsgi.errors` all land in one place and a reopen is one dup2. The access log is one
//! write(2) per line on an O_APPEND descriptor, so processes never interleave lines.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::logformat::{Field, LineFormat, Piece};
use crate::http::head::RequestHead;
use crate::net::Peer;

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

fn open_append(path: &str) -> std::io::Result<File> {
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
fn render_record(
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

/// One request, as the access log sees it.
pub struct AccessRecord<'a> {
    pub head_bytes: &'a [u8],
    pub head: &'a RequestHead,
    pub peer: &'a Peer,
    pub status: u16,
    pub body_bytes: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
enum Atom {
    Literal(String),
    RemoteAddr,
    Dash,
    User,
    Time,
    RequestLine,
    Method,
    Path,
    Query,
    Protocol,
    Status,
    BytesOrZero,
    BytesOrDash,
    Referer,
    UserAgent,
    Seconds,
    Millis,
    Micros,
    DecimalSeconds,
    Pid,
    RequestHeader(String),
}

/// The access log: a compiled `--access-logformat` and its destination.
pub struct AccessLog {
    atoms: Vec<Atom>,
    /// `--access-log-json`: a JSON object per line instead of the format.
    json: bool,
    /// A logging configuration's format around each line (`%(message)s` is the line).
    wrap: Option<LineFormat>,
    path: String,
    file: Option<File>,
    line: String,
}

impl AccessLog {
    /// `path` is a file, `-` (stdout), or empty: no stream, only syslog
    /// (`--log-syslog` without `--access-logfile`, as Gunicorn logs access then).
    pub fn open(
        path: &str,
        format: &str,
        json: bool,
        wrap: Option<LineFormat>,
    ) -> std::io::Result<AccessLog> {
        let mut log = AccessLog {
            atoms: compile(format),
            json,
            wrap,
            path: path.to_owned(),
            file: None,
            line: String::new(),
        };
        log.reopen()?;
        Ok(log)
    }

    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = if self.path == "-" || self.path.is_empty() {
            None
        } else {
            Some(open_append(&self.path)?)
        };
        Ok(())
    }

    /// One line for one request: the compiled format, or with `--access-log-json` a
    /// JSON object keyed by Gunicorn's atoms.
    pub fn write(&mut self, r: &AccessRecord<'_>) {
        let line = &mut self.line;
        line.clear();
        if self.json {
            json_line(r, line);
        } else {
            for atom in &self.atoms {
                render(atom, r, line);
            }
        }
        if let Some(wrap) = &self.wrap {
            *line = render_record(wrap, "INFO", 20, "gunicorn.access", line);
        }
        line.push('\n');
        crate::syslog::access_log(line);
        let result = match &mut self.file {
            Some(f) => f.write_all(line.as_bytes()),
            None if self.path.is_empty() => Ok(()), // to syslog only
            None => std::io::stdout().lock().write_all(line.as_bytes()),
        };
        if let Err(e) = result {
            tracing::debug!("access log write failed: {e}");
        }
    }
}

/// The atoms a JSON access-log line carries, in order; numbers unquoted.
const JSON_ATOMS: [(&str, bool); 19] = [
    ("h", false),
    ("l", false),
    ("u", false),
    ("t", false),
    ("r", false),
    ("m", false),
    ("U", false),
    ("q", false),
    ("H", false),
    ("s", true),
    ("B", true),
    ("b", false),
    ("f", false),
    ("a", false),
    ("T", true),
    ("M", true),
    ("D", true),
    ("L", true),
    ("p", false),
];

/// `{"h": "127.0.0.1", ..., "s": 200, ...}`: Gunicorn's atoms, rendered as the text
/// format renders them.
fn json_line(r: &AccessRecord<'_>, line: &mut String) {
    let mut value = String::new();
    line.push('{');
    for (i, (key, number)) in JSON_ATOMS.iter().enumerate() {
        value.clear();
        render(&atom(key), r, &mut value);
        if i > 0 {
            line.push_str(", ");
        }
        line.push('"');
        line.push_str(key);
        line.push_str("\": ");
        if *number {
            line.push_str(&value);
        } else {
            line.push_str(&serde_json::Value::from(value.as_str()).to_string());
        }
    }
    line.push('}');
}

/// Appends one atom's text for request `r`.
fn render(atom: &Atom, r: &AccessRecord<'_>, line: &mut String) {
    use std::fmt::Write as _;
    let header = |name: &str| -> Option<String> {
        r.head
            .headers
            .iter()
            .find(|(n, _)| r.head_bytes[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(&r.head_bytes[v.clone()]).into_owned())
    };
    let text =
        |range: std::ops::Range<usize>| String::from_utf8_lossy(&r.head_bytes[range]).into_owned();
    let protocol = if r.head.http2 {
        "HTTP/2"
    } else if r.head.minor_version == 0 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let _ = match atom {
        Atom::Literal(s) => write!(line, "{s}"),
        Atom::RemoteAddr => write!(
            line,
            "{}",
            if r.peer.addr.is_empty() {
                "-"
            } else {
                &r.peer.addr
            }
        ),
        Atom::Dash | Atom::User => write!(line, "-"),
        Atom::Time => write!(line, "[{}]", local_time("%d/%b/%Y:%H:%M:%S %z")),
        Atom::RequestLine => write!(
            line,
            "{} {} {}",
            text(r.head.method.clone()),
            text(r.head.target.clone()),
            protocol
        ),
        Atom::Method => write!(line, "{}", text(r.head.method.clone())),
        Atom::Path => write!(line, "{}", text(r.head.path.clone())),
        Atom::Query => write!(line, "{}", text(r.head.query.clone())),
        Atom::Protocol => write!(line, "{protocol}"),
        Atom::Status => write!(line, "{}", r.status),
        Atom::BytesOrZero => write!(line, "{}", r.body_bytes),
        Atom::BytesOrDash if r.body_bytes == 0 => write!(line, "-"),
        Atom::BytesOrDash => write!(line, "{}", r.body_bytes),
        Atom::Referer => {
            write!(line, "{}", header("referer").unwrap_or_else(|| "-".into()))
        }
        Atom::UserAgent => write!(
            line,
            "{}",
            header("user-agent").unwrap_or_else(|| "-".into())
        ),
        Atom::Seconds => write!(line, "{}", r.elapsed.as_secs()),
        Atom::Millis => write!(line, "{}", r.elapsed.as_millis()),
        Atom::Micros => write!(line, "{}", r.elapsed.as_micros()),
        Atom::DecimalSeconds => write!(line, "{:.6}", r.elapsed.as_secs_f64()),
        Atom::Pid => write!(line, "<{}>", std::process::id()),
        Atom::RequestHeader(name) => {
            write!(line, "{}", header(name).unwrap_or_else(|| "-".into()))
        }
    };
}

/// Compiles a Python %-format such as `%(h)s %({x-real-ip}i)s` into atoms. Unknown
/// atoms print `-`, as in Gunicorn.
fn compile(format: &str) -> Vec<Atom> {
    let mut atoms = Vec::new();
    let mut literal = String::new();
    let mut rest = format;
    while let Some(i) = rest.find('%') {
        literal.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("%%") {
            literal.push('%');
            rest = after;
            continue;
        }
        let parsed = rest.strip_prefix("%(").and_then(|r| r.split_once(")s"));
        let Some((name, after)) = parsed else {
            literal.push('%');
            rest = &rest[1..];
            continue;
        };
        if !literal.is_empty() {
            atoms.push(Atom::Literal(std::mem::take(&mut literal)));
        }
        atoms.push(atom(name));
        rest = after;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        atoms.push(Atom::Literal(literal));
    }
    atoms
}

fn atom(name: &str) -> Atom {
    match name {
        "h" => Atom::RemoteAddr,
        "l" => Atom::Dash,
        "u" => Atom::User,
        "t" => Atom::Time,
        "r" => Atom::RequestLine,
        "m" => Atom::Method,
        "U" => Atom::Path,
        "q" => Atom::Query,
        "H" => Atom::Protocol,
        "s" => Atom::Status,
        "B" => Atom::BytesOrZero,
        "b" => Atom::BytesOrDash,
        "f" => Atom::Referer,
        "a" => Atom::UserAgent,
        "T" => Atom::Seconds,
        "M" => Atom::Millis,
        "D" => Atom::Micros,
        "L" => Atom::DecimalSeconds,
        "p" => Atom::Pid,
        _ => match name.strip_prefix('{').and_then(|n| n.strip_suffix("}i")) {
            Some(header) => Atom::RequestHeader(header.to_owned()),
            None => Atom::Dash,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_the_default_format() {
        let atoms = compile(crate::config::DEFAULT_ACCESS_LOG_FORMAT);
        assert!(matches!(atoms[0], Atom::RemoteAddr));
        assert!(atoms.iter().any(|a| matches!(a, Atom::UserAgent)));
        assert!(matches!(compile("%({x-id}i)s %%")[0], Atom::RequestHeader(ref h) if h == "x-id"));
    }
}
