//! What `rgunctl top` shows, computed from two `status` answers: the header's figures
//! (rates, percentiles and CPU over the interval between them) and one row per worker.
//! Pure: no I/O and no terminal, so the arithmetic is tested on its own.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::clock::format_age;
use crate::protocol::{Status, Traffic};

/// One `status` answer and when it was taken.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds on a monotonic clock.
    pub at_s: f64,
    pub status: Status,
    /// The answer's `master` object as sent, with fields this rgunctl may not know.
    pub master: Value,
}

/// One screen's figures. `None` where the master does not provide a figure (an older
/// master) or no interval has passed yet.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    /// (label, value) pairs for the header, in order; extended by whatever the master
    /// adds to `status.master` (a floor and ceiling of autoscaling, say).
    pub header: Vec<(String, String)>,
    pub interval_s: Option<f64>,
    pub requests_per_s: Option<f64>,
    /// Responses per second by status class, `1xx` to `5xx`.
    pub class_per_s: Option<[f64; 5]>,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub in_flight: Option<u64>,
    /// Summed over the TCP listeners: (waiting, limit).
    pub backlog: Option<(u64, u64)>,
    pub workers: Vec<Row>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub pid: i32,
    pub generation: u32,
    pub state: String,
    pub requests_per_s: Option<f64>,
    pub requests: u64,
    /// Age of the request inside the application, seconds.
    pub current_s: Option<f64>,
    pub rss_bytes: u64,
    pub cpu_percent: Option<f64>,
    pub connections: u32,
    /// A long request's method, target and client, when `top` has asked the worker
    /// (see `inflight`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// Master fields the header shows under its own names, in this order; any other
/// scalar field of `status.master` follows under its protocol name.
const KNOWN: [(&str, &str); 9] = [
    ("version", "rgun"),
    ("pid", "master"),
    ("uptime_s", "up"),
    ("generation", "generation"),
    ("state", "phase"),
    ("workers_target", "target"),
    ("workers_min", "floor"),
    ("workers_max", "ceiling"),
    ("app", "app"),
];
/// Master fields shown elsewhere or not at all.
const HIDDEN: [&str; 3] = ["started_at", "binds", "accept_failing"];

impl Frame {
    /// The frame for `now`, with rates over the interval since `prev` when given.
    pub fn new(prev: Option<&Sample>, now: &Sample) -> Frame {
        let interval = prev.map(|p| now.at_s - p.at_s).filter(|d| *d > 0.0);
        let traffic = now.status.traffic.as_ref();
        let before = prev.and_then(|p| p.status.traffic.as_ref());
        let (mut requests_per_s, mut class_per_s, mut p50_s, mut p99_s) = (None, None, None, None);
        if let (Some(t), Some(b), Some(d)) = (traffic, before, interval) {
            let per_s: Vec<f64> = (0..5)
                .map(|i| t.responses[i].saturating_sub(b.responses[i]) as f64 / d)
                .collect();
            requests_per_s = Some(per_s.iter().sum());
            class_per_s = Some([per_s[0], per_s[1], per_s[2], per_s[3], per_s[4]]);
            let counts = bucket_deltas(b, t);
            p50_s = quantile(0.5, &t.duration_bounds_s, &counts);
            p99_s = quantile(0.99, &t.duration_bounds_s, &counts);
        }
        let backlog = (!now.status.listeners.is_empty()).then(|| {
            now.status.listeners.iter().fold((0, 0), |(w, l), q| {
                (w + u64::from(q.backlog), l + u64::from(q.backlog_limit))
            })
        });
        Frame {
            header: header(now),
            interval_s: interval,
            requests_per_s,
            class_per_s,
            p50_s,
            p99_s,
            in_flight: traffic.map(|t| t.in_flight),
            backlog,
            workers: rows(prev, now, interval),
        }
    }

    /// Worker counts for the header: ready workers of the serving generation, all.
    pub fn ready_workers(&self, generation: u32) -> usize {
        self.workers
            .iter()
            .filter(|w| w.generation == generation && (w.state == "idle" || w.state == "busy"))
            .count()
    }
}

fn header(now: &Sample) -> Vec<(String, String)> {
    let Value::Object(master) = &now.master else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, label) in KNOWN {
        if let Some(v) = master.get(key) {
            let text = match key {
                "uptime_s" => v.as_f64().map_or_else(|| scalar(v), format_age),
                _ => scalar(v),
            };
            out.push((label.to_owned(), text));
        }
    }
    if let Some(f) = master.get("accept_failing").filter(|f| f.is_object()) {
        out.push((
            "ACCEPT FAILING".into(),
            format!("{} failures: {}", f["failures"], scalar(&f["error"])),
        ));
    }
    for (key, v) in master {
        let known = KNOWN.iter().any(|(k, _)| k == key) || HIDDEN.contains(&key.as_str());
        if !known && !v.is_object() && !v.is_array() && !v.is_null() {
            out.push((key.clone(), scalar(v)));
        }
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn rows(prev: Option<&Sample>, now: &Sample, interval: Option<f64>) -> Vec<Row> {
    let before: HashMap<i32, &crate::protocol::WorkerStatus> = prev
        .map(|p| p.status.workers.iter().map(|w| (w.pid, w)).collect())
        .unwrap_or_default();
    now.status
        .workers
        .iter()
        .map(|w| {
            let was = before.get(&w.pid);
            let rate = |now: f64, then: f64| interval.map(|d| (now - then).max(0.0) / d);
            Row {
                pid: w.pid,
                generation: w.generation,
                state: w.state.clone(),
                requests_per_s: was.and_then(|b| rate(w.requests as f64, b.requests as f64)),
                requests: w.requests,
                current_s: w.current_request_s,
                rss_bytes: w.rss_bytes,
                cpu_percent: was.and_then(|b| {
                    let (now, then) = (w.cpu_s?, b.cpu_s?);
                    rate(now, then).map(|r| r * 100.0)
                }),
                connections: w.connections,
                request: None,
            }
        })
        .collect()
}

/// Responses per bucket over the interval.
fn bucket_deltas(before: &Traffic, now: &Traffic) -> Vec<u64> {
    now.duration_counts
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(before.duration_counts.get(i).copied().unwrap_or(0)))
        .collect()
}

/// The `q` quantile of a histogram (counts per bucket, the last one unbounded),
/// interpolated inside its bucket as Prometheus's `histogram_quantile` does; the
/// highest bound when it falls in the last bucket; `None` without responses.
pub fn quantile(q: f64, bounds: &[f64], counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&hi) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lo + (hi - lo) * ((rank - below as f64) / n as f64));
        }
        below += n;
    }
    bounds.last().copied()
}

/// Seconds as a short duration: `850 us`, `12.5 ms`, `1.20 s`.
pub fn format_duration(secs: f64) -> String {
    if secs < 0.001 {
        format!("{:.0} us", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(at_s: f64, requests: u64, counts: Vec<u64>, cpu_s: f64) -> Sample {
        let answer = json!({
            "master": {"pid": 10, "version": "0.1.0", "started_at": 0.0, "uptime_s": 75.0,
                "app": "a:b", "binds": [], "generation": 2, "workers_target": 2,
                "state": "running", "workers_max": 8},
            "workers": [{"pid": 11, "generation": 2, "state": "busy", "age_s": 5.0,
                "requests": requests, "connections": 3, "current_request_s": 0.5,
                "last_heartbeat_s": 0.1, "rss_bytes": 1048576, "cpu_s": cpu_s}],
            "totals": {"requests": requests, "workers_spawned": 1, "workers_exited": 0,
                "timeouts": 0, "reloads": 1},
            "traffic": {"responses": [0, requests, 0, 0, 0], "duration_bounds_s": [0.01, 0.1],
                "duration_counts": counts, "duration_sum_s": 1.0, "in_flight": 1},
            "listeners": [{"bind": "0.0.0.0:80", "backlog": 2, "backlog_limit": 128}]
        });
        Sample {
            at_s,
            status: serde_json::from_value(answer.clone()).unwrap(),
            master: answer["master"].clone(),
        }
    }

    #[test]
    fn rates_and_percentiles_are_over_the_interval() {
        let a = sample(100.0, 1000, vec![900, 100, 0], 1.0);
        let b = sample(102.0, 1200, vec![1000, 190, 10], 1.5);
        let f = Frame::new(Some(&a), &b);
        assert_eq!(f.requests_per_s, Some(100.0));
        assert_eq!(f.class_per_s.unwrap()[1], 100.0);
        // 200 responses: 100 under 10 ms, 90 up to 100 ms, 10 slower.
        assert_eq!(f.p50_s, Some(0.01));
        assert_eq!(f.p99_s, Some(0.1));
        assert_eq!(f.workers[0].requests_per_s, Some(100.0));
        assert_eq!(f.workers[0].cpu_percent, Some(25.0));
        assert_eq!(f.backlog, Some((2, 128)));
        assert_eq!(f.in_flight, Some(1));
        // No interval yet: no rates.
        let first = Frame::new(None, &b);
        assert_eq!(first.requests_per_s, None);
        assert_eq!(first.workers[0].cpu_percent, None);
    }

    #[test]
    fn the_header_shows_what_the_master_sends() {
        let f = Frame::new(None, &sample(1.0, 0, vec![0, 0, 0], 0.0));
        let labels: Vec<&str> = f.header.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "rgun",
                "master",
                "up",
                "generation",
                "phase",
                "target",
                "ceiling",
                "app"
            ]
        );
        assert_eq!(f.header[2].1, "1m15s");
    }

    #[test]
    fn quantiles_interpolate_inside_a_bucket() {
        let bounds = [0.25, 0.5];
        assert_eq!(quantile(0.5, &bounds, &[0, 10, 0]), Some(0.375));
        assert_eq!(quantile(0.99, &bounds, &[0, 0, 5]), Some(0.5));
        assert_eq!(quantile(0.5, &bounds, &[0, 0, 0]), None);
    }
}
