//! A worker's stop: `begin_stop` leaves the listeners and lets what is in flight
//! finish; once nothing is, the loop ends, unless the whole server is stopping
//! (`Slot::closing` is `STOP_ALL`): then this worker may be the last process holding
//! the listeners, whose closing would reset every client waiting in their backlog, so
//! it serves those clients first (`take_the_backlog`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{EventLoop, ACCEPT_BATCH};
use crate::scoreboard::WorkerState;
use crate::worker::conn::Exec;

impl EventLoop<'_> {
    /// Stop accepting and finish what is in flight. Keep-alive connections are not cut
    /// while a client may be sending on them: a request that still arrives is served
    /// with `Connection: close`, and idle ones close at their usual keep-alive deadline,
    /// the moment clients already expect a server to close.
    pub(super) fn begin_stop(&mut self) {
        self.accepting = false;
        self.stop_by = Some(Instant::now() + self.graceful_timeout);
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.shared.slot.set_state(WorkerState::Stopping);
        self.listening.stop(&self.poll);
        // Open WebSockets have no natural end to wait for: they get a turn now, to
        // close with 1001 (going away). HTTP/2 connections get one to send GOAWAY.
        let sockets: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(k, c)| {
                c.as_ref()
                    .filter(|c| c.is_websocket() || c.is_http2())
                    .map(|_| k)
            })
            .collect();
        for key in sockets {
            self.wake(key);
        }
    }

    /// An idle worker of a stopping server takes the clients waiting in the listeners'
    /// backlog (at most `ACCEPT_BATCH` per listener per turn, as many as it may hold)
    /// and serves them, each with `Connection: close`. `false` when none waits (or
    /// the server is not stopping): the worker may go, and lets go of the listeners at
    /// once, so the last one to leave closes them with their backlog empty.
    pub(super) fn take_the_backlog(&mut self, exec: Exec<'_>) -> bool {
        if !self.shared.server_stopping() {
            return false;
        }
        let mut taken = false;
        for index in 0..self.listening.listeners().len() {
            let mut tries = 0;
            while tries < ACCEPT_BATCH && self.open < self.shared.settings.max_connections {
                tries += 1;
                match self.listening.listeners()[index].socket.accept() {
                    Ok((sock, addr)) => {
                        taken = true;
                        if let Some(conn) = self.open_conn(index, sock, &addr) {
                            self.admit(exec, conn);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                    // Empty (or failing: nothing more this worker can do for them).
                    Err(_) => break,
                }
            }
        }
        if !taken {
            for l in self.listening.listeners() {
                let _ = l.let_go();
            }
        }
        taken
    }
}
