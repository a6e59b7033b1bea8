//! The end of a connection after an error or a `Connection: close` response: send
//! what is left (a server-generated error response), half-close, then read and discard
//! for a short while so the client sees our answer rather than a reset.

use std::io;
use std::time::{Duration, Instant};

use super::{Conn, State, Step};
use crate::http::response::write_error;
use crate::http::HttpError;
use crate::net::transport::Transport;

/// After an error response, how long we read and discard before closing, so the client
/// sees our answer rather than a reset.
const DRAIN_SECS: u64 = 1;

impl Conn {
    /// Answers a request the parser refused, then closes.
    pub(super) fn fail(&mut self, e: &HttpError) -> Step {
        tracing::debug!("refusing request from {}: {e}", self.peer.addr);
        let (code, reason) = e.status();
        self.fail_status(code, reason)
    }

    pub(super) fn fail_status(&mut self, code: u16, reason: &str) -> Step {
        let mut out = Vec::new();
        write_error(&mut out, code, reason);
        self.state = State::Closing { out, pos: 0 };
        self.in_request = false;
        Step::Continue
    }

    pub(super) fn shutdown_and_drain(&mut self) -> Step {
        self.transport.shutdown_write();
        self.state = State::Draining;
        self.deadline = Instant::now() + Duration::from_secs(DRAIN_SECS);
        self.read_buf.clear();
        self.read_start = 0;
        Step::Continue
    }

    pub(super) fn step_draining(&mut self) -> Step {
        loop {
            self.read_buf.clear();
            self.read_start = 0;
            match self.fill() {
                Ok(0) => return Step::Close,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(_) => return Step::Close,
            }
        }
    }
}

/// `State::Closing`: writes the rest of a server-generated response (`out` from
/// `pos`); `None` once all of it (and what TLS holds) is sent, when the connection
/// half-closes (`Conn::shutdown_and_drain`).
pub(super) fn send_rest(transport: &mut Transport, out: &[u8], pos: &mut usize) -> Option<Step> {
    while *pos < out.len() {
        match transport.write(&out[*pos..]) {
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(Step::WaitWrite),
            Err(_) => return Some(Step::Close),
        }
    }
    match transport.flush_pending() {
        Ok(()) => None,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(Step::WaitWrite),
        Err(_) => Some(Step::Close),
    }
}
