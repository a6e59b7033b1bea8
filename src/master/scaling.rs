//! Autoscaling in the master (`--workers-min`/`--workers-max`): every
//! `autoscale::SAMPLE_EVERY_MS` it measures the serving workers from the scoreboard
//! and the listeners (no Python, nothing on the request path), asks the
//! `autoscale::Autoscaler` rule, and moves the target through `set_target`, so
//! `manage_workers` spawns or retires the youngest gracefully as for any scale. After
//! a scale-up, once the new workers are ready, the workers holding more than their
//! share of keep-alive connections end that many through `Slot::closing` (the
//! shutdown delay's mechanism), so their clients reconnect to the new ones.
//!
//! Operators stay in charge: `rgunctl scale N` pins the count (`paused`) until
//! `rgunctl scale auto`; TTIN/TTOU move the floor.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rgunctl::protocol::{ErrorBody, ErrorCode, ScaleDecision};
use serde_json::json;

use super::{unix_now, Arbiter};
use crate::autoscale::{
    Autoscaler, Bounds, Decision, Direction, Sample, WorkerLoad, ASGI_LAG_MS, SAMPLE_EVERY_MS,
    STUCK_MS,
};
use crate::config::{ScalingPlan, WorkerKind};
use crate::scoreboard::{monotonic_ms, monotonic_us, STOP_ALL};

/// How long a rebalancing budget lasts: connections idle that long are left alone.
const REBALANCE_FOR: Duration = Duration::from_secs(3);
/// The most connections one worker is asked to end per scale-up.
const REBALANCE_MAX: u32 = 256;
/// How often the memory budget is re-read (it reads /proc for each worker).
const MEMORY_EVERY: Duration = Duration::from_secs(1);
/// The share of the cgroup memory limit the workers may fill, as `--max-worker-rss
/// auto` counts it.
const MEMORY_SHARE: f64 = 0.8;

/// Autoscaling's state in the arbiter.
pub(super) struct Scaling {
    rule: Autoscaler,
    pub floor: usize,
    pub ceiling: usize,
    idle_window_ms: u64,
    /// An operator pinned the count (`rgunctl scale N`, WINCH).
    pub paused: bool,
    pub last: Option<ScaleDecision>,
    pub decisions_up: u64,
    pub decisions_down: u64,
    next_sample: Instant,
    /// The cgroup memory limit, read at start.
    memory_limit: Option<u64>,
    memory_ceiling: Option<usize>,
    memory_checked: Option<Instant>,
    /// A scale-up whose new workers are not ready yet: rebalance when they are.
    rebalance_due: bool,
    /// Slots given a closing budget, and until when.
    rebalancing: Option<(Vec<usize>, Instant)>,
    /// Each ASGI worker's last idle-time reading: slot → (pid, when, idle µs).
    idle_seen: HashMap<usize, IdleReading>,
}

/// An ASGI loop's idle time at one instant (`Slot::loop_idle_us`, with the wait in
/// progress counted).
#[derive(Clone, Copy)]
struct IdleReading {
    pid: i32,
    at_us: u64,
    idle_us: u64,
}

impl Scaling {
    pub fn new(plan: &ScalingPlan, idle_secs: u64) -> Scaling {
        let mut rule = Autoscaler::new();
        rule.restart(monotonic_ms());
        Scaling {
            rule,
            floor: plan.floor as usize,
            ceiling: plan.ceiling as usize,
            idle_window_ms: idle_secs.saturating_mul(1000),
            paused: false,
            last: None,
            decisions_up: 0,
            decisions_down: 0,
            next_sample: Instant::now(),
            memory_limit: crate::sizing::memory_limit().map(|m| m.bytes),
            memory_ceiling: None,
            memory_checked: None,
            rebalance_due: false,
            rebalancing: None,
            idle_seen: HashMap::new(),
        }
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            floor: self.floor,
            ceiling: self.ceiling,
            idle_window_ms: self.idle_window_ms,
        }
    }

    /// When the loop must wake for the next sample.
    pub fn next_wakeup(&self) -> Option<Instant> {
        (!self.paused).then_some(self.next_sample)
    }

    /// Moves the floor (TTIN/TTOU) by `delta`, the ceiling with it when passed.
    pub fn move_floor(&mut self, delta: i64) {
        let floor = (self.floor as i64 + delta).clamp(1, rgunctl::protocol::MAX_WORKERS as i64);
        self.floor = floor as usize;
        self.ceiling = self.ceiling.max(self.floor);
    }

    /// Autoscaling resumes (`rgunctl scale auto`): its windows start afresh.
    pub fn resume(&mut self) {
        self.paused = false;
        self.rule.restart(monotonic_ms());
    }
}

impl Arbiter {
    /// One loop turn's autoscaling: sample when due, act on the rule's decision, and
    /// rebalance connections after a scale-up.
    pub(super) fn autoscale(&mut self) {
        if self.scaling.is_none() {
            return;
        }
        self.rebalance();
        let scaling = self.scaling.as_mut().expect("checked");
        let now = Instant::now();
        if scaling.paused || now < scaling.next_sample {
            return;
        }
        scaling.next_sample = now + Duration::from_millis(SAMPLE_EVERY_MS);
        if self.reload.is_some() {
            // A generation swap changes every worker: measure the new one afresh.
            scaling.rule.restart(monotonic_ms());
            return;
        }
        self.refresh_memory_ceiling();
        let previous = std::mem::take(&mut scaling_of(self).idle_seen);
        let (sample, idle_seen) = self.sample(&previous);
        let scaling = self.scaling.as_mut().expect("checked");
        scaling.idle_seen = idle_seen;
        let bounds = scaling.bounds();
        if let Some(decision) = scaling.rule.observe(sample, self.target, bounds) {
            self.act(decision);
        }
    }

    /// An operator set the count (`rgunctl scale N`): autoscaling pauses until
    /// `scale auto`. True when it was on.
    pub(super) fn pin_autoscaling(&mut self, trigger: &str) -> bool {
        let Some(scaling) = self.scaling.as_mut() else {
            return false;
        };
        if !scaling.paused {
            scaling.paused = true;
            tracing::info!(
                "Autoscaling paused by {trigger}: the count is pinned until `rgunctl scale auto`"
            );
            self.emit("autoscale", json!({"state": "paused", "trigger": trigger}));
        }
        true
    }

    /// `rgunctl scale auto`: the rule decides again, from fresh windows.
    pub(super) fn resume_autoscaling(&mut self) -> Result<serde_json::Value, ErrorBody> {
        let Some(scaling) = self.scaling.as_mut() else {
            return Err(ErrorBody::new(
                ErrorCode::Failed,
                "scale auto: autoscaling is off (start with --workers-min or --workers-max)",
            ));
        };
        let was_paused = scaling.paused;
        scaling.resume();
        let (floor, ceiling) = (scaling.floor, scaling.ceiling);
        if was_paused {
            tracing::info!("Autoscaling resumed between {floor} and {ceiling} workers");
            self.emit(
                "autoscale",
                json!({"state": "on", "workers_min": floor, "workers_max": ceiling}),
            );
        }
        Ok(json!({
            "previous": self.target,
            "target": self.target,
            "autoscale": "on",
            "workers_min": floor,
            "workers_max": ceiling,
        }))
    }

    /// TTIN/TTOU with autoscaling: the floor moves (the ceiling with it when passed),
    /// and a target below the new floor follows at once.
    pub(super) fn move_floor(&mut self, delta: i64, trigger: &str) {
        let Some(scaling) = self.scaling.as_mut() else {
            return;
        };
        scaling.move_floor(delta);
        let (floor, ceiling) = (scaling.floor, scaling.ceiling);
        tracing::info!("Handling {trigger}: autoscaling between {floor} and {ceiling} workers");
        self.emit(
            "autoscale",
            json!({"state": "bounds", "workers_min": floor, "workers_max": ceiling, "trigger": trigger}),
        );
        if self.target < floor {
            self.set_target(floor, trigger.into());
        }
    }

    /// What the rule sees now, and the ASGI loops' idle readings for next time.
    fn sample(
        &self,
        previous: &HashMap<usize, IdleReading>,
    ) -> (Sample, HashMap<usize, IdleReading>) {
        let mut idle_seen = HashMap::new();
        let now = monotonic_ms();
        let asgi = self.cfg.worker_kind() == WorkerKind::Asgi;
        let threads = self.cfg.threads.max(1);
        let serving = self
            .workers
            .values()
            .filter(|w| !w.retiring && w.generation == self.generation);
        let mut workers = Vec::new();
        let mut booting = 0;
        for w in serving {
            if !w.ready {
                booting += 1;
                continue;
            }
            let slot = self.scoreboard.slot(w.slot);
            let in_flight = slot.in_flight.load(Ordering::Relaxed);
            let started = slot.request_started_ms.load(Ordering::Relaxed);
            let silent_ms = now.saturating_sub(slot.heartbeat_ms.load(Ordering::Relaxed));
            let on_one_ms = if started == 0 {
                0
            } else {
                now.saturating_sub(started)
            };
            workers.push(if asgi {
                let at_us = monotonic_us();
                let idle_us = slot.loop_idle_us.load(Ordering::Relaxed);
                let since = slot.loop_waiting_since_us.load(Ordering::Relaxed);
                let waiting = if since == 0 {
                    0
                } else {
                    at_us.saturating_sub(since)
                };
                let reading = IdleReading {
                    pid: w.pid.as_raw(),
                    at_us,
                    idle_us: idle_us + waiting,
                };
                let before = previous.get(&w.slot).filter(|r| r.pid == reading.pid);
                idle_seen.insert(w.slot, reading);
                let busy = match before {
                    // The loop's busy share: the time it did not wait in its selector.
                    Some(b) if idle_us > 0 => loop_busy(b, &reading),
                    // Not measured (uvloop): requests waiting while it has not turned.
                    _ => f64::from(u8::from(in_flight > 0 && silent_ms >= ASGI_LAG_MS)),
                };
                WorkerLoad {
                    busy,
                    stuck: silent_ms > STUCK_MS,
                }
            } else {
                thread_load(in_flight, threads, on_one_ms > STUCK_MS)
            });
        }
        let queued = self
            .listeners
            .iter()
            .filter_map(|l| super::metrics::listen_queue(&l.socket))
            .map(|q| q.waiting)
            .sum();
        let sample = Sample {
            at_ms: now,
            workers,
            booting,
            queued,
            memory_ceiling: self.scaling.as_ref().and_then(|s| s.memory_ceiling),
        };
        (sample, idle_seen)
    }

    /// The most workers the cgroup memory limit holds at the workers' mean RSS, once
    /// a second.
    fn refresh_memory_ceiling(&mut self) {
        let Some(scaling) = self.scaling.as_ref() else {
            return;
        };
        let Some(limit) = scaling.memory_limit else {
            return;
        };
        if scaling
            .memory_checked
            .is_some_and(|t| t.elapsed() < MEMORY_EVERY)
        {
            return;
        }
        let rss: Vec<u64> = self
            .workers
            .values()
            .filter(|w| w.ready)
            .map(|w| crate::process::rss_bytes(w.pid.as_raw()))
            .filter(|&b| b > 0)
            .collect();
        let scaling = self.scaling.as_mut().expect("checked");
        scaling.memory_checked = Some(Instant::now());
        if !rss.is_empty() {
            let mean = rss.iter().sum::<u64>() / rss.len() as u64;
            let budget = limit as f64 * MEMORY_SHARE;
            scaling.memory_ceiling = Some(((budget / mean.max(1) as f64) as usize).max(1));
        }
    }

    /// A decision: the new target, on record (log, `watch`, `history`, statsd).
    fn act(&mut self, d: Decision) {
        let scaling = self.scaling.as_mut().expect("autoscaling");
        match d.direction {
            Direction::Up => {
                scaling.decisions_up += 1;
                scaling.rebalance_due = true;
            }
            Direction::Down => scaling.decisions_down += 1,
        }
        scaling.last = Some(ScaleDecision {
            time: unix_now(),
            direction: d.direction.label().into(),
            from: d.from as u32,
            to: d.to as u32,
            reason: d.reason.clone(),
        });
        crate::statsd::increment(match d.direction {
            Direction::Up => "rgun.autoscale.up",
            Direction::Down => "rgun.autoscale.down",
        });
        tracing::info!(
            "Autoscaling {} from {} to {} workers: {}",
            d.direction.label(),
            d.from,
            d.to,
            d.reason
        );
        self.set_target(d.to, format!("autoscale: {}", d.reason));
    }

    /// Once a scale-up's workers are ready: each worker holding more than its share of
    /// the connections ends the extra ones after their next response (`Connection:
    /// close`, GOAWAY), so their clients reconnect through the shared listeners, where
    /// the less loaded workers take them. The budget lapses after `REBALANCE_FOR`.
    fn rebalance(&mut self) {
        let Some(scaling) = self.scaling.as_mut() else {
            return;
        };
        if let Some((slots, until)) = scaling.rebalancing.take() {
            if Instant::now() < until {
                scaling.rebalancing = Some((slots, until));
            } else {
                for slot in slots {
                    let closing = &self.scoreboard.slot(slot).closing;
                    let _ = closing.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < STOP_ALL).then_some(0)
                    });
                }
            }
        }
        let settled = self.live_workers() == self.target && self.ready_workers() == self.target;
        let scaling = self.scaling.as_mut().expect("checked");
        if !scaling.rebalance_due || !settled {
            return;
        }
        scaling.rebalance_due = false;
        let held: Vec<(usize, i32, u32)> = self
            .workers
            .values()
            .filter(|w| w.ready && !w.retiring && w.generation == self.generation)
            .map(|w| {
                let slot = self.scoreboard.slot(w.slot);
                (
                    w.slot,
                    w.pid.as_raw(),
                    slot.connections.load(Ordering::Relaxed),
                )
            })
            .collect();
        let total: u32 = held.iter().map(|(_, _, c)| c).sum();
        let share = total.div_ceil(held.len().max(1) as u32);
        let mut asked = serde_json::Map::new();
        let mut slots = Vec::new();
        for (slot, pid, conns) in held {
            let extra = conns.saturating_sub(share).min(REBALANCE_MAX);
            let closing = &self.scoreboard.slot(slot).closing;
            if extra > 0 && closing.load(Ordering::Relaxed) == 0 {
                closing.store(extra, Ordering::Relaxed);
                asked.insert(pid.to_string(), extra.into());
                slots.push(slot);
            }
        }
        if slots.is_empty() {
            return;
        }
        tracing::info!(
            "Rebalancing {total} connections over {} workers: {} end some after their next response",
            self.target,
            asked.len()
        );
        self.emit("rebalance", json!({"connections": total, "closing": asked}));
        if let Some(scaling) = self.scaling.as_mut() {
            scaling.rebalancing = Some((slots, Instant::now() + REBALANCE_FOR));
        }
    }
}

fn scaling_of(arbiter: &mut Arbiter) -> &mut Scaling {
    arbiter.scaling.as_mut().expect("autoscaling is on")
}

/// The share of the time between two readings the loop spent outside its selector.
fn loop_busy(before: &IdleReading, now: &IdleReading) -> f64 {
    let span_us = now.at_us.saturating_sub(before.at_us) as f64;
    if span_us <= 0.0 {
        return 0.0;
    }
    let idle_us = now.idle_us.saturating_sub(before.idle_us) as f64;
    (1.0 - idle_us / span_us).clamp(0.0, 1.0)
}

/// A sync or gthread worker's load: its threads in use. One stuck on a request
/// takes its thread out of the count; a one-thread worker stuck is out altogether.
fn thread_load(in_flight: u32, threads: u32, stuck: bool) -> WorkerLoad {
    let (in_flight, threads) = if stuck && threads > 1 {
        (in_flight.saturating_sub(1), threads - 1)
    } else {
        (in_flight, threads)
    };
    WorkerLoad {
        busy: (f64::from(in_flight) / f64::from(threads)).min(1.0),
        stuck: stuck && threads == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_thread_leaves_the_others_measured() {
        assert_eq!(
            thread_load(3, 4, true),
            WorkerLoad {
                busy: 2.0 / 3.0,
                stuck: false
            }
        );
        assert!(thread_load(1, 1, true).stuck);
        assert_eq!(thread_load(1, 1, false).busy, 1.0);
        assert_eq!(thread_load(0, 2, false).busy, 0.0);
    }
}
