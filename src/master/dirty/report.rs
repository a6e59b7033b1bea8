//! What the master reports of the dirty pool: `status`'s `dirty` block, the figures
//! `/metrics` renders and statsd's `gunicorn.dirty.*`. It changes nothing in the pool
//! but the statsd counters' last-sent values.

use serde_json::{json, Value};

use crate::master::Arbiter;

/// What `/metrics` and statsd show of the pool.
pub(in crate::master) struct DirtyMetrics {
    pub ready: u64,
    pub calls: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub call_us: u64,
    pub queued: u64,
    pub in_flight: u64,
}

impl Arbiter {
    /// The pool's figures for `/metrics` and statsd (None: no pool).
    pub(in crate::master) fn dirty_metrics(&self) -> Option<DirtyMetrics> {
        let pool = self.dirty.as_ref()?;
        let n = |k: &str| pool.counters.get(k).and_then(Value::as_u64).unwrap_or(0);
        Some(DirtyMetrics {
            ready: pool.live(self.generation).filter(|w| w.ready).count() as u64,
            calls: n("calls"),
            errors: n("errors"),
            timeouts: n("timeouts"),
            call_us: n("call_us"),
            queued: n("queued"),
            in_flight: n("in_flight"),
        })
    }

    /// Once a second: the pool's gauges, its counters as sums since the last send
    /// (`gunicorn.dirty.*`), and the mean time of the calls answered since then
    /// (`gunicorn.dirty.duration`, one timing per send: the router counts, it does not
    /// keep each call's time).
    pub(in crate::master) fn dirty_statsd(&mut self) {
        let Some(d) = self.dirty_metrics() else {
            return;
        };
        crate::statsd::gauge("gunicorn.dirty.workers", d.ready);
        crate::statsd::gauge("gunicorn.dirty.queued", d.queued);
        crate::statsd::gauge("gunicorn.dirty.in_flight", d.in_flight);
        let pool = self.dirty.as_mut().expect("present");
        let now = [d.calls, d.errors, d.timeouts, d.call_us];
        let since = |i: usize| now[i].checked_sub(pool.statsd_sent[i]).unwrap_or(now[i]);
        if since(0) > 0 {
            crate::statsd::timing("gunicorn.dirty.duration", since(3) / since(0));
        }
        for (i, name) in [
            "gunicorn.dirty.calls",
            "gunicorn.dirty.errors",
            "gunicorn.dirty.timeouts",
        ]
        .into_iter()
        .enumerate()
        {
            // A new router counts from zero again (`since`): send its whole count.
            crate::statsd::count(name, since(i));
        }
        pool.statsd_sent = now;
    }

    /// `status`'s `dirty` section.
    pub(in crate::master) fn dirty_status(&self) -> Value {
        let Some(pool) = &self.dirty else {
            return Value::Null;
        };
        let workers: Vec<Value> = pool
            .workers
            .values()
            .map(|w| {
                json!({
                    "pid": w.pid.as_raw(),
                    "generation": w.generation,
                    "index": w.index,
                    "state": if w.retiring { "stopping" } else if w.ready { "ready" } else { "booting" },
                    "apps": w.apps,
                    "age_s": w.spawned.elapsed().as_secs(),
                    "last_heartbeat_s": w.last_beat.elapsed().as_secs_f64(),
                    "rss_bytes": crate::process::rss_bytes(w.pid.as_raw()),
                })
            })
            .collect();
        json!({
            "socket": pool.path,
            "router_pid": pool.router.as_ref().map(|r| r.pid.as_raw()),
            "target": pool.target,
            "workers": workers,
            "timeouts": pool.timeouts,
            "calls": pool.counters,
        })
    }
}
