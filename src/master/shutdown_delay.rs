//! `--shutdown-delay`: on TERM the server first stops being *ready* and keeps serving
//! for the delay, so that load balancers and Kubernetes take it out of rotation while
//! its listeners still accept; only then do the workers get TERM and the graceful stop
//! begin. During the delay `/readyz` answers 503, `status` says `draining`, and every
//! worker's `Slot::closing` makes each response end its connection (`Connection:
//! close`, HTTP/2 GOAWAY), so clients move to the servers that stay. A second TERM, or
//! INT/QUIT, cuts the delay short.

use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::json;

use super::Arbiter;

impl Arbiter {
    /// Starts the delay (a graceful stop with `--shutdown-delay` and workers to drain);
    /// false when there is none and the workers should be stopped now.
    pub(super) fn begin_shutdown_delay(&mut self) -> bool {
        let delay = self.cfg.shutdown_delay();
        if delay.is_zero() || self.workers.is_empty() {
            return false;
        }
        tracing::info!(
            "Draining: not ready, still serving for {}s (shutdown_delay) before stopping the workers",
            delay.as_secs()
        );
        self.emit("draining", json!({"shutdown_delay_s": delay.as_secs()}));
        for w in self.workers.values() {
            self.scoreboard
                .slot(w.slot)
                .closing
                .store(1, Ordering::Relaxed);
        }
        self.shutdown_delay_until = Some(Instant::now() + delay);
        true
    }

    /// Ends the delay when it is over (called every loop turn while stopping), or
    /// at once when `cut_short` (a second TERM, INT, QUIT).
    pub(super) fn check_shutdown_delay(&mut self, cut_short: Option<&str>) {
        let Some(until) = self.shutdown_delay_until else {
            return;
        };
        match cut_short {
            Some(why) => tracing::info!("Shutdown delay cut short by {why}"),
            None if Instant::now() < until => return,
            None => tracing::info!("Shutdown delay over; stopping the workers"),
        }
        self.shutdown_delay_until = None;
        self.stop_workers(true);
    }

    /// TERM (graceful) or QUIT (quick) to every worker, with the time they have.
    pub(super) fn stop_workers(&mut self, graceful: bool) {
        let (sig, grace) = if graceful {
            (Signal::SIGTERM, self.cfg.graceful_timeout())
        } else {
            (Signal::SIGQUIT, super::QUICK_STOP_GRACE)
        };
        self.signal_all(sig);
        self.stop_deadline = Some(Instant::now() + grace);
    }

    /// The master's state for `status`: `draining` during the delay.
    pub(super) fn draining(&self) -> bool {
        self.shutdown_delay_until.is_some()
    }
}
