//! A [`Frame`] as text: the header lines, the worker table's columns (titles, cells,
//! sort order), and the plain form `--batch`/`--once` print. The full-screen view
//! (`screen`) lays out the same lines and cells, so both say the same thing.

use std::cmp::Ordering;

use super::frame::{format_duration, Frame, Row};

/// The worker table's columns, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Pid,
    Generation,
    State,
    RequestsPerS,
    Requests,
    Current,
    Rss,
    Cpu,
    Connections,
}

pub const COLUMNS: [Column; 9] = [
    Column::Pid,
    Column::Generation,
    Column::State,
    Column::RequestsPerS,
    Column::Requests,
    Column::Rss,
    Column::Cpu,
    Column::Connections,
    Column::Current,
];

impl Column {
    pub fn title(self) -> &'static str {
        match self {
            Column::Pid => "PID",
            Column::Generation => "GEN",
            Column::State => "STATE",
            Column::RequestsPerS => "REQ/S",
            Column::Requests => "TOTAL",
            Column::Current => "IN FLIGHT",
            Column::Rss => "RSS",
            Column::Cpu => "CPU%",
            Column::Connections => "CONNS",
        }
    }

    /// Display width (the last column, the request in flight, may take more).
    pub fn width(self) -> u16 {
        match self {
            Column::Pid => 8,
            Column::Generation => 4,
            Column::State => 9,
            Column::RequestsPerS => 9,
            Column::Requests => 10,
            Column::Current => 40,
            Column::Rss => 11,
            Column::Cpu => 6,
            Column::Connections => 6,
        }
    }

    pub fn cell(self, r: &Row) -> String {
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
        match self {
            Column::Pid => r.pid.to_string(),
            Column::Generation => r.generation.to_string(),
            Column::State => r.state.clone(),
            Column::RequestsPerS => opt(r.requests_per_s, &|v| format!("{v:.1}")),
            Column::Requests => r.requests.to_string(),
            Column::Current => match (r.current_s, &r.request) {
                (Some(age), Some(what)) => format!("{age:.1}s {what}"),
                (age, _) => opt(age, &|v| format!("{v:.1}s")),
            },
            Column::Rss => format!("{:.1} MiB", r.rss_bytes as f64 / 1048576.0),
            Column::Cpu => opt(r.cpu_percent, &|v| format!("{v:.1}")),
            Column::Connections => r.connections.to_string(),
        }
    }

    /// Rows in this column's natural order: pid and generation ascending, the
    /// figures largest first.
    pub fn compare(self, a: &Row, b: &Row) -> Ordering {
        let f = |v: Option<f64>| v.unwrap_or(-1.0);
        let by = match self {
            Column::Pid => return a.pid.cmp(&b.pid),
            Column::Generation => return a.generation.cmp(&b.generation).then(a.pid.cmp(&b.pid)),
            Column::State => return a.state.cmp(&b.state).then(a.pid.cmp(&b.pid)),
            Column::RequestsPerS => f(b.requests_per_s).total_cmp(&f(a.requests_per_s)),
            Column::Requests => b.requests.cmp(&a.requests),
            Column::Current => f(b.current_s).total_cmp(&f(a.current_s)),
            Column::Rss => b.rss_bytes.cmp(&a.rss_bytes),
            Column::Cpu => f(b.cpu_percent).total_cmp(&f(a.cpu_percent)),
            Column::Connections => b.connections.cmp(&a.connections),
        };
        by.then(a.pid.cmp(&b.pid))
    }
}

/// The rows sorted by `column` (reversed when `reverse`).
pub fn sorted(frame: &Frame, column: Column, reverse: bool) -> Vec<Row> {
    let mut rows = frame.workers.clone();
    rows.sort_by(|a, b| {
        let o = column.compare(a, b);
        if reverse {
            o.reverse()
        } else {
            o
        }
    });
    rows
}

/// The header: the master's fields, the workers, then the traffic over the interval.
pub fn header_lines(frame: &Frame) -> Vec<String> {
    let fields: Vec<String> = frame
        .header
        .iter()
        .map(|(label, value)| format!("{label} {value}"))
        .collect();
    let generation = frame
        .header
        .iter()
        .find(|(l, _)| l == "generation")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut workers = format!(
        "workers {} ready, {} running",
        frame.ready_workers(generation),
        frame.workers.len()
    );
    workers.push_str(&format!(
        "   in flight {}   backlog {}",
        dash(frame.in_flight.map(|n| n.to_string())),
        dash(frame.backlog.map(|(w, l)| format!("{w}/{l}")))
    ));
    let classes = frame
        .class_per_s
        .map(|c| format!("2xx {:.1}  4xx {:.1}  5xx {:.1}", c[1], c[3], c[4]));
    let traffic = format!(
        "req/s {}   {}   p50 {}   p99 {}",
        dash(frame.requests_per_s.map(|r| format!("{r:.1}"))),
        dash(classes),
        dash(frame.p50_s.map(format_duration)),
        dash(frame.p99_s.map(format_duration)),
    );
    vec![fields.join("   "), workers, traffic]
}

/// One `--batch` frame: the header, then the table sorted by `column`.
pub fn plain(frame: &Frame, column: Column) -> String {
    let mut out = header_lines(frame).join("\n");
    out.push_str("\n\n");
    let row = |cells: Vec<String>| {
        COLUMNS
            .iter()
            .zip(cells)
            .map(|(c, text)| format!("{text:<w$}", w = c.width() as usize))
            .collect::<Vec<_>>()
            .join(" ")
            .trim_end()
            .to_owned()
    };
    out.push_str(&row(COLUMNS.iter().map(|c| c.title().to_owned()).collect()));
    out.push('\n');
    for r in sorted(frame, column, false) {
        out.push_str(&row(COLUMNS.iter().map(|c| c.cell(&r)).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: i32, requests: u64, cpu: Option<f64>) -> Row {
        Row {
            pid,
            generation: 1,
            state: "idle".into(),
            requests_per_s: None,
            requests,
            current_s: None,
            rss_bytes: 0,
            cpu_percent: cpu,
            connections: 0,
            request: None,
        }
    }

    #[test]
    fn figures_sort_largest_first_and_pids_ascending() {
        let frame = Frame {
            header: Vec::new(),
            interval_s: None,
            requests_per_s: None,
            class_per_s: None,
            p50_s: None,
            p99_s: None,
            in_flight: None,
            backlog: None,
            workers: vec![
                row(3, 10, None),
                row(1, 30, Some(5.0)),
                row(2, 20, Some(9.0)),
            ],
        };
        let pids = |rows: Vec<Row>| rows.iter().map(|r| r.pid).collect::<Vec<_>>();
        assert_eq!(pids(sorted(&frame, Column::Pid, false)), [1, 2, 3]);
        assert_eq!(pids(sorted(&frame, Column::Requests, false)), [1, 2, 3]);
        assert_eq!(pids(sorted(&frame, Column::Requests, true)), [3, 2, 1]);
        // A figure not known yet sorts last.
        assert_eq!(pids(sorted(&frame, Column::Cpu, false)), [2, 1, 3]);
        let text = plain(&frame, Column::Pid);
        assert!(text.contains("PID      GEN  STATE"), "{text}");
        assert!(text.contains("req/s -"), "{text}");
    }
}
