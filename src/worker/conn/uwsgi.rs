//! A connection that speaks uwsgi (`--protocol uwsgi`): each request comes as a packet
//! (`http::uwsgi`) where an HTTP head would (`Conn::parse_head` asks here); from there
//! it takes the HTTP/1 path (body, application, response, keep-alive) unchanged. A
//! malformed packet closes the connection without an answer, as Gunicorn's ASGI worker
//! does: where the next one would start is unknown, and nginx reads the close as a
//! failed upstream.

use super::{Conn, Step};
use crate::http::uwsgi::parse_packet;

impl Conn {
    /// The buffered bytes as (the start of) a packet. `Some(Ok)`: a complete one taken
    /// into the head; `Some(Err)`: close. `None`: more bytes needed.
    pub(super) fn take_packet(&mut self) -> Option<Result<(), Step>> {
        let buf = &self.read_buf[self.read_start..];
        match parse_packet(buf, &mut self.ex.head, &mut self.ex.head_bytes) {
            Ok(Some(n)) => {
                self.read_start += n;
                Some(Ok(()))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!("closing a uwsgi connection from {}: {e}", self.peer.addr);
                Some(Err(Step::Close))
            }
        }
    }
}
