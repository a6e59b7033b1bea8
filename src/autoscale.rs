//! The autoscaling rule (`--workers-min`/`--workers-max`): from samples of how
//! saturated the workers are, when to add workers and when to retire some. Sans-I/O:
//! it sees numbers the master measured (`Sample`) and answers a `Decision`; it reads
//! no clock, no scoreboard and no socket, so the tests replay recorded load shapes.
//!
//! The rule, in words:
//! - **Busy** is the share of the serving workers' capacity in use: a sync worker
//!   inside a request, a thread of `--threads N` inside one, an ASGI loop that has
//!   requests and has not turned for `ASGI_LAG_MS`. A worker stuck on one request
//!   (`stuck`) is the time-out's business: it counts as neither busy nor capacity.
//! - **Up** when, over the last `UP_WINDOW_MS`, busy averaged at least `UP_BUSY` or
//!   clients waited in a listen queue in every sample. Saturated (busy at least
//!   `SATURATED`, so the real demand is unknown) it doubles the workers, or adds one
//!   per client waiting in the listen queue if that is more; below that it sizes to
//!   `busy / TARGET_BUSY`, a listen queue adding one worker per waiting client (at
//!   most doubling).
//! - **Cooldown**: no decision while workers boot, and the window must lie after the
//!   last change's workers were ready: a cooldown of the app's measured boot time
//!   plus the window.
//! - **Down** when the busiest second of the last `idle_window` needed fewer workers
//!   at `TARGET_BUSY` than there are: to that many at once (never below the floor),
//!   the youngest retiring gracefully. The window is long, so a sawtooth keeps its
//!   workers.
//! - Never above the ceiling or what the memory budget holds; never below the floor.

use std::collections::VecDeque;

/// How often the master samples (milliseconds).
pub const SAMPLE_EVERY_MS: u64 = 100;
/// The span of saturation that adds workers.
pub const UP_WINDOW_MS: u64 = 500;
/// Mean busy share over `UP_WINDOW_MS` that adds workers.
pub const UP_BUSY: f64 = 0.8;
/// Busy share past which demand is unknown (every worker always busy).
pub const SATURATED: f64 = 0.95;
/// The busy share a new size aims at.
pub const TARGET_BUSY: f64 = 0.7;
/// An ASGI loop with requests that has not turned for this long counts as busy.
pub const ASGI_LAG_MS: u64 = 20;
/// A worker on one request for longer is stuck: neither busy nor capacity.
pub const STUCK_MS: u64 = 5_000;
/// The default `--workers-idle`: seconds of low load before workers retire.
pub const DEFAULT_IDLE_SECS: u64 = 10;

/// The range the rule moves in, and how long load must stay low to retire workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub floor: usize,
    pub ceiling: usize,
    pub idle_window_ms: u64,
}

/// One worker of the serving generation, as sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerLoad {
    /// Share of its capacity in use, 0 to 1.
    pub busy: f64,
    /// On one request longer than `STUCK_MS`.
    pub stuck: bool,
}

/// What the master measured at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Monotonic milliseconds.
    pub at_ms: u64,
    /// The ready workers of the serving generation.
    pub workers: Vec<WorkerLoad>,
    /// Workers spawned and not ready yet.
    pub booting: usize,
    /// Clients waiting in the listen queues, all listeners together.
    pub queued: u32,
    /// The most workers the memory budget holds, when there is one.
    pub memory_ceiling: Option<usize>,
}

impl Sample {
    /// Busy share of the healthy workers (None: no healthy worker to measure).
    fn busy(&self) -> Option<f64> {
        let healthy: Vec<f64> = self
            .workers
            .iter()
            .filter(|w| !w.stuck)
            .map(|w| w.busy.clamp(0.0, 1.0))
            .collect();
        (!healthy.is_empty()).then(|| healthy.iter().sum::<f64>() / healthy.len() as f64)
    }

    /// Capacity in use, in workers.
    fn demand(&self) -> f64 {
        self.workers
            .iter()
            .filter(|w| !w.stuck)
            .map(|w| w.busy.clamp(0.0, 1.0))
            .sum()
    }
}

/// Which way a decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// A change of the worker target, with its reason in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub direction: Direction,
    pub from: usize,
    pub to: usize,
    pub reason: String,
}

/// The rule's memory: recent samples and when the last change settled.
#[derive(Debug, Default)]
pub struct Autoscaler {
    samples: VecDeque<Sample>,
    /// Samples before this instant predate the last change's workers being ready.
    settled_at_ms: u64,
    /// A change was made and its workers are not all ready yet.
    unsettled: bool,
}

impl Autoscaler {
    pub fn new() -> Autoscaler {
        Autoscaler::default()
    }

    /// Forgets what was seen (autoscaling resumed, a reload done): the windows start
    /// again from `now_ms`.
    pub fn restart(&mut self, now_ms: u64) {
        self.samples.clear();
        self.settled_at_ms = now_ms;
        self.unsettled = false;
    }

    /// Takes one sample with the current `target`; answers a new target, if any.
    pub fn observe(&mut self, sample: Sample, target: usize, bounds: Bounds) -> Option<Decision> {
        let now = sample.at_ms;
        let keep = bounds.idle_window_ms.max(UP_WINDOW_MS);
        while self.samples.front().is_some_and(|s| s.at_ms + keep < now) {
            self.samples.pop_front();
        }
        let ready = sample.workers.len();
        let booting = sample.booting;
        let memory = sample.memory_ceiling;
        self.samples.push_back(sample);
        if booting > 0 || ready < target {
            return None;
        }
        if std::mem::take(&mut self.unsettled) {
            self.settled_at_ms = now;
        }
        let ceiling = bounds
            .ceiling
            .min(memory.unwrap_or(usize::MAX))
            .max(bounds.floor);
        let decision = self
            .scale_up(now, target, ceiling)
            .or_else(|| self.scale_down(now, target, bounds))
            .or_else(|| clamp_to(target, bounds.floor, ceiling));
        if decision.is_some() {
            self.unsettled = true;
            self.settled_at_ms = now;
        }
        decision
    }

    /// Samples of the last `span_ms`, if they all follow the last change and cover
    /// the span.
    fn window(&self, now: u64, span_ms: u64) -> Option<Vec<&Sample>> {
        let from = now.checked_sub(span_ms)?;
        if from < self.settled_at_ms {
            return None;
        }
        let window: Vec<&Sample> = self.samples.iter().filter(|s| s.at_ms > from).collect();
        let covered = self
            .samples
            .iter()
            .any(|s| s.at_ms <= from + SAMPLE_EVERY_MS);
        (covered && !window.is_empty()).then_some(window)
    }

    fn scale_up(&self, now: u64, target: usize, ceiling: usize) -> Option<Decision> {
        if target >= ceiling {
            return None;
        }
        let window = self.window(now, UP_WINDOW_MS)?;
        let n = window.len() as f64;
        let busy: f64 = window.iter().filter_map(|s| s.busy()).sum::<f64>() / n;
        let queued = window.iter().map(|s| s.queued).min().unwrap_or(0) as usize;
        let secs = UP_WINDOW_MS as f64 / 1000.0;
        let (to, reason) = if busy >= SATURATED {
            (
                target + target.max(queued),
                format!("busy {busy:.2} for {secs:.1} s (saturated)"),
            )
        } else if busy >= UP_BUSY {
            let demand = window.iter().map(|s| s.demand()).sum::<f64>() / n;
            let sized = (demand / TARGET_BUSY).ceil() as usize;
            (
                sized.max(target + 1) + queued.min(target),
                format!("busy {busy:.2} for {secs:.1} s"),
            )
        } else if queued > 0 {
            (
                target + queued.min(target),
                format!("{queued} clients in the listen queue for {secs:.1} s"),
            )
        } else {
            return None;
        };
        Some(Decision {
            direction: Direction::Up,
            from: target,
            to: to.min(ceiling),
            reason,
        })
    }

    fn scale_down(&self, now: u64, target: usize, bounds: Bounds) -> Option<Decision> {
        if target <= bounds.floor {
            return None;
        }
        let window = self.window(now, bounds.idle_window_ms)?;
        if window.iter().any(|s| s.queued > 0) {
            return None;
        }
        let peak = busiest_second(&window);
        let needed = ((peak / TARGET_BUSY).ceil() as usize).max(bounds.floor);
        (needed < target).then(|| Decision {
            direction: Direction::Down,
            from: target,
            to: needed,
            reason: format!(
                "at most {peak:.1} workers busy for {} s",
                bounds.idle_window_ms / 1000
            ),
        })
    }
}

/// A target outside the bounds (they moved: TTIN/TTOU, a lower memory ceiling) is
/// brought back inside them.
fn clamp_to(target: usize, floor: usize, ceiling: usize) -> Option<Decision> {
    let to = target.clamp(floor, ceiling);
    (to != target).then(|| Decision {
        direction: if to > target {
            Direction::Up
        } else {
            Direction::Down
        },
        from: target,
        to,
        reason: if to > target {
            format!("below the floor of {floor}")
        } else {
            format!("above the ceiling of {ceiling}")
        },
    })
}

/// The highest mean demand (workers busy) over any second of `window`, sliding.
fn busiest_second(window: &[&Sample]) -> f64 {
    let demand: Vec<(u64, f64)> = window.iter().map(|s| (s.at_ms, s.demand())).collect();
    let (mut peak, mut sum, mut from) = (0.0_f64, 0.0, 0);
    for (to, &(at, d)) in demand.iter().enumerate() {
        sum += d;
        while demand[from].0 + 1000 <= at {
            sum -= demand[from].1;
            from += 1;
        }
        peak = peak.max(sum / (to + 1 - from) as f64);
    }
    peak
}

#[cfg(test)]
mod tests;
