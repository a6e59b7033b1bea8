//! The HTTP/1.1 protocol, sans I/O: request-head parsing, chunked body decoding and
//! response-head assembly. Sockets live in `worker::conn`; nothing here knows Python.

pub mod chunked;
pub mod framer;
pub mod head;
pub mod proxy;
pub mod response;
pub mod scan;

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
        }
    }
}
