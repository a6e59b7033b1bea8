//! `--shutdown-delay`: on TERM the server first stops being *ready* and keeps serving
//! for the delay, so that load balancers and Kubernetes take it out of rotation while
//! its listeners still accept; only then do the workers get TERM and the graceful stop
//! begin. During the delay `/readyz` answers 503, `status` says `draining`, and every
//! worker's `Slot::closing` makes each response end its connection (`Connection:
//! close`, HTTP/2 GOAWAY), so clients move to the servers that stay. A second TERM, or
//! INT/QUIT, cuts the delay short (`lifecycle::decide`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::json;

use super::{Arbiter, Event, Phase};

impl Arbiter {
    /// The master enters `Draining` (a graceful stop with `--shutdown-delay` and
    /// workers to drain): not ready, still serving, every response closing.
    pub(super) fn begin_shutdown_delay(&mut self) {
        let delay = self.cfg.shutdown_delay();
        tracing::info!(
            "Draining: not ready, still serving for {}s (shutdown_delay) before stopping the workers",
            delay.as_secs()
        );
        self.emit("draining", json!({"shutdown_delay_s": delay.as_secs()}));
        for w in self.workers.values() {
            self.scoreboard
                .slot(w.slot)
                .closing
                .store(crate::scoreboard::CLOSE_ALL, Ordering::Relaxed);
        }
        self.shutdown_delay_until = Some(Instant::now() + delay);
    }

    /// Every loop turn while draining: once the delay is over, the graceful stop.
    pub(super) fn check_shutdown_delay(&mut self) {
        if self
            .shutdown_delay_until
            .is_some_and(|until| Instant::now() >= until)
        {
            self.stop_for(Event::DelayOver, None);
        }
    }

    /// The delay ends (`event` left `Draining`): said how.
    pub(super) fn end_shutdown_delay(&mut self, event: Event) {
        self.shutdown_delay_until = None;
        match event {
            Event::DelayOver => tracing::info!("Shutdown delay over; stopping the workers"),
            Event::Stop { graceful: true } => {
                tracing::info!("Shutdown delay cut short by a second TERM")
            }
            _ => tracing::info!("Shutdown delay cut short by a quick stop"),
        }
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

    /// `Draining`: the delay runs.
    pub(super) fn draining(&self) -> bool {
        self.phase == Phase::Draining
    }
}
