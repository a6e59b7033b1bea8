//! HTTP, sans I/O: HTTP/1.1 request-head parsing, chunked body decoding and
//! response framing; uwsgi packets parsed into the same request head; an HTTP/2
//! stream's request head and response buffer (`h2`); what every request shares
//! whatever carried it (`body::Body`, `request::RequestInfo`, the scheme decision).
//! Sockets live in `worker::conn`; nothing here knows Python.

pub mod body;
pub mod chunked;
pub mod forwarder;
pub mod framer;
pub mod h2;
pub mod head;
pub mod lenient;
pub mod proxy;
pub mod request;
pub mod response;
pub mod scan;
pub mod scheme;
pub mod uwsgi;
pub mod websocket;
pub mod ws_deflate;

/// Why a request was refused before it reached the application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request line too long")]
    RequestLineTooLong,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("header field too large")]
    HeaderFieldTooLarge,
    #[error("request head too large")]
    HeadersTooLarge,
    #[error("bad request: {0}")]
    Malformed(&'static str),
    /// Gunicorn's ConfigurationProblem: the front end's fault, a 500.
    #[error("request path outside the SCRIPT_NAME its front end forwarded")]
    OutsideScriptName,
}

impl HttpError {
    /// The one place parse errors become status codes.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HttpError::RequestLineTooLong => (414, "Request-URI Too Long"),
            HttpError::TooManyHeaders
            | HttpError::HeaderFieldTooLarge
            | HttpError::HeadersTooLarge => (431, "Request Header Fields Too Large"),
            HttpError::Malformed(_) => (400, "Bad Request"),
            HttpError::OutsideScriptName => (500, "Internal Server Error"),
        }
    }
}

/// `%XX` → byte; malformed escapes stay as they are.
pub fn percent_decode(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !input.contains(&b'%') {
        return std::borrow::Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}
