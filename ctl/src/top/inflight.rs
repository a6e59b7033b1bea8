//! What a worker's long request is (method, target, client), for the table's last
//! column. `status` has only its age; the request itself is in the worker's `stack`
//! answer. Asking costs the worker a moment with the GIL, so `top` asks once per
//! request, and only for one inside the application for at least [`LONG_S`]: the
//! requests an operator looks for, and the only ones that stay on screen long enough
//! to read. Quick requests come and go between two refreshes and are not asked about.

use std::collections::HashMap;

use serde_json::Value;

use super::frame::Frame;

/// A request inside the application for this long is described.
pub const LONG_S: f64 = 1.0;

/// Requests already asked about, by worker pid: when each began (on top's clock,
/// seconds) and its description once known.
#[derive(Default)]
pub struct Requests {
    known: HashMap<i32, (f64, Option<String>)>,
}

impl Requests {
    /// The workers whose long request has not been asked about yet (noted as asked);
    /// `now_s` is the frame's time on top's clock. Forgets workers no longer busy.
    pub fn new_long_requests(&mut self, frame: &Frame, now_s: f64) -> Vec<(i32, f64)> {
        let mut ask = Vec::new();
        let mut busy = HashMap::new();
        for row in &frame.workers {
            let Some(age) = row.current_s.filter(|a| *a >= LONG_S) else {
                continue;
            };
            let began = now_s - age;
            busy.insert(row.pid, ());
            // The same request if it began within half a second of the one known.
            let same = self
                .known
                .get(&row.pid)
                .is_some_and(|(b, _)| (b - began).abs() < 0.5);
            if !same {
                self.known.insert(row.pid, (began, None));
                ask.push((row.pid, began));
            }
        }
        self.known.retain(|pid, _| busy.contains_key(pid));
        ask
    }

    /// A `stack` answer for the request that began at `began`.
    pub fn answer(&mut self, pid: i32, began: f64, description: String) {
        if let Some(entry) = self.known.get_mut(&pid) {
            if entry.0 == began {
                entry.1 = Some(description);
            }
        }
    }

    /// The description of `pid`'s long request, when known.
    pub fn describe(&self, pid: i32) -> Option<&str> {
        self.known.get(&pid).and_then(|(_, d)| d.as_deref())
    }
}

/// The longest-running request in a worker's `stack` answer: `GET /path client`.
pub fn from_stack(answer: &Value) -> Option<String> {
    answer["threads"]
        .as_array()?
        .iter()
        .map(|t| &t["request"])
        .filter(|r| r.is_object())
        .max_by(|a, b| {
            let age = |r: &Value| r["age_s"].as_f64().unwrap_or(0.0);
            age(a).total_cmp(&age(b))
        })
        .map(|r| {
            let client = r["client"]
                .as_str()
                .filter(|c| !c.is_empty())
                .unwrap_or("local");
            format!(
                "{} {} {client}",
                r["method"].as_str().unwrap_or("?"),
                r["path"].as_str().unwrap_or("?")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_longest_request_of_a_stack_answer() {
        let answer = json!({"pid": 7, "threads": [
            {"ident": 1, "name": "a", "stack": "", "request": null},
            {"ident": 2, "name": "b", "stack": "", "request":
                {"method": "GET", "path": "/slow?x=1", "client": "10.0.0.7", "age_s": 4.2}},
            {"ident": 3, "name": "c", "stack": "", "request":
                {"method": "POST", "path": "/quick", "client": "", "age_s": 1.0}}]});
        assert_eq!(
            from_stack(&answer).as_deref(),
            Some("GET /slow?x=1 10.0.0.7")
        );
        assert_eq!(from_stack(&json!({"pid": 7, "threads": []})), None);
    }
}
