//! The text exposition format of every family `/metrics` serves (requests, workers,
//! lifecycle, autoscaling, backlog; the dirty pool's in `dirty`), read from the
//! scoreboard, the worker table and the `Ledger`; and `status`'s `traffic`, the same
//! figures summed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use rgunctl::protocol::Traffic;

use super::{listen_queue, ExitReason, ListenQueue, BUCKETS, CLASSES};
use crate::master::Arbiter;
use crate::process::rss_bytes;
use crate::scoreboard::{Slot, DURATION_BOUNDS_US};

/// The text exposition format, one family at a time.
pub(super) struct Exposition(String);

impl Exposition {
    pub(super) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub(super) fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Arbiter {
    /// Every metric, in the text exposition format.
    pub(in crate::master) fn metrics_text(&self) -> String {
        let mut out = Exposition(String::with_capacity(8192));
        let o = &mut out;
        o.family("rgun_build_info", "gauge", "The running rgun's version.");
        o.sample(
            "rgun_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        o.family(
            "rgun_uptime_seconds",
            "gauge",
            "Seconds since the master started.",
        );
        o.sample(
            "rgun_uptime_seconds",
            &[],
            format_args!("{:.3}", self.started.elapsed().as_secs_f64()),
        );
        self.render_requests(o);
        self.render_workers(o);
        self.render_lifecycle(o);
        self.render_backlog(o);
        self.render_dirty(o);
        out.0
    }

    fn render_requests(&self, o: &mut Exposition) {
        let live: BTreeMap<usize, &'static Slot> = self
            .workers
            .keys()
            .map(|&slot| (slot, self.scoreboard.slot(slot)))
            .collect();
        let mut slots: Vec<usize> = self.ledger.retired_by_class.keys().copied().collect();
        slots.extend(live.keys());
        slots.sort_unstable();
        slots.dedup();
        o.family(
            "rgun_requests_total",
            "counter",
            "Responses sent, by worker (scoreboard slot) and status class.",
        );
        for slot in slots {
            let retired = self
                .ledger
                .retired_by_class
                .get(&slot)
                .copied()
                .unwrap_or_default();
            let worker = slot.to_string();
            for (i, class) in CLASSES.iter().enumerate() {
                let now = live
                    .get(&slot)
                    .map_or(0, |s| s.tally.by_class[i].load(Ordering::Relaxed));
                o.sample(
                    "rgun_requests_total",
                    &[("worker", &worker), ("status", class)],
                    retired[i] + now,
                );
            }
        }
        let (buckets, sum_us) = self.duration_histogram();
        o.family(
            "rgun_request_duration_seconds",
            "histogram",
            "From the request's first byte to its last response byte sent.",
        );
        let mut cumulative = 0;
        for (i, count) in buckets.iter().enumerate() {
            cumulative += count;
            let le = DURATION_BOUNDS_US
                .get(i)
                .map_or("+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
            o.sample(
                "rgun_request_duration_seconds_bucket",
                &[("le", &le)],
                cumulative,
            );
        }
        o.sample(
            "rgun_request_duration_seconds_sum",
            &[],
            format_args!("{:.6}", sum_us as f64 / 1e6),
        );
        o.sample("rgun_request_duration_seconds_count", &[], cumulative);
        o.family(
            "rgun_requests_in_flight",
            "gauge",
            "Requests begun and not yet finished.",
        );
        o.sample("rgun_requests_in_flight", &[], self.in_flight());
    }

    /// Requests begun and not finished, all workers.
    fn in_flight(&self) -> u64 {
        self.workers
            .keys()
            .map(|&slot| u64::from(self.scoreboard.slot(slot).in_flight.load(Ordering::Relaxed)))
            .sum()
    }

    /// Responses per duration bucket (not cumulative) and the durations' sum in
    /// microseconds, exited workers' included.
    fn duration_histogram(&self) -> ([u64; BUCKETS], u64) {
        let mut buckets = self.ledger.retired_buckets;
        let mut sum_us = self.ledger.retired_sum_us;
        for &slot in self.workers.keys() {
            let s = self.scoreboard.slot(slot);
            for (b, c) in buckets.iter_mut().zip(&s.tally.duration_buckets) {
                *b += c.load(Ordering::Relaxed);
            }
            sum_us += s.tally.duration_sum_us.load(Ordering::Relaxed);
        }
        (buckets, sum_us)
    }

    /// `status`'s `traffic`: the figures `/metrics` has, summed over the workers.
    pub(in crate::master) fn traffic(&self) -> Traffic {
        let mut responses = [0u64; 5];
        for retired in self.ledger.retired_by_class.values() {
            for (sum, n) in responses.iter_mut().zip(retired) {
                *sum += n;
            }
        }
        for &slot in self.workers.keys() {
            let by_class = &self.scoreboard.slot(slot).tally.by_class;
            for (sum, n) in responses.iter_mut().zip(by_class) {
                *sum += n.load(Ordering::Relaxed);
            }
        }
        let (buckets, sum_us) = self.duration_histogram();
        Traffic {
            responses,
            duration_bounds_s: DURATION_BOUNDS_US
                .iter()
                .map(|us| *us as f64 / 1e6)
                .collect(),
            duration_counts: buckets.to_vec(),
            duration_sum_s: sum_us as f64 / 1e6,
            in_flight: self.in_flight(),
        }
    }

    fn render_workers(&self, o: &mut Exposition) {
        o.family(
            "rgun_workers",
            "gauge",
            "Worker processes, by state and generation.",
        );
        let mut by_state: BTreeMap<(u32, &str), u64> = BTreeMap::new();
        for w in self.workers.values() {
            *by_state
                .entry((w.generation, self.worker_state(w)))
                .or_default() += 1;
        }
        for ((generation, state), n) in by_state {
            o.sample(
                "rgun_workers",
                &[("state", state), ("generation", &generation.to_string())],
                n,
            );
        }
        o.family(
            "rgun_workers_target",
            "gauge",
            "Workers the master keeps running.",
        );
        o.sample("rgun_workers_target", &[], self.target);
        self.autoscale_metrics(o);
        o.family(
            "rgun_generation",
            "gauge",
            "The generation serving traffic.",
        );
        o.sample("rgun_generation", &[], self.generation);
        let per_worker: [(&str, &str, &str); 3] = [
            (
                "rgun_worker_pid",
                "gauge",
                "The process id in each worker slot.",
            ),
            (
                "rgun_worker_connections",
                "gauge",
                "Client connections each worker holds open.",
            ),
            (
                "rgun_worker_rss_bytes",
                "gauge",
                "Resident memory of each worker.",
            ),
        ];
        for (i, (name, kind, help)) in per_worker.iter().enumerate() {
            o.family(name, kind, help);
            for w in self.workers.values() {
                let slot = self.scoreboard.slot(w.slot);
                let value = match i {
                    0 => w.pid.as_raw() as u64,
                    1 => u64::from(slot.connections.load(Ordering::Relaxed)),
                    _ => rss_bytes(w.pid.as_raw()),
                };
                o.sample(name, &[("worker", &w.slot.to_string())], value);
            }
        }
    }

    fn render_lifecycle(&self, o: &mut Exposition) {
        o.family(
            "rgun_worker_spawns_total",
            "counter",
            "Worker processes started.",
        );
        o.sample("rgun_worker_spawns_total", &[], self.totals.spawned);
        o.family(
            "rgun_worker_exits_total",
            "counter",
            "Worker processes that have exited, by reason.",
        );
        for reason in [
            ExitReason::Timeout,
            ExitReason::MaxRequests,
            ExitReason::MaxRss,
            ExitReason::Crash,
            ExitReason::BootFailure,
            ExitReason::Scale,
            ExitReason::Reload,
            ExitReason::Kill,
            ExitReason::Shutdown,
        ] {
            let n = self.ledger.exits.get(&reason).copied().unwrap_or(0);
            o.sample("rgun_worker_exits_total", &[("reason", reason.label())], n);
        }
        o.family(
            "rgun_reloads_total",
            "counter",
            "Reloads finished, by result (failed: rolled back, the old generation kept serving).",
        );
        o.sample(
            "rgun_reloads_total",
            &[("result", "ok")],
            self.ledger.reloads_ok,
        );
        o.sample(
            "rgun_reloads_total",
            &[("result", "failed")],
            self.ledger.reloads_failed,
        );
        o.family(
            "rgun_reloading",
            "gauge",
            "1 while a reload is in progress.",
        );
        o.sample("rgun_reloading", &[], u8::from(self.reload.is_some()));
        o.family(
            "rgun_accept_errors_total",
            "counter",
            "accept() calls that failed for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM).",
        );
        o.sample("rgun_accept_errors_total", &[], self.accept_watch.total);
        o.family(
            "rgun_accept_failing",
            "gauge",
            "1 while workers cannot accept connections (out of descriptors or memory).",
        );
        o.sample(
            "rgun_accept_failing",
            &[],
            u8::from(self.accept_failing().is_some()),
        );
    }

    /// Autoscaling's bounds, whether it is paused, and its decisions (only when on).
    fn autoscale_metrics(&self, o: &mut Exposition) {
        let Some(scaling) = &self.scaling else {
            return;
        };
        let gauges = [
            ("rgun_workers_min", "Autoscaling's floor.", scaling.floor),
            (
                "rgun_workers_max",
                "Autoscaling's ceiling.",
                scaling.ceiling,
            ),
            (
                "rgun_autoscale_paused",
                "1 while an operator's scale pins the worker count.",
                usize::from(scaling.paused),
            ),
        ];
        for (name, help, value) in gauges {
            o.family(name, "gauge", help);
            o.sample(name, &[], value);
        }
        let name = "rgun_autoscale_decisions_total";
        o.family(
            name,
            "counter",
            "Autoscaling's changes of the worker target.",
        );
        o.sample(name, &[("direction", "up")], scaling.decisions_up);
        o.sample(name, &[("direction", "down")], scaling.decisions_down);
    }

    fn render_backlog(&self, o: &mut Exposition) {
        o.family(
            "rgun_listen_backlog",
            "gauge",
            "Connections waiting in each TCP listener's accept queue.",
        );
        let depths: Vec<(&str, ListenQueue)> = self
            .listeners
            .iter()
            .filter_map(|l| listen_queue(&l.socket).map(|q| (l.display.as_str(), q)))
            .collect();
        for (listener, q) in &depths {
            o.sample("rgun_listen_backlog", &[("listener", listener)], q.waiting);
        }
        o.family(
            "rgun_listen_backlog_limit",
            "gauge",
            "Each TCP listener's accept-queue limit (--backlog, capped by somaxconn).",
        );
        for (listener, q) in &depths {
            o.sample(
                "rgun_listen_backlog_limit",
                &[("listener", listener)],
                q.limit,
            );
        }
    }
}
