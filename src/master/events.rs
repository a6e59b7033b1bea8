//! The `watch` subscription's events: what happens to workers, reloads, the worker
//! target and the logs, as one JSON line each (`{"event": NAME, "time": UNIX_S, ...}`)
//! to every subscribed control connection. Building a line costs nothing when nobody
//! watches; a subscriber that reads slowly misses events rather than growing the
//! master's memory (`ControlServer::broadcast`).

use serde_json::{Map, Value};

use super::{unix_now, Arbiter};

impl Arbiter {
    /// Sends `event` with `fields` (a JSON object) to the watchers, if any.
    pub(super) fn emit(&mut self, event: &str, fields: Value) {
        let Some(control) = self.control.as_mut() else {
            return;
        };
        if !control.has_watchers() {
            return;
        }
        let mut obj = Map::new();
        obj.insert("event".into(), Value::from(event));
        obj.insert(
            "time".into(),
            Value::from((unix_now() * 1000.0).round() / 1000.0),
        );
        if let Value::Object(f) = fields {
            obj.extend(f);
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        control.broadcast(&line, self.poll.registry());
    }
}
