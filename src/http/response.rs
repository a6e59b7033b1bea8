//! Response-head assembly: validates the application's status and headers, decides the
//! body framing (Content-Length, chunked, close-delimited or none) and writes the head
//! into the connection's output buffer in one pass.
//!
//! Never puts a CR, LF or NUL from the application on the wire: such a header is an
//! error the caller turns into a 500.

use std::cell::RefCell;
use std::io::Write;
use std::time::SystemTime;

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body may be sent (HEAD, 1xx, 204, 304).
    NoBody,
    /// The application declared (or we computed) a Content-Length.
    Length(u64),
    /// HTTP/1.1 with no length: chunked transfer-coding.
    Chunked,
    /// HTTP/1.0 with no length: the body ends when the connection closes.
    Close,
}

/// What the connection needs to know to send the body and decide keep-alive.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: ResponseFraming,
    /// The connection closes after this response.
    pub close: bool,
}

/// The request facts that shape the response head.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    pub minor_version: u8,
    pub is_head: bool,
    /// The client, the server or the application wants the connection closed.
    pub close: bool,
    /// Total body length when the server knows it in advance (e.g. a one-item list).
    pub known_length: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("invalid status line {0:?}")]
    BadStatus(String),
    #[error("invalid header name {0:?}")]
    BadHeaderName(String),
    #[error("invalid character in value of header {0:?}")]
    BadHeaderValue(String),
    #[error("invalid Content-Length {0:?}")]
    BadContentLength(String),
}

/// Writes `HTTP/1.1 <status>\r\n<headers>\r\n` into `out` and returns the framing.
/// On error nothing is left in `out` beyond its original length. Inlined into each
/// sink's `head` (its one caller there), as the hello path is measured with it.
#[inline(always)]
pub fn write_head<'h>(
    out: &mut Vec<u8>,
    status: &str,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
    facts: RequestFacts,
) -> Result<ResponseHead, ResponseError> {
    let start = out.len();
    let result = write_head_inner(out, status, headers, facts);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

#[inline(always)]
fn write_head_inner<'h>(
    out: &mut Vec<u8>,
    status: &str,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
    facts: RequestFacts,
) -> Result<ResponseHead, ResponseError> {
    let code = parse_status(status)?;
    // RFC 9110 §8.6: no Content-Length in a 1xx or 204; in a 304 it would have to be
    // the length of the 200 the client does not get, which the application's header
    // (usually `0`) is not, so it goes too.
    let length_forbidden = code < 200 || code == 204 || code == 304;
    let mut close = facts.close;
    let mut declared_length = None;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers.clone() {
        if name.is_empty() || !name.iter().all(|b| super::head::is_token_byte(*b)) {
            return Err(ResponseError::BadHeaderName(lossy(name)));
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ResponseError::BadHeaderValue(lossy(name)));
        }
        if is_hop_by_hop(name) {
            // PEP 3333: the server owns connection management. An application asking
            // to close gets its wish; the rest is dropped, as Gunicorn does.
            if name.eq_ignore_ascii_case(b"connection") && value.eq_ignore_ascii_case(b"close") {
                close = true;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if length_forbidden {
                continue;
            }
            let text = std::str::from_utf8(value).ok().map(str::trim);
            let n = text
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| ResponseError::BadContentLength(lossy(value)))?;
            declared_length = Some(n);
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let body_forbidden = facts.is_head || code < 200 || code == 204 || code == 304;
    let framing = if body_forbidden {
        ResponseFraming::NoBody
    } else if let Some(n) = declared_length {
        ResponseFraming::Length(n)
    } else if let Some(n) = facts.known_length {
        let _ = write!(out, "Content-Length: {n}\r\n");
        ResponseFraming::Length(n)
    } else if facts.minor_version >= 1 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        ResponseFraming::Chunked
    } else {
        close = true;
        ResponseFraming::Close
    };
    // HEAD keeps the application's Content-Length header but sends no body; a HEAD
    // response without one needs no framing at all.
    out.extend_from_slice(b"Server: rgun\r\nDate: ");
    push_http_date(out);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if facts.minor_version == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ResponseHead {
        status: code,
        framing,
        close,
    })
}

/// A complete error response (4xx from the parser, 500 when the application failed
/// before its head), with Gunicorn's page: an HTML document titled with the reason.
pub fn write_error(out: &mut Vec<u8>, code: u16, reason: &str) {
    let body = format!(
        "<html>\n  <head>\n    <title>{reason}</title>\n  </head>\n  <body>\n    \
         <h1><p>{reason}</p></h1>\n    \n  </body>\n</html>\n"
    );
    let _ = write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nServer: rgun\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\nDate: ",
        body.len()
    );
    push_http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// `{code} {reason}`, the status line for a code alone (ASGI gives only the code),
/// made without core::fmt or an allocation: one per ASGI response.
pub struct StatusLine {
    buf: [u8; 48],
    len: usize,
}

impl StatusLine {
    pub fn new(code: u16) -> StatusLine {
        let mut digits = itoa::Buffer::new();
        let code_text = digits.format(code);
        let reason = reason_phrase(code);
        let mut line = StatusLine {
            buf: [0; 48],
            len: code_text.len() + 1 + reason.len(),
        };
        // Five digits at most, and the longest reason phrase has 31 bytes.
        let (digits_out, rest) = line.buf.split_at_mut(code_text.len());
        digits_out.copy_from_slice(code_text.as_bytes());
        rest[0] = b' ';
        rest[1..=reason.len()].copy_from_slice(reason.as_bytes());
        line
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: the buffer up to `len` is a `str` (the code's digits), a space and
        // another `str` (the reason phrase), back to back.
        unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len]) }
    }
}

/// The standard reason phrase for a status code (RFC 9110), for servers that are given
/// only the code (ASGI); `"Unknown"` for codes without one.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        511 => "Network Authentication Required",
        _ => "Unknown",
    }
}

/// `"200 OK"` → 200. PEP 3333 requires a three-digit code, a space and a reason.
fn parse_status(status: &str) -> Result<u16, ResponseError> {
    let bytes = status.as_bytes();
    let ok = bytes.len() >= 4
        && bytes[..3].iter().all(u8::is_ascii_digit)
        && bytes[3] == b' '
        && !bytes.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0);
    if !ok {
        return Err(ResponseError::BadStatus(status.to_owned()));
    }
    Ok(status[..3].parse().unwrap_or(500))
}

pub(super) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Appends the current time as an IMF-fixdate, formatted at most once per second.
pub fn push_http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs || cache.1.is_empty() {
            *cache = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cache.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_is_code_space_reason() {
        assert_eq!(StatusLine::new(200).as_str(), "200 OK");
        assert_eq!(
            StatusLine::new(511).as_str(),
            "511 Network Authentication Required"
        );
        assert_eq!(StatusLine::new(599).as_str(), "599 Unknown");
        assert_eq!(StatusLine::new(65535).as_str(), "65535 Unknown");
    }

    fn facts() -> RequestFacts {
        RequestFacts {
            minor_version: 1,
            is_head: false,
            close: false,
            known_length: None,
        }
    }

    #[test]
    fn chunked_when_no_length_on_http11() {
        let mut out = Vec::new();
        let h = [(&b"Content-Type"[..], &b"text/plain"[..])];
        let head = write_head(&mut out, "200 OK", h.iter().copied(), facts()).unwrap();
        assert_eq!(head.framing, ResponseFraming::Chunked);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Transfer-Encoding: chunked\r\n"));
    }

    #[test]
    fn header_injection_is_refused() {
        let mut out = b"keep".to_vec();
        let h = [(&b"X-A"[..], &b"a\r\nSet-Cookie: x"[..])];
        let err = write_head(&mut out, "200 OK", h.iter().copied(), facts()).unwrap_err();
        assert_eq!(err, ResponseError::BadHeaderValue("X-A".into()));
        assert_eq!(out, b"keep");
    }

    #[test]
    fn content_length_dropped_from_204_1xx_and_304() {
        for status in ["204 No Content", "103 Early Hints", "304 Not Modified"] {
            let mut out = Vec::new();
            let h = [
                (&b"Content-Length"[..], &b"0"[..]),
                (&b"X-A"[..], &b"b"[..]),
            ];
            let head = write_head(&mut out, status, h.iter().copied(), facts()).unwrap();
            assert_eq!(head.framing, ResponseFraming::NoBody, "{status}");
            let text = String::from_utf8(out).unwrap().to_ascii_lowercase();
            assert!(!text.contains("content-length"), "{status}: {text}");
            assert!(text.contains("x-a: b\r\n"), "{status}: {text}");
        }
    }

    #[test]
    fn no_body_for_304_and_head() {
        let mut out = Vec::new();
        let head = write_head(&mut out, "304 Not Modified", [].into_iter(), facts()).unwrap();
        assert_eq!(head.framing, ResponseFraming::NoBody);
        let head = write_head(
            &mut out,
            "200 OK",
            [].into_iter(),
            RequestFacts {
                is_head: true,
                ..facts()
            },
        )
        .unwrap();
        assert_eq!(head.framing, ResponseFraming::NoBody);
    }
}
