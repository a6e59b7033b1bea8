//! A connection that speaks uwsgi (`--protocol uwsgi`): each request comes as a packet
//! (`http::uwsgi`) instead of an HTTP head; from there it takes the HTTP/1 path (body,
//! application, response, keep-alive) unchanged. A malformed packet closes the
//! connection without an answer, as Gunicorn does: where the next one would start is
//! unknown, and the front end reads a close as a failed upstream.

use super::{Conn, Exec, Step};
use crate::http::uwsgi::parse_packet;
use crate::worker::Shared;

impl Conn {
    /// Waiting for (the rest of) a request packet, after a PROXY header if one is due.
    pub(super) fn step_packet(&mut self, exec: Exec<'_>, ctx: &Shared) -> Step {
        let parsed = if self.read_start == self.read_buf.len() {
            None
        } else if self.proxy_pending.is_some() {
            self.take_proxy_header()
        } else {
            self.parse_packet(exec, ctx)
        };
        parsed.unwrap_or_else(|| self.read_head(ctx))
    }

    /// The buffered bytes as (the start of) a packet. `None`: more bytes needed.
    fn parse_packet(&mut self, exec: Exec<'_>, ctx: &Shared) -> Option<Step> {
        let buf = &self.read_buf[self.read_start..];
        match parse_packet(buf, &mut self.ex.head, &mut self.ex.head_bytes) {
            Ok(Some(n)) => {
                self.read_start += n;
                Some(self.on_head(exec, ctx))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!("closing a uwsgi connection from {}: {e}", self.peer.addr);
                Some(Step::Close)
            }
        }
    }
}
