//! The rule replayed over load shapes: a small model of a pre-fork server (workers
//! that take `boot_ms` to be ready, a demand shared evenly among the healthy ones)
//! feeds `Autoscaler::observe` a sample every `SAMPLE_EVERY_MS` and applies what it
//! decides, as the master does.

use super::*;

/// Demand at a millisecond: requests in flight wanted (in workers), and clients
/// waiting in the listen queue.
struct Load {
    demand: f64,
    queued: u32,
}

fn load(demand: f64) -> Load {
    Load { demand, queued: 0 }
}

struct Sim {
    bounds: Bounds,
    boot_ms: u64,
    /// Workers that never finish their request (they still hold a slot).
    stuck: usize,
    memory_ceiling: Option<usize>,
}

/// What happened: the ready workers at each sample, and every decision with its time.
struct Trace {
    ready: Vec<(u64, usize)>,
    decisions: Vec<(u64, Decision)>,
}

impl Trace {
    fn ready_at(&self, at_ms: u64) -> usize {
        self.ready
            .iter()
            .take_while(|(t, _)| *t <= at_ms)
            .last()
            .map_or(0, |(_, n)| *n)
    }

    fn max_ready_between(&self, from_ms: u64, to_ms: u64) -> usize {
        self.ready
            .iter()
            .filter(|(t, _)| (from_ms..=to_ms).contains(t))
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
    }

    fn first_time_with(&self, from_ms: u64, workers: usize) -> Option<u64> {
        self.ready
            .iter()
            .find(|(t, n)| *t >= from_ms && *n >= workers)
            .map(|(t, _)| *t)
    }

    fn downs(&self) -> usize {
        self.decisions
            .iter()
            .filter(|(_, d)| d.direction == Direction::Down)
            .count()
    }
}

impl Sim {
    fn new(floor: usize, ceiling: usize) -> Sim {
        Sim {
            bounds: Bounds {
                floor,
                ceiling,
                idle_window_ms: 20_000,
            },
            boot_ms: 300,
            stuck: 0,
            memory_ceiling: None,
        }
    }

    fn run(&self, until_ms: u64, shape: impl Fn(u64) -> Load) -> Trace {
        let mut rule = Autoscaler::new();
        let mut target = self.bounds.floor;
        // When each worker is (or will be) ready, oldest first.
        let mut workers: Vec<u64> = vec![0; target];
        let mut trace = Trace {
            ready: Vec::new(),
            decisions: Vec::new(),
        };
        let mut now = 0;
        while now <= until_ms {
            let ready = workers.iter().filter(|&&at| at <= now).count();
            let booting = workers.len() - ready;
            let Load { demand, queued } = shape(now);
            let healthy = ready.saturating_sub(self.stuck).max(1) as f64;
            let busy = (demand / healthy).min(1.0);
            let sample = Sample {
                at_ms: now,
                workers: (0..ready)
                    .map(|i| WorkerLoad {
                        busy: if i < self.stuck { 1.0 } else { busy },
                        stuck: i < self.stuck,
                    })
                    .collect(),
                booting,
                queued,
                memory_ceiling: self.memory_ceiling,
            };
            trace.ready.push((now, ready));
            if let Some(d) = rule.observe(sample, target, self.bounds) {
                assert_eq!(d.from, target);
                target = d.to;
                workers.resize(target, now + self.boot_ms);
                trace.decisions.push((now, d));
            }
            now += SAMPLE_EVERY_MS;
        }
        trace
    }
}

/// Idle 10 s, a burst of 32 keep-alive clients (each always has a request: every
/// worker stays saturated) for 30 s, then idle: the done-when's shape.
#[test]
fn burst_reaches_four_workers_within_three_seconds_and_returns_to_the_floor() {
    let sim = Sim::new(1, 6);
    let trace = sim.run(100_000, |t| {
        if (10_000..40_000).contains(&t) {
            load(32.0)
        } else {
            load(0.0)
        }
    });
    assert_eq!(trace.ready_at(9_900), 1, "idle stays at the floor");
    let four = trace.first_time_with(10_000, 4).expect("reached 4 workers");
    assert!(four <= 13_000, "4 workers at {four} ms");
    assert_eq!(
        trace.max_ready_between(10_000, 40_000),
        6,
        "up to the ceiling"
    );
    let floor_at = trace
        .ready
        .iter()
        .find(|(t, n)| *t >= 40_000 && *n == 1)
        .map(|(t, _)| *t)
        .expect("back at the floor");
    assert!(
        floor_at <= 40_000 + 20_000 + 1_000,
        "back to 1 at {floor_at} ms"
    );
    assert_eq!(trace.downs(), 1, "one step down: {:?}", trace.decisions);
}

/// Demand rising steadily from 0 to 5 workers over 30 s: workers are added as it
/// grows, never removed on the way.
#[test]
fn ramp_adds_workers_as_demand_grows_and_never_retires_on_the_way_up() {
    let sim = Sim::new(1, 10);
    let trace = sim.run(40_000, |t| load((t.min(30_000) as f64 / 30_000.0) * 5.0));
    assert_eq!(trace.downs(), 0, "{:?}", trace.decisions);
    let end = trace.ready_at(40_000);
    assert!(
        (6..=10).contains(&end),
        "5 workers of demand end with {end} workers: {:?}",
        trace.decisions
    );
    let mut last = 0;
    for (_, n) in &trace.ready {
        assert!(*n >= last, "the ready count never dips on a ramp");
        last = *n;
    }
}

/// Load that comes and goes faster than the idle window keeps its workers: no
/// flapping.
#[test]
fn sawtooth_shorter_than_the_idle_window_does_not_flap() {
    let sim = Sim::new(1, 6);
    let trace = sim.run(90_000, |t| {
        if (t / 5_000) % 2 == 0 {
            load(4.0)
        } else {
            load(0.2)
        }
    });
    assert_eq!(trace.downs(), 0, "{:?}", trace.decisions);
    assert!(trace.decisions.len() <= 3, "{:?}", trace.decisions);
    assert_eq!(trace.ready_at(90_000), 6);
}

/// An application that takes 5 s to boot: saturation during the boot adds nothing
/// more (the workers on their way are counted), and the next step waits for them
/// plus a window.
#[test]
fn slow_boot_waits_for_the_new_workers_before_deciding_again() {
    let mut sim = Sim::new(1, 8);
    sim.boot_ms = 5_000;
    let trace = sim.run(30_000, |_| load(32.0));
    let times: Vec<u64> = trace.decisions.iter().map(|(t, _)| *t).collect();
    assert!(times.len() >= 2, "{:?}", trace.decisions);
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 5_000 + UP_WINDOW_MS,
            "decisions at {times:?} closer than the boot time plus the window"
        );
    }
    assert_eq!(trace.ready_at(30_000), 8);
}

/// One of two workers is stuck on a request, the other idle: the stuck one is the
/// time-out's business, not load.
#[test]
fn a_worker_stuck_on_one_request_is_not_load() {
    let mut sim = Sim::new(2, 6);
    sim.stuck = 1;
    let trace = sim.run(60_000, |_| load(0.0));
    assert!(trace.decisions.is_empty(), "{:?}", trace.decisions);
}

/// ...but the healthy workers' saturation still counts, and the stuck one holds no
/// share of it.
#[test]
fn a_stuck_worker_beside_saturated_ones_still_scales_up() {
    let mut sim = Sim::new(2, 6);
    sim.stuck = 1;
    let trace = sim.run(5_000, |_| load(8.0));
    let (_, first) = trace.decisions.first().expect("a decision");
    assert_eq!(first.direction, Direction::Up);
    assert!(first.reason.contains("busy 1.00"), "{}", first.reason);
}

/// Clients waiting in the listen queue add workers even when the workers look idle
/// (they are not accepting fast enough), one per waiting client, at most doubling.
#[test]
fn a_listen_queue_adds_workers() {
    let sim = Sim::new(2, 16);
    let trace = sim.run(2_000, |_| Load {
        demand: 0.5,
        queued: 3,
    });
    let (_, first) = trace.decisions.first().expect("a decision");
    assert_eq!((first.from, first.to), (2, 4), "{first:?}");
    assert!(first.reason.contains("listen queue"), "{}", first.reason);
}

/// The memory budget caps the ceiling.
#[test]
fn never_above_the_memory_budget() {
    let mut sim = Sim::new(1, 10);
    sim.memory_ceiling = Some(3);
    let trace = sim.run(20_000, |_| load(32.0));
    assert_eq!(trace.max_ready_between(0, 20_000), 3);
}

/// When load falls to a level some workers can carry, the target falls to what the
/// busiest second needed, not to the floor.
#[test]
fn scales_down_to_what_the_busiest_second_needed() {
    let sim = Sim::new(1, 8);
    let trace = sim.run(60_000, |t| if t < 10_000 { load(32.0) } else { load(1.5) });
    let (_, down) = trace
        .decisions
        .iter()
        .find(|(_, d)| d.direction == Direction::Down)
        .expect("a step down");
    assert_eq!(down.to, 3, "1.5 busy at 0.7 each: {down:?}");
}

/// The bounds moved (TTIN raised the floor): the target follows at once.
#[test]
fn a_target_outside_moved_bounds_is_brought_back() {
    let mut rule = Autoscaler::new();
    let bounds = Bounds {
        floor: 3,
        ceiling: 6,
        idle_window_ms: 20_000,
    };
    let sample = Sample {
        at_ms: 1_000,
        workers: vec![
            WorkerLoad {
                busy: 0.0,
                stuck: false
            };
            2
        ],
        booting: 0,
        queued: 0,
        memory_ceiling: None,
    };
    let d = rule.observe(sample, 2, bounds).expect("a decision");
    assert_eq!((d.direction, d.to), (Direction::Up, 3));
    assert_eq!(d.reason, "below the floor of 3");
}

/// Nothing is decided from a window that does not yet cover its span.
#[test]
fn no_decision_before_a_full_window() {
    let mut rule = Autoscaler::new();
    let bounds = Bounds {
        floor: 1,
        ceiling: 4,
        idle_window_ms: 20_000,
    };
    let busy = |at_ms| Sample {
        at_ms,
        workers: vec![WorkerLoad {
            busy: 1.0,
            stuck: false,
        }],
        booting: 0,
        queued: 0,
        memory_ceiling: None,
    };
    for t in (0..UP_WINDOW_MS).step_by(SAMPLE_EVERY_MS as usize) {
        assert_eq!(rule.observe(busy(t), 1, bounds), None, "at {t} ms");
    }
    assert!(rule.observe(busy(UP_WINDOW_MS), 1, bounds).is_some());
}
