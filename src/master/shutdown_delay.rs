//! `--shutdown-delay`: on TERM the server first stops being *ready* and keeps serving
//! for the delay, so that load balancers and Kubernetes take it out of rotation while
//! its listeners still accept; only then do the workers get TERM and the graceful stop
//! begin. During the delay `/readyz` answers 503, `status` says `draining`, and every
//! worker's `Slot::closing` makes each response end its connection (`Connection:
//! close`, HTTP/2 GOAWAY), so clients move to the servers that stay. A second TERM, or
//! INT/QUIT, cuts the delay short (`lifecycle::decide`).
//!
//! Then `stop_workers`: TERM with `graceful_timeout`, and the listeners' backlog
//! handed to the workers (`hand_over_the_backlog`), so that a client still waiting in
//! it when the server stops is served rather than reset.

use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::json;

use super::{Arbiter, Event, Phase};
use crate::scoreboard::{CLOSE_ALL, STOP_ALL};

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
        self.mark_closing(CLOSE_ALL);
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
        if graceful && self.upgraded_to.is_none() {
            self.hand_over_the_backlog();
        }
        self.signal_all(sig);
        self.stop_deadline = Some(Instant::now() + grace);
    }

    /// A graceful stop of the last server on these listeners (no new master took them
    /// over): clients that connected and wait in a listener's backlog must be served,
    /// not reset when the socket closes. The master lets go of the listeners, so they
    /// close when the last worker exits rather than when the master does; each worker,
    /// told by `STOP_ALL`, takes whatever waits in the backlog once it is idle and
    /// exits only when it finds the backlog empty. Whichever worker leaves last has
    /// emptied it.
    fn hand_over_the_backlog(&mut self) {
        self.mark_closing(STOP_ALL);
        for l in &self.listeners {
            if let Err(e) = l.let_go() {
                tracing::warn!("cannot let go of {}: {e}", l.display);
            }
        }
    }

    /// Every worker's responses close their connections from now on (`Slot::closing`).
    fn mark_closing(&self, how: u32) {
        for w in self.workers.values() {
            self.scoreboard
                .slot(w.slot)
                .closing
                .store(how, Ordering::Relaxed);
        }
    }

    /// `Draining`: the delay runs.
    pub(super) fn draining(&self) -> bool {
        self.phase == Phase::Draining
    }
}
