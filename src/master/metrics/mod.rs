//! Prometheus metrics from the master: `Ledger` keeps what the scoreboard forgets (the
//! tallies of exited workers, exits by reason, reloads by result), `render` writes the
//! text exposition format from the scoreboard, the worker table and the ledger, for
//! `--metrics-bind`'s `/metrics` (`server`) and the control protocol's `metrics`.
//! Reading the scoreboard is a few loads per worker: the workers pay nothing for a
//! scrape.

mod dirty;
mod ledger;
mod render;
pub mod server;

pub use ledger::{ExitReason, Ledger};

use std::sync::atomic::Ordering;

use super::Arbiter;
use crate::scoreboard::{WorkerState, DURATION_BOUNDS_US};

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const BUCKETS: usize = DURATION_BOUNDS_US.len() + 1;

impl Arbiter {
    /// A poll event for the metrics server: complete requests are answered now.
    pub(super) fn handle_metrics_event(&mut self, token: mio::Token) {
        let Some(server) = self.metrics.as_mut() else {
            return;
        };
        let complete = server.handle_event(token, self.poll.registry());
        if complete.is_empty() {
            return;
        }
        for (id, route) in complete {
            let page = match route {
                server::Route::Get { page, .. } => Some(self.page(page)),
                _ => None,
            };
            if let Some(server) = self.metrics.as_mut() {
                server.answer(id, route, page, self.poll.registry());
            }
        }
    }

    fn page(&self, page: server::Page) -> server::Answer {
        match page {
            server::Page::Metrics => server::Answer::metrics(self.metrics_text()),
            server::Page::Livez => match self.liveness() {
                Ok(line) => server::Answer::probe(true, line),
                Err(line) => server::Answer::probe(false, line),
            },
            server::Page::Readyz => match self.readiness() {
                Ok(line) => server::Answer::probe(true, line),
                Err(line) => server::Answer::probe(false, line),
            },
        }
    }

    /// Every loop turn: scrape connections past their time or done are closed; once a
    /// second Gunicorn's statsd gauges go out; what statsd has gathered is sent.
    pub(super) fn sweep_metrics(&mut self) {
        if let Some(server) = self.metrics.as_mut() {
            server.sweep(self.poll.registry());
        }
        if self.gauges_sent.elapsed() >= std::time::Duration::from_secs(1) {
            self.gauges_sent = std::time::Instant::now();
            crate::statsd::gauge("gunicorn.workers", self.workers.len() as u64);
            crate::statsd::gauge("rgun.workers.target", self.target as u64);
            if let Some(scaling) = &self.scaling {
                crate::statsd::gauge("rgun.workers.min", scaling.floor as u64);
                crate::statsd::gauge("rgun.workers.max", scaling.ceiling as u64);
            }
            self.dirty_statsd();
            if self.cfg.observability.enable_backlog_metric {
                let backlog: u64 = self
                    .listeners
                    .iter()
                    .filter_map(|l| listen_queue(&l.socket))
                    .map(|q| u64::from(q.waiting))
                    .sum();
                crate::statsd::histogram("gunicorn.backlog", backlog);
            }
        }
        crate::statsd::flush(std::time::Instant::now());
    }

    /// The state `status` shows for a worker.
    pub(super) fn worker_state(&self, w: &super::WorkerProc) -> &'static str {
        if w.retiring {
            return "stopping";
        }
        if !w.ready {
            return "booting";
        }
        if w.adopted {
            // Serving, from a scoreboard this image cannot read (`reexec`): ready.
            return "idle";
        }
        match self.scoreboard.slot(w.slot).state.load(Ordering::Relaxed) {
            s if s == WorkerState::Busy as u32 => "busy",
            s if s == WorkerState::Stopping as u32 => "stopping",
            s if s == WorkerState::Booting as u32 => "booting",
            _ => "idle",
        }
    }

    /// Why a worker that just exited left.
    pub(super) fn exit_reason(&self, w: &super::WorkerProc, code: Option<i32>) -> ExitReason {
        if self.phase.is_stopping() {
            ExitReason::Shutdown
        } else if w.aborted.is_some() {
            ExitReason::Timeout
        } else if let Some(reason) = w.leaving {
            reason
        } else if !w.ready {
            ExitReason::BootFailure
        } else if code == Some(0) {
            ExitReason::MaxRequests
        } else {
            ExitReason::Crash
        }
    }
}

/// A listening TCP socket's accept queue.
pub struct ListenQueue {
    pub waiting: u32,
    pub limit: u32,
}

/// Linux reports a listener's accept queue in TCP_INFO: `tcpi_unacked` is its
/// length and `tcpi_sacked` its limit. `None` for a Unix socket.
pub fn listen_queue(socket: &socket2::Socket) -> Option<ListenQueue> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed tcp_info is a valid value of this plain-integer struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(ListenQueue {
        waiting: info.tcpi_unacked,
        limit: info.tcpi_sacked,
    })
}
