//! Prometheus metrics from the master: `Ledger` keeps what the scoreboard forgets (the
//! tallies of exited workers, exits by reason, reloads by result), `render` writes the
//! text exposition format from the scoreboard, the worker table and the ledger, for
//! `--metrics-bind`'s `/metrics` (`server`) and the control protocol's `metrics`.
//! Reading the scoreboard is a few loads per worker: the workers pay nothing for a
//! scrape.

mod dirty;
pub mod server;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::scoreboard::{Slot, WorkerState, DURATION_BOUNDS_US};
use rgunctl::protocol::Traffic;

use super::Arbiter;
use crate::process::rss_bytes;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const BUCKETS: usize = DURATION_BOUNDS_US.len() + 1;

/// Why a worker left, as `rgun_worker_exits_total` counts it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum ExitReason {
    /// Killed for `--timeout`.
    Timeout,
    /// Left on its own with status 0: `--max-requests` (or `--reload`'s source change).
    MaxRequests,
    /// Retired for `--max-worker-rss`.
    MaxRss,
    /// Died without being asked: a signal or a non-zero status.
    Crash,
    /// Failed to boot (import error, boot error, died before ready).
    BootFailure,
    /// Retired by a scale-down.
    Scale,
    /// The old generation after a reload, or a new one torn down by a failed reload.
    Reload,
    /// `rgunctl kill`.
    Kill,
    /// The server is stopping.
    Shutdown,
}

impl ExitReason {
    pub fn label(self) -> &'static str {
        match self {
            ExitReason::Timeout => "timeout",
            ExitReason::MaxRequests => "max_requests",
            ExitReason::MaxRss => "max_rss",
            ExitReason::Crash => "crash",
            ExitReason::BootFailure => "boot_failure",
            ExitReason::Scale => "scale",
            ExitReason::Reload => "reload",
            ExitReason::Kill => "kill",
            ExitReason::Shutdown => "shutdown",
        }
    }
}

/// Counts that outlive the workers they describe, so every counter only grows (also
/// across a `--preload` reload's re-execution, which hands it over).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// Per scoreboard slot: responses by status class of the workers that have left it.
    retired_by_class: BTreeMap<usize, [u64; 5]>,
    retired_buckets: [u64; BUCKETS],
    retired_sum_us: u64,
    exits: BTreeMap<ExitReason, u64>,
    reloads_ok: u64,
    reloads_failed: u64,
}

impl Ledger {
    /// A worker left `slot`: keep its tally before the slot is reused.
    pub fn retire_slot(&mut self, slot: usize, s: &Slot, reason: ExitReason) {
        self.fold_slot(slot, s);
        *self.exits.entry(reason).or_default() += 1;
    }

    /// Adds what the worker in `slot` has counted so far (when it leaves, or when the
    /// master re-executes and will not read this scoreboard again).
    pub fn fold_slot(&mut self, slot: usize, s: &Slot) {
        let by_class = self.retired_by_class.entry(slot).or_default();
        for (sum, c) in by_class.iter_mut().zip(&s.tally.by_class) {
            *sum += c.load(Ordering::Relaxed);
        }
        for (sum, c) in self
            .retired_buckets
            .iter_mut()
            .zip(&s.tally.duration_buckets)
        {
            *sum += c.load(Ordering::Relaxed);
        }
        self.retired_sum_us += s.tally.duration_sum_us.load(Ordering::Relaxed);
    }

    pub fn reload_finished(&mut self, ok: bool) {
        if ok {
            self.reloads_ok += 1;
        } else {
            self.reloads_failed += 1;
        }
    }
}

/// The text exposition format, one family at a time.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
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
    pub(super) fn metrics_text(&self) -> String {
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
    pub(super) fn traffic(&self) -> Traffic {
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
