//! `Sink`: where an ASGI `Cycle`'s `send()` frames the response — an HTTP/1
//! connection's `Http1Response` or an HTTP/2 stream's `H2Response` — one
//! `ResponseSink` for the cycle over either. No I/O here.

use std::os::fd::OwnedFd;

use crate::http::framer::{Fields, Framed, Http1Response, ResponseSink};
use crate::http::h2::H2Response;
use crate::http::response::RequestFacts;
use crate::net::outbox::SharedBytes;

/// Where `send()` frames the response: an HTTP/1 connection's outbox, or an HTTP/2
/// stream's buffer (sent as its window allows, by `worker::conn::h2_asgi`).
pub enum Sink {
    Http1(Http1Response),
    Http2(H2Response),
}

impl ResponseSink for Sink {
    fn head<'h>(&mut self, status: &str, headers: impl Fields<'h>, facts: RequestFacts) -> Framed {
        match self {
            Sink::Http1(s) => s.head(status, headers, facts),
            Sink::Http2(s) => s.head(status, headers, facts),
        }
    }

    fn data(&mut self, data: &[u8]) {
        match self {
            Sink::Http1(s) => s.data(data),
            Sink::Http2(s) => s.data(data),
        }
    }

    fn shared(&mut self, piece: Box<dyn SharedBytes>) {
        match self {
            Sink::Http1(s) => s.shared(piece),
            Sink::Http2(s) => s.shared(piece),
        }
    }

    fn file(&mut self, fd: OwnedFd, offset: u64) {
        match self {
            Sink::Http1(s) => s.file(fd, offset),
            Sink::Http2(s) => s.file(fd, offset),
        }
    }

    fn end(&mut self) {
        match self {
            Sink::Http1(s) => s.end(),
            Sink::Http2(s) => s.end(),
        }
    }

    fn buffered(&self) -> usize {
        match self {
            Sink::Http1(s) => s.buffered(),
            Sink::Http2(s) => s.buffered(),
        }
    }

    fn body_bytes(&self) -> u64 {
        match self {
            Sink::Http1(s) => s.body_bytes(),
            Sink::Http2(s) => s.body_bytes,
        }
    }

    fn keep_head(&mut self) {
        match self {
            Sink::Http1(s) => s.keep_head(),
            Sink::Http2(s) => s.keep_head(),
        }
    }
}

impl From<Http1Response> for Sink {
    fn from(response: Http1Response) -> Sink {
        Sink::Http1(response)
    }
}

impl From<H2Response> for Sink {
    fn from(response: H2Response) -> Sink {
        Sink::Http2(response)
    }
}
