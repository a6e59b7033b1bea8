//! The dirty pool's Prometheus families (`rgun_dirty_*`), from the figures
//! `master::dirty` reports.

use super::render::Exposition;
use crate::master::Arbiter;

impl Arbiter {
    /// The dirty pool: its workers, and the router's counts of calls (they restart
    /// from zero with a new router, which Prometheus reads as a counter reset).
    pub(super) fn render_dirty(&self, o: &mut Exposition) {
        let Some(d) = self.dirty_metrics() else {
            return;
        };
        o.family(
            "rgun_dirty_workers",
            "gauge",
            "Dirty workers of the serving generation that are ready.",
        );
        o.sample("rgun_dirty_workers", &[], d.ready);
        for (name, help, value) in [
            ("rgun_dirty_calls_total", "Dirty calls answered (errors included).", d.calls),
            ("rgun_dirty_errors_total", "Dirty calls answered with an error (time-outs, lost workers, the app's exceptions).", d.errors),
            ("rgun_dirty_timeouts_total", "Dirty calls past --dirty-timeout.", d.timeouts),
        ] {
            o.family(name, "counter", help);
            o.sample(name, &[], value);
        }
        o.family(
            "rgun_dirty_call_seconds_total",
            "counter",
            "Time answered dirty calls took, summed.",
        );
        o.sample(
            "rgun_dirty_call_seconds_total",
            &[],
            format_args!("{:.6}", d.call_us as f64 / 1e6),
        );
        o.family(
            "rgun_dirty_queued",
            "gauge",
            "Dirty calls waiting for a free worker that holds their app.",
        );
        o.sample("rgun_dirty_queued", &[], d.queued);
        o.family(
            "rgun_dirty_in_flight",
            "gauge",
            "Dirty calls running in dirty workers.",
        );
        o.sample("rgun_dirty_in_flight", &[], d.in_flight);
    }
}
