//! `stack`: asks live workers for their Python stacks (`worker::stack`) and answers
//! once each has replied on its pipe, or after `STACK_WAIT` for those that did not (a
//! worker whose GIL is held by C code cannot answer). Nothing here blocks: the
//! request waits in `stack_waiters` while the loop goes on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rgunctl::protocol::{ErrorBody, ErrorCode};
use serde_json::{json, Value};

use super::Arbiter;

/// How long workers get to send their stacks.
const STACK_WAIT: Duration = Duration::from_secs(3);

/// A `stack` request waiting for its workers.
pub struct StackWaiter {
    conn: usize,
    id: Value,
    /// One pid asked for (an error if it cannot answer), or every worker.
    single: bool,
    /// Worker pid → its answer once it came.
    answers: BTreeMap<i32, Option<Value>>,
    deadline: Instant,
}

impl Arbiter {
    /// Signals the workers `pid` names (every ready one when `None`); the answer
    /// follows when they have replied.
    pub(super) fn request_stacks(
        &mut self,
        conn: usize,
        id: Value,
        pid: Option<i32>,
    ) -> Result<(), ErrorBody> {
        let targets: Vec<i32> = self
            .workers
            .values()
            .filter(|w| pid.is_none_or(|p| w.pid.as_raw() == p))
            .filter(|w| w.ready)
            .map(|w| w.pid.as_raw())
            .collect();
        if targets.is_empty() {
            return Err(ErrorBody::new(
                ErrorCode::Failed,
                match pid {
                    Some(p) if self.workers.values().any(|w| w.pid.as_raw() == p) => {
                        format!("worker {p} is still booting")
                    }
                    Some(p) => format!("no worker with pid {p}"),
                    None => "no worker is ready".into(),
                },
            ));
        }
        let signal = crate::worker::stack::stack_signal();
        for p in &targets {
            // SAFETY: kill(2) sends a signal the worker handles (installed before it
            // reported ready, and only ready workers are asked).
            unsafe { libc::kill(*p, signal) };
        }
        self.stack_waiters.push(StackWaiter {
            conn,
            id,
            single: pid.is_some(),
            answers: targets.into_iter().map(|p| (p, None)).collect(),
            deadline: Instant::now() + STACK_WAIT,
        });
        Ok(())
    }

    /// A worker's `S<json>` line: its stacks, for whoever asked.
    pub(super) fn take_stacks(&mut self, pid: i32, line: &[u8]) {
        let answer: Value = serde_json::from_slice(line).unwrap_or_else(
            |e| json!({"pid": pid, "error": format!("unreadable answer from the worker: {e}")}),
        );
        for w in &mut self.stack_waiters {
            if let Some(slot) = w.answers.get_mut(&pid) {
                *slot = Some(answer.clone());
            }
        }
        self.answer_stack_waiters();
    }

    /// Answers the requests whose workers have all replied, or whose time is up.
    /// Answers every `stack` request now, with what its workers have sent so far.
    pub(super) fn answer_stack_waiters_now(&mut self) {
        let now = Instant::now();
        for w in &mut self.stack_waiters {
            w.deadline = now;
        }
        self.answer_stack_waiters();
    }

    pub(super) fn answer_stack_waiters(&mut self) {
        let now = Instant::now();
        let (done, waiting): (Vec<StackWaiter>, Vec<StackWaiter>) =
            std::mem::take(&mut self.stack_waiters)
                .into_iter()
                .partition(|w| now >= w.deadline || w.answers.values().all(Option::is_some));
        self.stack_waiters = waiting;
        for w in done {
            let late = |pid: i32| {
                format!(
                    "worker {pid} did not answer within {} s (its GIL held by C code, or it exited)",
                    STACK_WAIT.as_secs()
                )
            };
            if w.single {
                let (pid, answer) = w.answers.into_iter().next().expect("one target");
                match answer {
                    Some(a) if a.get("error").is_none() => self.reply_ok(w.conn, &w.id, a),
                    Some(a) => {
                        let msg = a["error"].as_str().unwrap_or("failed").to_owned();
                        self.reply_error(w.conn, &w.id, &ErrorBody::new(ErrorCode::Failed, msg))
                    }
                    None => self.reply_error(
                        w.conn,
                        &w.id,
                        &ErrorBody::new(ErrorCode::Failed, late(pid)),
                    ),
                }
            } else {
                let workers: Vec<Value> = w
                    .answers
                    .into_iter()
                    .map(|(pid, a)| a.unwrap_or_else(|| json!({"pid": pid, "error": late(pid)})))
                    .collect();
                self.reply_ok(w.conn, &w.id, json!({"workers": workers}));
            }
        }
    }
}
