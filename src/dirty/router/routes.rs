//! Where calls go: a client's frames (a call, a stash operation, a status query), the
//! choice of worker (the serving generation's, holding the app, with a free thread;
//! else the call waits in order), a worker's frames back to the caller under the
//! caller's id, a lost worker's calls failed, and `--dirty-timeout`.

use std::time::Instant;

use mio::Token;

use super::super::errors::{self, DirtyErrorKind};
use super::super::frame::{self, Frame, Kind};
use super::super::tlv::Value;
use super::super::{BYE_ID, HELLO_ID};
use super::{Call, Peer, Queued, Router};

impl Router {
    /// Handles the whole frames a connection has sent; a client's next call waits
    /// while one is in flight.
    pub(super) fn take_frames(&mut self, token: Token) {
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            let client = match &conn.peer {
                Peer::Client(c) if c.call.is_some() => return,
                Peer::Client(_) => true,
                Peer::Worker(_) => false,
            };
            let frame = match conn.frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("dirty router: {e}; closing the connection");
                    self.drop_conn(token, &e.to_string());
                    return;
                }
            };
            if client {
                self.client_frame(token, frame);
            } else {
                self.worker_frame(token, frame);
            }
        }
    }

    fn client_frame(&mut self, token: Token, frame: Frame) {
        match frame.kind {
            Kind::Request => self.request(token, frame),
            Kind::Stash => {
                let answer = match frame.value() {
                    Ok(op) => self.stash.apply(&op),
                    Err(e) => Err((DirtyErrorKind::Dirty, e.to_string())),
                };
                let bytes = match answer {
                    Ok(v) => {
                        frame::encode_value(Kind::Response, frame.id, &Value::dict([("result", v)]))
                    }
                    Err((kind, message)) => {
                        errors::error_frame(frame.id, kind, &message, Vec::new())
                    }
                };
                self.send(token, &bytes);
            }
            Kind::Status => {
                let status = self.status_value();
                let bytes = frame::encode_value(
                    Kind::Response,
                    frame.id,
                    &Value::dict([("result", status)]),
                );
                self.send(token, &bytes);
            }
            Kind::Manage => {
                let bytes = errors::error_frame(
                    frame.id,
                    DirtyErrorKind::Dirty,
                    "rgun's master manages the dirty pool: use rgunctl scale --dirty",
                    Vec::new(),
                );
                self.send(token, &bytes);
            }
            other => {
                tracing::warn!("dirty router: a client sent a {other:?} frame; closing it");
                self.drop_conn(token, "it broke the protocol");
            }
        }
    }

    /// A call: to a free worker, into the queue, or refused at once.
    fn request(&mut self, token: Token, frame: Frame) {
        let app = match frame.value() {
            Ok(v) => match v.get("app_path") {
                Some(Value::Str(s)) => s.clone(),
                _ => "None".to_owned(),
            },
            Err(e) => {
                let bytes = errors::error_frame(
                    frame.id,
                    DirtyErrorKind::Dirty,
                    &e.to_string(),
                    Vec::new(),
                );
                self.send(token, &bytes);
                return;
            }
        };
        if let Peer::Client(c) = &mut self.conns.get_mut(&token).expect("present").peer {
            // Marked busy now: the call either runs, waits or is answered below.
            c.call = Some(0);
        }
        self.queue.push_back(Queued {
            client: token,
            client_id: frame.id,
            app,
            payload: frame.payload,
            deadline: self.timeout.map(|t| Instant::now() + t),
        });
        self.pump_queue();
    }

    /// Gives waiting calls to free workers, in order; refuses those no worker of the
    /// serving generation holds or will hold.
    pub(super) fn pump_queue(&mut self) {
        let mut waiting = std::mem::take(&mut self.queue);
        while let Some(q) = waiting.pop_front() {
            match self.choose_worker(&q.app) {
                Choice::Worker(worker) => self.dispatch(q, worker),
                Choice::Wait => self.queue.push_back(q),
                Choice::Refuse { any_workers } => {
                    let bytes = errors::no_workers(q.client_id, &q.app, any_workers);
                    self.counters.errors += 1;
                    self.finish_client(q.client, &bytes);
                }
            }
        }
    }

    fn choose_worker(&mut self, app: &str) -> Choice {
        let serving = |w: &super::Worker| w.generation == self.generation && !w.closed_to_calls;
        let mut holders: Vec<(usize, Token)> = Vec::new();
        let mut booting = false;
        let mut any_workers = false;
        for (token, conn) in &self.conns {
            let Peer::Worker(w) = &conn.peer else {
                continue;
            };
            if !serving(w) {
                continue;
            }
            any_workers = true;
            match &w.apps {
                None => booting = true,
                Some(apps) if apps.iter().any(|a| a == app) => holders.push((w.in_flight, *token)),
                Some(_) => {}
            }
        }
        if !self.apps.iter().any(|a| a == app) {
            return Choice::Refuse { any_workers };
        }
        // The least busy; among equals, in turn.
        holders.sort_by_key(|(busy, token)| (*busy, token.0));
        let free: Vec<Token> = holders
            .iter()
            .filter(|(busy, _)| *busy < self.threads)
            .map(|(_, t)| *t)
            .collect();
        if !free.is_empty() {
            let least = holders[0].0;
            let ties: Vec<Token> = holders
                .iter()
                .filter(|(b, _)| *b == least)
                .map(|(_, t)| *t)
                .collect();
            self.rotate = self.rotate.wrapping_add(1);
            return Choice::Worker(ties[self.rotate % ties.len()]);
        }
        if !holders.is_empty() || booting {
            return Choice::Wait;
        }
        Choice::Refuse { any_workers }
    }

    fn dispatch(&mut self, q: Queued, worker: Token) {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(Peer::Worker(w)) = self.conns.get_mut(&worker).map(|c| &mut c.peer) {
            w.in_flight += 1;
        }
        if let Some(Peer::Client(c)) = self.conns.get_mut(&q.client).map(|c| &mut c.peer) {
            c.call = Some(id);
        }
        self.calls.insert(
            id,
            Call {
                client: Some(q.client),
                client_id: q.client_id,
                worker,
                started: Instant::now(),
                deadline: self.timeout.map(|t| Instant::now() + t),
            },
        );
        self.send(worker, &frame::encode(Kind::Request, id, &q.payload));
    }

    fn worker_frame(&mut self, token: Token, frame: Frame) {
        match (frame.kind, frame.id) {
            (Kind::Status, HELLO_ID) => {
                let apps: Vec<String> =
                    match frame.value().ok().and_then(|v| v.get("apps").cloned()) {
                        Some(Value::List(items)) => items
                            .iter()
                            .filter_map(|a| a.as_str().map(str::to_owned))
                            .collect(),
                        _ => Vec::new(),
                    };
                if let Some(Peer::Worker(w)) = self.conns.get_mut(&token).map(|c| &mut c.peer) {
                    w.apps = Some(apps);
                }
                self.pump_queue();
            }
            (Kind::Status, BYE_ID) => {
                if let Some(Peer::Worker(w)) = self.conns.get_mut(&token).map(|c| &mut c.peer) {
                    w.closed_to_calls = true;
                }
                self.close_if_drained(token);
                self.pump_queue();
            }
            (Kind::Chunk, id) => {
                let Some(call) = self.calls.get_mut(&id) else {
                    return; // the call has ended: a late chunk
                };
                call.deadline = self.timeout.map(|t| Instant::now() + t);
                let (client, client_id) = (call.client, call.client_id);
                if let Some(client) = client {
                    self.send(
                        client,
                        &frame::encode(Kind::Chunk, client_id, &frame.payload),
                    );
                }
            }
            (kind @ (Kind::Response | Kind::Error | Kind::End), id) => {
                let Some(call) = self.calls.remove(&id) else {
                    tracing::debug!("dirty router: dropped a late answer (call {id})");
                    return;
                };
                self.counters.calls += 1;
                self.counters.call_us += call.started.elapsed().as_micros() as u64;
                if kind == Kind::Error {
                    self.counters.errors += 1;
                }
                self.worker_done(token);
                if let Some(client) = call.client {
                    self.finish_client(
                        client,
                        &frame::encode(kind, call.client_id, &frame.payload),
                    );
                }
                self.pump_queue();
            }
            (kind, _) => tracing::warn!("dirty router: a worker sent a {kind:?} frame"),
        }
    }

    /// A worker finished a call: one thread free; a draining worker with none left
    /// gets its link closed (its cue to exit).
    fn worker_done(&mut self, token: Token) {
        if let Some(Peer::Worker(w)) = self.conns.get_mut(&token).map(|c| &mut c.peer) {
            w.in_flight = w.in_flight.saturating_sub(1);
        }
        self.close_if_drained(token);
    }

    fn close_if_drained(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if let Peer::Worker(w) = &conn.peer {
            if w.closed_to_calls
                && w.in_flight == 0
                && self.calls.values().all(|c| c.worker != token)
            {
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    /// The last frame of a client's call: sent, and its next call may start.
    fn finish_client(&mut self, client: Token, bytes: &[u8]) {
        self.send(client, bytes);
        if let Some(Peer::Client(c)) = self.conns.get_mut(&client).map(|c| &mut c.peer) {
            c.call = None;
        }
        self.take_frames(client);
    }

    /// A worker's link ended: each of its calls fails with `DirtyWorkerError`.
    pub(super) fn worker_gone(&mut self, token: Token, w: &super::Worker, why: &str) {
        let lost: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.worker == token)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let call = self.calls.remove(&id).expect("listed");
            self.counters.errors += 1;
            if let Some(client) = call.client {
                let bytes = errors::worker_lost(
                    call.client_id,
                    w.pid,
                    &format!("worker {} exited ({why})", w.pid),
                );
                self.finish_client(client, &bytes);
            }
        }
        self.pump_queue();
    }

    /// `--dirty-timeout`: a call past it is answered `DirtyTimeoutError` and its
    /// worker aborted by the master (its stacks logged); it gets no more calls, and
    /// its late answer, if any, is dropped. A call that waited that long for a worker
    /// is answered the same.
    pub(super) fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let call = self.calls.remove(&id).expect("listed");
            self.counters.timeouts += 1;
            self.counters.errors += 1;
            let mut pid = None;
            if let Some(Peer::Worker(w)) = self.conns.get_mut(&call.worker).map(|c| &mut c.peer) {
                w.closed_to_calls = true;
                w.in_flight = w.in_flight.saturating_sub(1);
                pid = Some(w.pid);
            }
            if let Some(pid) = pid {
                self.tell_master(&format!("T {pid}\n"));
            }
            if let Some(client) = call.client {
                self.finish_client(
                    client,
                    &errors::timed_out(call.client_id, self.timeout_secs),
                );
            }
        }
        let (late, waiting): (Vec<Queued>, Vec<Queued>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|q| q.deadline.is_some_and(|d| d <= now));
        self.queue = waiting.into();
        for q in late {
            self.counters.timeouts += 1;
            self.counters.errors += 1;
            self.finish_client(q.client, &errors::timed_out(q.client_id, self.timeout_secs));
        }
    }

    /// The answer to a status query (what Gunicorn's `gunicornc show dirty` reads).
    fn status_value(&self) -> Value {
        let mut workers: Vec<&super::Worker> = self
            .conns
            .values()
            .filter_map(|c| match &c.peer {
                Peer::Worker(w) => Some(w),
                Peer::Client(_) => None,
            })
            .collect();
        workers.sort_by_key(|w| (w.generation, w.index));
        let rows: Vec<Value> = workers
            .iter()
            .map(|w| {
                Value::dict([
                    ("pid", Value::Int(i64::from(w.pid))),
                    ("age", Value::Int(w.index as i64)),
                    (
                        "apps",
                        Value::List(w.apps.iter().flatten().map(Value::str).collect()),
                    ),
                    ("booted", Value::Bool(w.apps.is_some())),
                    ("last_heartbeat", Value::None),
                ])
            })
            .collect();
        Value::dict([
            ("arbiter_pid", Value::Int(i64::from(std::process::id()))),
            ("worker_count", Value::Int(rows.len() as i64)),
            ("workers", Value::List(rows)),
            (
                "apps",
                Value::List(self.apps.iter().map(Value::str).collect()),
            ),
        ])
    }
}

enum Choice {
    Worker(Token),
    Wait,
    Refuse { any_workers: bool },
}
