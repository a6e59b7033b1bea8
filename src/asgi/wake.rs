//! `Wakeups`: how a request's `send()`/task end, running in asyncio outside the event
//! loop's turn, tells the connection core that a connection has output or is done.
//! The keys are collected here and the driver's next turn drives them; the first key
//! of a quiet moment schedules that turn with `loop.call_soon`. No I/O here.

use std::sync::{Mutex, OnceLock};

use pyo3::prelude::*;

#[derive(Default)]
pub struct Wakeups {
    state: Mutex<WakeState>,
    /// `loop.call_soon` and the driver's turn callable, set once the driver exists.
    schedule: OnceLock<(Py<PyAny>, Py<PyAny>)>,
}

#[derive(Default)]
struct WakeState {
    keys: Vec<usize>,
    /// A turn is running: it takes the keys before it ends, nothing to schedule.
    in_turn: bool,
    /// A turn is already scheduled.
    scheduled: bool,
}

impl Wakeups {
    /// The driver: `call_soon(turn)` runs its next turn.
    pub fn set_schedule(&self, call_soon: Py<PyAny>, turn: Py<PyAny>) {
        let _ = self.schedule.set((call_soon, turn));
    }

    /// Connection `key` has something for the core.
    pub fn wake(&self, py: Python<'_>, key: usize) {
        let schedule = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.keys.push(key);
            let schedule = !s.in_turn && !s.scheduled;
            s.scheduled |= schedule;
            schedule
        };
        if schedule {
            if let Some((call_soon, turn)) = self.schedule.get() {
                if let Err(e) = call_soon.call1(py, (turn,)) {
                    tracing::error!("cannot schedule the event loop's turn: {e}");
                }
            }
        }
    }

    /// A turn starts: keys woken from now on wait for it.
    pub fn begin_turn(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_turn = true;
        s.scheduled = false;
    }

    /// The keys woken so far (moved into `out`, which is cleared first).
    pub fn take(&self, out: &mut Vec<usize>) {
        out.clear();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut s.keys, out);
    }

    /// The turn ends; false if keys arrived since the last `take` (take them first).
    pub fn end_turn(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.keys.is_empty() {
            return false;
        }
        s.in_turn = false;
        true
    }
}
