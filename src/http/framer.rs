//! HTTP/1 response framing, sans I/O: the head (`response::write_head`), then body
//! data delimited as the head decided — Content-Length accounting (never more than
//! declared), chunked coding, close-delimited, or no body — queued in an `Outbox`.
//!
//! A response *source* (a WSGI iterable, an ASGI cycle's `send()`) talks to a
//! `ResponseSink` and never knows the wire format; `Http1Response` is HTTP/1's sink,
//! `h2::H2Response` an HTTP/2 stream's.

use std::io::Write;
use std::os::fd::OwnedFd;

use super::response::{is_hop_by_hop, write_head, RequestFacts, ResponseError, ResponseFraming};
use crate::net::outbox::{Outbox, SharedBytes};

/// A response's header fields, name and value as the application gave them (walked
/// twice when the head is kept for the access log).
pub trait Fields<'h>: Iterator<Item = (&'h [u8], &'h [u8])> + Clone {}

impl<'h, I: Iterator<Item = (&'h [u8], &'h [u8])> + Clone> Fields<'h> for I {}

/// What `ResponseSink::head` answers: the head is framed, or the application's status
/// or a header was refused.
pub type Framed = Result<(), ResponseError>;

/// Where a response source puts what it produces: one head, then body data, then the
/// end. After `shared` or `file`, only more `shared` and `end` may follow.
pub trait ResponseSink {
    fn head<'h>(&mut self, status: &str, headers: impl Fields<'h>, facts: RequestFacts) -> Framed;
    /// Body bytes, copied.
    fn data(&mut self, data: &[u8]);
    /// Body bytes sent from where they are when the framing allows (copied otherwise).
    fn shared(&mut self, piece: Box<dyn SharedBytes>);
    /// The rest of the body is this file from `offset` (to its end, or the declared
    /// length).
    fn file(&mut self, fd: OwnedFd, offset: u64);
    /// No more body.
    fn end(&mut self);
    /// Body bytes produced and not yet taken by the socket (backpressure).
    fn buffered(&self) -> usize;
    /// Body bytes produced so far (the access log's `%(B)s`, `post_request`'s).
    fn body_bytes(&self) -> u64;
    /// Keep the head's header lines for the access log's `%({name}o)s`.
    fn keep_head(&mut self);
}

/// An HTTP/1 response on its way: the framing state and its outbox.
pub struct Http1Response {
    pub outbox: Outbox,
    framing: ResponseFraming,
    pub status: u16,
    /// Payload bytes framed so far, file bytes excepted (the access log's `%(B)s`
    /// adds those once sent).
    body_bytes: u64,
    /// The connection closes after this response.
    close_after: bool,
    terminated: bool,
    /// The application's headers, when the access log shows response headers.
    kept_head: Option<Vec<u8>>,
}

/// An empty response (no buffer): what is left where a response was taken away.
impl Default for Http1Response {
    fn default() -> Http1Response {
        Http1Response {
            outbox: Outbox::default(),
            framing: ResponseFraming::NoBody,
            status: 0,
            body_bytes: 0,
            close_after: false,
            terminated: false,
            kept_head: None,
        }
    }
}

impl Http1Response {
    /// A response to a request with these facts, queued in `outbox`.
    pub fn new(outbox: Outbox, facts: &RequestFacts) -> Http1Response {
        Http1Response {
            outbox,
            framing: ResponseFraming::NoBody,
            status: 0,
            body_bytes: 0,
            close_after: facts.close,
            terminated: false,
            kept_head: None,
        }
    }

    /// Keeps a copy of the application's headers when the head is written
    /// (`kept_head`).
    pub fn keep_head(&mut self) {
        self.kept_head = Some(Vec::new());
    }

    /// The application's header lines (`Name: value\r\n`, the hop-by-hop ones left
    /// out as the head leaves them out), if kept.
    pub fn take_kept_head(&mut self) -> Option<Vec<u8>> {
        self.kept_head.take()
    }

    pub fn framing(&self) -> ResponseFraming {
        self.framing
    }

    /// Payload bytes sent or queued, file bytes included once sent.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes + self.outbox.file_progress().0
    }

    /// Whether the connection must close after this response: asked for, or a body
    /// shorter than its declared length, which only closing can end.
    pub fn close_after(&self) -> bool {
        let short = match self.framing {
            ResponseFraming::Length(n) => self.body_bytes() < n,
            _ => false,
        };
        self.close_after || short
    }

    /// Room left under a declared Content-Length (unbounded otherwise).
    fn room(&self) -> u64 {
        match self.framing {
            ResponseFraming::Length(n) => n.saturating_sub(self.body_bytes),
            ResponseFraming::NoBody => 0,
            ResponseFraming::Chunked | ResponseFraming::Close => u64::MAX,
        }
    }
}

impl ResponseSink for Http1Response {
    fn head<'h>(&mut self, status: &str, headers: impl Fields<'h>, facts: RequestFacts) -> Framed {
        if let Some(kept) = &mut self.kept_head {
            keep_headers(kept, headers.clone());
        }
        let written = write_head(&mut self.outbox.buf, status, headers, facts)?;
        self.framing = written.framing;
        self.status = written.status;
        self.close_after |= written.close;
        Ok(())
    }

    fn data(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let out = &mut self.outbox.buf;
        match self.framing {
            ResponseFraming::NoBody => {}
            ResponseFraming::Length(n) => {
                let room = n.saturating_sub(self.body_bytes) as usize;
                let take = room.min(data.len());
                out.extend_from_slice(&data[..take]);
                self.body_bytes += take as u64;
            }
            ResponseFraming::Chunked => {
                let _ = write!(out, "{:x}\r\n", data.len());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
                self.body_bytes += data.len() as u64;
            }
            ResponseFraming::Close => {
                out.extend_from_slice(data);
                self.body_bytes += data.len() as u64;
            }
        }
    }

    fn shared(&mut self, piece: Box<dyn SharedBytes>) {
        match self.framing {
            ResponseFraming::Length(_) => {
                let take = self.room().min(piece.bytes().len() as u64) as usize;
                self.body_bytes += take as u64;
                self.outbox.push_shared(piece, 0, take);
            }
            _ => self.data(piece.bytes()),
        }
    }

    fn file(&mut self, fd: OwnedFd, offset: u64) {
        let room = self.room();
        if room > 0 {
            self.outbox.push_file(fd, offset, room);
        }
    }

    fn end(&mut self) {
        if !self.terminated {
            self.terminated = true;
            if self.framing == ResponseFraming::Chunked {
                self.outbox.buf.extend_from_slice(b"0\r\n\r\n");
            }
        }
    }

    fn buffered(&self) -> usize {
        self.outbox.buffered()
    }

    fn body_bytes(&self) -> u64 {
        Http1Response::body_bytes(self)
    }

    fn keep_head(&mut self) {
        Http1Response::keep_head(self)
    }
}

/// The application's header lines as the access log sees them (as Gunicorn's
/// `resp.headers`): what it gave, less the hop-by-hop headers the server owns.
fn keep_headers<'h>(kept: &mut Vec<u8>, headers: impl Iterator<Item = (&'h [u8], &'h [u8])>) {
    kept.clear();
    for (name, value) in headers.filter(|(name, _)| !is_hop_by_hop(name)) {
        kept.extend_from_slice(name);
        kept.extend_from_slice(b": ");
        kept.extend_from_slice(value);
        kept.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(close: bool) -> RequestFacts {
        RequestFacts {
            minor_version: 1,
            is_head: false,
            close,
            known_length: None,
        }
    }

    fn text(r: &Http1Response) -> String {
        String::from_utf8_lossy(&r.outbox.buf).into_owned()
    }

    #[test]
    fn chunked_body_and_terminator() {
        let mut r = Http1Response::new(Outbox::default(), &facts(false));
        r.head("200 OK", std::iter::empty(), facts(false)).unwrap();
        assert_eq!(r.framing(), ResponseFraming::Chunked);
        r.data(b"hello");
        r.data(b"");
        r.end();
        r.end();
        let t = text(&r);
        assert!(t.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{t:?}");
        assert_eq!(r.body_bytes(), 5);
        assert!(!r.close_after());
    }

    #[test]
    fn declared_length_caps_the_body_and_a_short_one_closes() {
        let headers = [(&b"Content-Length"[..], &b"4"[..])];
        let mut r = Http1Response::new(Outbox::default(), &facts(false));
        r.head("200 OK", headers.iter().copied(), facts(false))
            .unwrap();
        r.data(b"abcdef");
        assert!(text(&r).ends_with("\r\n\r\nabcd"));
        assert!(!r.close_after());
        let mut short = Http1Response::new(Outbox::default(), &facts(false));
        short
            .head("200 OK", headers.iter().copied(), facts(false))
            .unwrap();
        short.data(b"ab");
        short.end();
        assert!(short.close_after());
    }

    #[test]
    fn no_body_for_204() {
        let mut r = Http1Response::new(Outbox::default(), &facts(false));
        r.head("204 No Content", std::iter::empty(), facts(false))
            .unwrap();
        r.data(b"ignored");
        r.end();
        assert!(text(&r).ends_with("\r\n\r\n"));
        assert_eq!(r.body_bytes(), 0);
    }
}
