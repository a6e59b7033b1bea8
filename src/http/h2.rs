//! HTTP/2's side of the HTTP engine, sans I/O: a stream's request turned into the
//! HTTP/1 head the rest of the server already understands (`request_head`), and
//! `H2Response`, the `ResponseSink` that turns what a response source produces into
//! an `http::Response` head and body bytes for the stream.
//!
//! The head is re-parsed by `head::parse_head`, so an HTTP/2 request meets every rule
//! an HTTP/1 one does (limits, control bytes, targets) and the WSGI environ, the ASGI
//! scope, the access log and the hooks read it the same way. Nothing here knows the
//! socket or the `h2` connection.

use std::os::fd::OwnedFd;

use http::header::{HeaderName, HeaderValue};

use super::framer::{Fields, Framed, ResponseSink};
use super::head::{parse_head, HeadLimits, RequestHead};
use super::response::{RequestFacts, ResponseError};
use super::HttpError;
use crate::net::outbox::SharedBytes;

/// What an HTTP/2 connection announces in its SETTINGS and enforces
/// (`--http2-*`).
#[derive(Debug, Clone, Copy)]
pub struct H2Settings {
    pub max_concurrent_streams: u32,
    pub initial_window_size: u32,
    pub max_frame_size: u32,
    pub max_header_list_size: u32,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            max_concurrent_streams: 100,
            initial_window_size: 65_535,
            max_frame_size: 16_384,
            max_header_list_size: 65_536,
        }
    }
}

/// Response headers that belong to one HTTP/1 connection and are forbidden in HTTP/2
/// (RFC 9113 8.2.2): dropped from what the application sets.
const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Writes the HTTP/1.1 head equivalent to an HTTP/2 request into `out` and parses it.
/// `:authority` becomes `Host` when the request has none; a body of `body_len` bytes
/// gets a `Content-Length` when the client sent none (HTTP/2 frames bodies itself).
pub fn request_head(
    parts: &http::request::Parts,
    body_len: u64,
    limits: &HeadLimits,
    out: &mut Vec<u8>,
    head: &mut RequestHead,
) -> Result<(), HttpError> {
    out.clear();
    let target = match parts.uri.path_and_query().map_or("/", |p| p.as_str()) {
        "" => "/",
        target => target,
    };
    let authority = (!parts.headers.contains_key(http::header::HOST))
        .then(|| parts.uri.authority())
        .flatten();
    // The whole head in one allocation: grown field by field, a stream's (new) buffer
    // was reallocated several times.
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    out.reserve(
        parts.method.as_str().len()
            + target.len()
            + b"  HTTP/1.1\r\n".len()
            + authority.map_or(0, |a| a.as_str().len() + b"host: \r\n".len())
            + fields
            + b"content-length: 18446744073709551615\r\n\r\n".len(),
    );
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(authority) = authority {
        push_field(out, b"host", authority.as_str().as_bytes());
    }
    for (name, value) in &parts.headers {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if body_len > 0 && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        push_field(out, b"content-length", body_len.to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    match parse_head(out, limits, head)? {
        Some(_) => {
            head.http2 = true;
            Ok(())
        }
        None => Err(HttpError::Malformed("incomplete request head")),
    }
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A stream's response as the source produces it: the head once, then body bytes
/// waiting for the stream's flow-control window.
#[derive(Default)]
pub struct H2Response {
    /// The head, until the stream driver sends it.
    pub head: Option<http::Response<()>>,
    pub status: u16,
    /// Body bytes produced and not yet handed to the stream.
    pub body: Vec<u8>,
    /// Body bytes produced in all (the access log's `%(B)s`).
    pub body_bytes: u64,
    /// The source has produced everything.
    pub ended: bool,
    /// A HEAD request: the body is counted nowhere and sent never.
    is_head: bool,
    /// The header lines (`name: value\r\n`), when the access log shows response
    /// headers.
    pub kept_head: Option<Vec<u8>>,
}

impl H2Response {
    pub fn new(is_head: bool) -> H2Response {
        H2Response {
            is_head,
            ..H2Response::default()
        }
    }

    /// Keeps the header lines when the head is made (`kept_head`).
    pub fn keep_head(&mut self) {
        self.kept_head = Some(Vec::new());
    }

    /// The head's header lines, if kept.
    pub fn kept_head(&self) -> &[u8] {
        self.kept_head.as_deref().unwrap_or_default()
    }
}

impl ResponseSink for H2Response {
    fn head<'h>(&mut self, status: &str, headers: impl Fields<'h>, _facts: RequestFacts) -> Framed {
        let code = status
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .and_then(|c| http::StatusCode::from_u16(c).ok())
            .filter(|c| c.as_u16() >= 200)
            .ok_or_else(|| ResponseError::BadStatus(status.to_owned()))?;
        let mut response = http::Response::new(());
        *response.status_mut() = code;
        let map = response.headers_mut();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name)
                .map_err(|_| ResponseError::BadHeaderName(lossy(name)))?;
            if CONNECTION_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let value = HeaderValue::from_bytes(value)
                .map_err(|_| ResponseError::BadHeaderValue(name.to_string()))?;
            map.append(name, value);
        }
        if let Some(kept) = &mut self.kept_head {
            kept.clear();
            for (name, value) in response.headers() {
                kept.extend_from_slice(name.as_str().as_bytes());
                kept.extend_from_slice(b": ");
                kept.extend_from_slice(value.as_bytes());
                kept.extend_from_slice(b"\r\n");
            }
        }
        self.status = code.as_u16();
        self.head = Some(response);
        Ok(())
    }

    fn data(&mut self, data: &[u8]) {
        if !self.is_head {
            self.body.extend_from_slice(data);
            self.body_bytes += data.len() as u64;
        }
    }

    fn shared(&mut self, piece: Box<dyn SharedBytes>) {
        self.data(piece.bytes());
    }

    fn file(&mut self, fd: OwnedFd, offset: u64) {
        // The file is read whole into the stream's buffer: HTTP/2 DATA frames are
        // copies anyway (no sendfile through framing).
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::from(fd);
        let mut rest = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_ok() && file.read_to_end(&mut rest).is_ok() {
            self.data(&rest);
        }
    }

    fn end(&mut self) {
        self.ended = true;
    }

    fn buffered(&self) -> usize {
        self.body.len()
    }

    fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    fn keep_head(&mut self) {
        H2Response::keep_head(self)
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_request_becomes_an_http1_head_with_host_and_length() {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://example.com:8000/a/b?x=1")
            .header("x-thing", "yes")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let (mut out, mut head) = (Vec::new(), RequestHead::default());
        request_head(&parts, 5, &HeadLimits::default(), &mut out, &mut head).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("POST /a/b?x=1 HTTP/1.1\r\nhost: example.com:8000\r\n"));
        assert!(text.contains("x-thing: yes\r\n"));
        assert!(text.ends_with("content-length: 5\r\n\r\n"));
        assert_eq!(&out[head.query.clone()], b"x=1");
    }

    #[test]
    fn connection_headers_are_dropped_from_a_response() {
        let mut r = H2Response::new(false);
        let facts = RequestFacts {
            minor_version: 1,
            is_head: false,
            close: false,
            known_length: None,
        };
        let headers: Vec<(&[u8], &[u8])> =
            vec![(b"Content-Type", b"text/plain"), (b"Connection", b"close")];
        r.head("201 Created", headers.into_iter(), facts).unwrap();
        let head = r.head.unwrap();
        assert_eq!(head.status(), 201);
        assert_eq!(head.headers().len(), 1);
        assert_eq!(head.headers()["content-type"], "text/plain");
    }
}
