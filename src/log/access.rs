//! The access log: Gunicorn's `--access-logformat` atoms compiled once, rendered per
//! request from what the connection knows (the request head, the peer, the status,
//! the bytes sent, the time taken), one write(2) per line.

use std::fs::File;
use std::io::Write;
use std::time::Duration;

use super::{local_time, open_append, render_record};
use crate::config::logformat::LineFormat;
use crate::http::head::RequestHead;
use crate::net::Peer;

/// One request, as the access log sees it.
pub struct AccessRecord<'a> {
    pub head_bytes: &'a [u8],
    pub head: &'a RequestHead,
    pub peer: &'a Peer,
    pub status: u16,
    pub body_bytes: u64,
    pub elapsed: Duration,
    /// The response's header lines as sent (`Name: value\r\n` each), kept only when
    /// the format has `%({name}o)s` atoms (`AccessLog::wants_response_headers`).
    pub response_headers: &'a [u8],
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
    Bytes,
    Referer,
    UserAgent,
    Seconds,
    Millis,
    Micros,
    DecimalSeconds,
    Pid,
    /// Uvicorn's: `host:port` (empty for a Unix socket's peer).
    ClientAddrPort,
    /// Uvicorn's: the decoded path quoted again as `urllib.parse.quote` does, and
    /// `?query` when there is one.
    QuotedTarget,
    /// Uvicorn's: `1.1`, `1.0` or `2`.
    HttpVersion,
    RequestHeader(String),
    ResponseHeader(String),
    Environ(String),
}

/// Which lines the access log writes.
pub enum AccessFormat<'a> {
    /// Gunicorn's `--access-logformat`.
    Gunicorn(&'a str),
    /// Uvicorn's line (`127.0.0.1:51234 - "GET /path?q HTTP/1.1" 200`), as Gunicorn
    /// writes it for a Uvicorn worker class.
    Uvicorn,
}

/// The access log: a compiled `--access-logformat` and its destination.
pub struct AccessLog {
    atoms: Vec<Atom>,
    /// `"` in a value is written `\"` (Gunicorn's atoms; Uvicorn writes values as
    /// they are).
    escape: bool,
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
        format: AccessFormat<'_>,
        json: bool,
        wrap: Option<LineFormat>,
    ) -> std::io::Result<AccessLog> {
        let (atoms, escape) = match format {
            AccessFormat::Gunicorn(format) => (compile(format), true),
            AccessFormat::Uvicorn => (
                vec![
                    Atom::ClientAddrPort,
                    Atom::Literal(" - \"".into()),
                    Atom::Method,
                    Atom::Literal(" ".into()),
                    Atom::QuotedTarget,
                    Atom::Literal(" HTTP/".into()),
                    Atom::HttpVersion,
                    Atom::Literal("\" ".into()),
                    Atom::Status,
                ],
                false,
            ),
        };
        let mut log = AccessLog {
            atoms,
            escape,
            json,
            wrap,
            path: path.to_owned(),
            file: None,
            line: String::new(),
        };
        log.reopen()?;
        Ok(log)
    }

    /// Whether the format shows response headers, which the connection then keeps.
    pub fn wants_response_headers(&self) -> bool {
        self.atoms
            .iter()
            .any(|a| matches!(a, Atom::ResponseHeader(_)))
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
                render(atom, r, line, self.escape);
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
        render(&atom(key), r, &mut value, false);
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

/// Appends one atom's text for request `r`, as Gunicorn renders it: a missing value is
/// `-`, and with `escape` (the text format) `"` in a value is written `\"`.
fn render(atom: &Atom, r: &AccessRecord<'_>, line: &mut String, escape: bool) {
    use std::fmt::Write as _;
    let text = |range: std::ops::Range<usize>| String::from_utf8_lossy(&r.head_bytes[range]);
    let protocol = if r.head.http2 {
        "HTTP/2"
    } else if r.head.minor_version == 0 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let start = line.len();
    let found = match atom {
        Atom::Literal(s) => {
            line.push_str(s);
            return;
        }
        Atom::RemoteAddr => {
            line.push_str(&r.peer.addr);
            !r.peer.addr.is_empty()
        }
        Atom::Dash => false,
        Atom::User => push(line, basic_auth_user(r)),
        Atom::Time => {
            line.push_str(&local_time("[%d/%b/%Y:%H:%M:%S %z]"));
            true
        }
        Atom::RequestLine => write!(
            line,
            "{} {} {protocol}",
            text(r.head.method.clone()),
            text(r.head.target.clone())
        )
        .is_ok(),
        Atom::Method => write!(line, "{}", text(r.head.method.clone())).is_ok(),
        Atom::Path => {
            let path = crate::http::percent_decode(&r.head_bytes[r.head.path.clone()]);
            line.extend(path.iter().map(|&b| char::from(b)));
            true
        }
        Atom::Query => write!(line, "{}", text(r.head.query.clone())).is_ok(),
        Atom::Protocol => write!(line, "{protocol}").is_ok(),
        Atom::Status => write!(line, "{}", r.status).is_ok(),
        Atom::Bytes => write!(line, "{}", r.body_bytes).is_ok(),
        Atom::Referer => push(line, request_header(r, "referer")),
        Atom::UserAgent => push(line, request_header(r, "user-agent")),
        Atom::Seconds => write!(line, "{}", r.elapsed.as_secs()).is_ok(),
        Atom::Millis => write!(line, "{}", r.elapsed.as_millis()).is_ok(),
        Atom::Micros => write!(line, "{}", r.elapsed.as_micros()).is_ok(),
        Atom::DecimalSeconds => write!(line, "{:.6}", r.elapsed.as_secs_f64()).is_ok(),
        Atom::Pid => write!(line, "<{}>", std::process::id()).is_ok(),
        Atom::ClientAddrPort => {
            if !r.peer.addr.is_empty() {
                let _ = write!(line, "{}:{}", r.peer.addr, r.peer.port);
            }
            true
        }
        Atom::QuotedTarget => {
            quote_path(&r.head_bytes[r.head.path.clone()], line);
            if !r.head.query.is_empty() {
                let _ = write!(line, "?{}", text(r.head.query.clone()));
            }
            true
        }
        Atom::HttpVersion => {
            line.push_str(protocol.trim_start_matches("HTTP/"));
            true
        }
        Atom::RequestHeader(name) => push(line, request_header(r, name)),
        Atom::ResponseHeader(name) => push(line, response_header(r.response_headers, name)),
        Atom::Environ(name) => push(line, environ(r, name, protocol)),
    };
    if !found {
        line.truncate(start);
        line.push('-');
    } else if escape && line[start..].contains('"') {
        let value = line.split_off(start);
        line.push_str(&value.replace('"', "\\\""));
    }
}

/// The path as Uvicorn logs it: percent-decoded to UTF-8 text (invalid sequences
/// replaced), then every byte but letters, digits, `_.-~/` percent-encoded again.
fn quote_path(raw: &[u8], line: &mut String) {
    use std::fmt::Write as _;
    let decoded = crate::http::percent_decode(raw);
    for &b in String::from_utf8_lossy(&decoded).as_bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            line.push(char::from(b));
        } else {
            let _ = write!(line, "%{b:02X}");
        }
    }
}

/// Appends `value` if there is one; whether there was.
fn push(line: &mut String, value: Option<String>) -> bool {
    value.map(|v| line.push_str(&v)).is_some()
}

/// Bytes as Latin-1 text: how a WSGI environ holds them, so how Gunicorn logs them.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// A request header's value (the last of its name, as in Gunicorn's atoms).
fn request_header(r: &AccessRecord<'_>, name: &str) -> Option<String> {
    r.head
        .headers
        .iter()
        .rev()
        .find(|(n, _)| r.head_bytes[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| latin1(&r.head_bytes[v.clone()]))
}

/// A response header's value from the lines sent (the last of its name).
fn response_header(lines: &[u8], name: &str) -> Option<String> {
    lines.rsplit(|&b| b == b'\n').find_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let colon = l.iter().position(|&b| b == b':')?;
        let (n, v) = (&l[..colon], &l[colon + 1..]);
        n.eq_ignore_ascii_case(name.as_bytes())
            .then(|| latin1(v.trim_ascii()))
    })
}

/// `%(u)s`: the user name of `Authorization: Basic ...` (the part before the first
/// `:`, as UTF-8), or none.
fn basic_auth_user(r: &AccessRecord<'_>) -> Option<String> {
    use base64::Engine as _;
    let auth = request_header(r, "authorization")?;
    if !auth.to_ascii_lowercase().starts_with("basic") {
        return None;
    }
    let (_, encoded) = auth.split_once(' ')?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let user = decoded.split(|&b| b == b':').next().unwrap_or_default();
    String::from_utf8(user.to_vec()).ok()
}

/// `%({NAME}e)s`: the environ value rgun gives the application for NAME, for the keys
/// the request itself decides (the request line, the peer, `CONTENT_*`, `HTTP_*`,
/// several headers of a name joined with `,`). Keys set by the server's settings or by
/// the application are not known here.
fn environ(r: &AccessRecord<'_>, name: &str, protocol: &str) -> Option<String> {
    let text = |range: std::ops::Range<usize>| latin1(&r.head_bytes[range]);
    let header = |wanted: &str| -> Option<String> {
        let values: Vec<String> = r
            .head
            .headers
            .iter()
            .filter(|(n, _)| {
                let n = &r.head_bytes[n.clone()];
                n.len() == wanted.len()
                    && n.iter().zip(wanted.bytes()).all(|(&a, b)| {
                        let a = if a == b'-' { b'_' } else { a };
                        a.eq_ignore_ascii_case(&b)
                    })
            })
            .map(|(_, v)| text(v.clone()))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    match name.to_ascii_uppercase().as_str() {
        "REQUEST_METHOD" => Some(text(r.head.method.clone())),
        "RAW_URI" => Some(text(r.head.target.clone())),
        "PATH_INFO" => Some(latin1(&crate::http::percent_decode(
            &r.head_bytes[r.head.path.clone()],
        ))),
        "QUERY_STRING" => Some(text(r.head.query.clone())),
        "SERVER_PROTOCOL" => Some(protocol.to_owned()),
        "REMOTE_ADDR" => Some(r.peer.addr.clone()),
        "REMOTE_PORT" => Some(r.peer.port.clone()),
        "CONTENT_TYPE" => header("CONTENT_TYPE"),
        "CONTENT_LENGTH" => header("CONTENT_LENGTH"),
        upper => header(upper.strip_prefix("HTTP_")?),
    }
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
        // Gunicorn 27 writes the byte count for both (`0` for none).
        "B" | "b" => Atom::Bytes,
        "f" => Atom::Referer,
        "a" => Atom::UserAgent,
        "T" => Atom::Seconds,
        "M" => Atom::Millis,
        "D" => Atom::Micros,
        "L" => Atom::DecimalSeconds,
        "p" => Atom::Pid,
        _ => {
            let braced = name.strip_prefix('{').and_then(|n| n.rsplit_once('}'));
            match braced {
                Some((key, "i")) => Atom::RequestHeader(key.to_owned()),
                Some((key, "o")) => Atom::ResponseHeader(key.to_owned()),
                Some((key, "e")) => Atom::Environ(key.to_owned()),
                _ => Atom::Dash,
            }
        }
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
