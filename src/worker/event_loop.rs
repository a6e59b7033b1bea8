//! The worker's event loop: accept on the shared listeners, drive every connection's
//! state machine, enforce deadlines, drain on TERM.
//!
//! With `--threads 1` the application is called right here, on the loop's thread, with
//! the GIL held while events are processed and released only around epoll: no
//! hand-off per request. With `--threads N` complete requests are handed to the
//! `pool` and come back when their response is sent, so a slow request never stalls
//! the loop or the other threads.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use pyo3::prelude::*;

use super::conn::{Conn, Drive, Exec, StreamJob};
use super::listening::{Listening, LISTENER_BASE};
use super::pool::{Pool, Work};
use super::{Service, Shared};
use crate::net::transport::Transport;
use crate::net::Listener;
use crate::net::{Local, Peer};
use crate::signals::SignalPipe;

mod stop;
mod sweep;

const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
const WAKER_TOKEN: Token = Token(usize::MAX - 2);
/// `--reload` with the inotify engine: its descriptor has events.
const WATCH_TOKEN: Token = Token(usize::MAX - 3);
/// Most connections accepted per listener wake-up.
const ACCEPT_BATCH: usize = 64;
/// The loop's heartbeat on the scoreboard is written at most this often: the master
/// reads it against `--timeout` (seconds), so a fresher one tells it nothing, and a
/// turn of the loop per request would otherwise convert the time each turn.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(10);

/// Why a connection is driven.
#[derive(PartialEq, Eq)]
enum Input {
    /// An epoll event, a new connection or a return from the pool: new bytes may
    /// have arrived.
    Event,
    /// Its turn in the run queue.
    Queued,
}

pub struct EventLoop<'a> {
    poll: Poll,
    listening: Listening<'a>,
    locals: Vec<Arc<Local>>,
    signals: SignalPipe,
    shared: Arc<Shared>,
    service: Arc<Service>,
    pool: Option<Pool>,
    /// Connection slots; `None` is free or, for keys in the pool, away.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections that yielded with input possibly waiting, served in turn after
    /// each batch of events (see `Conn::after_response`).
    runnable: VecDeque<usize>,
    /// Connections open, including those away in the pool.
    open: usize,
    accepting: bool,
    stop_by: Option<Instant>,
    /// The master's pid, to notice being orphaned.
    parent: i32,
    watch: Option<super::watch::SourceWatch>,
    graceful_timeout: Duration,
    /// When the periodic work (deadlines, parent, sources) is next due.
    next_sweep: Instant,
    /// When the heartbeat is next written (`HEARTBEAT_EVERY`).
    next_heartbeat: Instant,
}

impl<'a> EventLoop<'a> {
    pub fn new(
        listeners: &'a [Listener],
        signals: SignalPipe,
        shared: Arc<Shared>,
        service: Arc<Service>,
        threads: usize,
        graceful_timeout: Duration,
    ) -> std::io::Result<EventLoop<'a>> {
        let poll = Poll::new()?;
        signals.register(poll.registry(), SIGNAL_TOKEN)?;
        let listening = Listening::new(&poll, listeners, shared.peers, threads <= 1)?;
        let pool = if threads > 1 {
            let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
            Some(Pool::start(
                threads,
                Arc::clone(&shared),
                Arc::clone(&service),
                waker,
            )?)
        } else {
            None
        };
        let watch =
            shared.settings.reload.as_ref().map(|r| {
                super::watch::SourceWatch::new(r.reload_engine, r.reload_extra_files.clone())
            });
        if let Some(fd) = watch.as_ref().and_then(super::watch::SourceWatch::fd) {
            poll.registry()
                .register(&mut SourceFd(&fd), WATCH_TOKEN, Interest::READABLE)?;
        }
        let sweep_every = shared.settings.sweep_every;
        let locals = listeners
            .iter()
            .map(|l| Arc::new(l.local.clone()))
            .collect();
        Ok(EventLoop {
            poll,
            listening,
            locals,
            signals,
            shared,
            service,
            pool,
            conns: Vec::new(),
            free: Vec::new(),
            runnable: VecDeque::new(),
            open: 0,
            accepting: true,
            stop_by: None,
            // SAFETY: getppid has no preconditions.
            parent: unsafe { libc::getppid() },
            watch,
            graceful_timeout,
            next_sweep: Instant::now() + sweep_every,
            next_heartbeat: Instant::now(),
        })
    }

    /// Runs until the worker has drained after a stop.
    pub fn run(&mut self) {
        if self.pool.is_some() {
            self.run_with(Exec::Pool);
        } else {
            let service = Arc::clone(&self.service);
            Python::with_gil(|py| self.run_with(Exec::Inline(py, &service)));
        }
    }

    /// Today's driver: block in epoll until readiness or the next deadline, then step.
    fn run_with(&mut self, exec: Exec<'_>) {
        let mut events = Events::with_capacity(256);
        let mut timeout = Duration::ZERO;
        loop {
            let poll = &mut self.poll;
            let result = match exec {
                Exec::Inline(py, _) => py.allow_threads(|| poll.poll(&mut events, Some(timeout))),
                Exec::Pool => poll.poll(&mut events, Some(timeout)),
            };
            if let Err(e) = result {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("epoll failed: {e}");
                    return;
                }
                events.clear();
            }
            match self.step(exec, &events) {
                Some(next) => timeout = next.saturating_duration_since(Instant::now()),
                None => return,
            }
        }
    }

    /// The readiness events already waiting, without blocking (a driver that waits
    /// elsewhere, such as asyncio watching `poll_fd`, then calls `step` with them).
    pub fn poll_ready(&mut self, events: &mut Events) {
        if self.poll.poll(events, Some(Duration::ZERO)).is_err() {
            events.clear();
        }
    }

    /// The epoll descriptor: readable when `poll_ready` has events.
    /// The slot an ASGI driver counts its loop's idle time in, when autoscaling wants
    /// it (`Settings::measure_loop_idle`).
    pub fn idle_clock_slot(&self) -> Option<&'static crate::scoreboard::Slot> {
        self.shared
            .settings
            .measure_loop_idle
            .then_some(self.shared.slot)
    }

    pub fn poll_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.poll.as_raw_fd()
    }

    /// Connection `key` has news from its application (an ASGI `send()`): it gets a
    /// turn in the next `step`.
    pub fn wake(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key).and_then(Option::as_mut) {
            if !conn.queued {
                conn.queued = true;
                self.runnable.push_back(key);
            }
        }
    }

    /// When a graceful stop must be over, once one began.
    pub fn stop_deadline(&self) -> Option<Instant> {
        self.stop_by
    }

    /// One turn of the loop, given the readiness events that woke it: handle them,
    /// give each connection in the run queue its turn, then the periodic work (expired
    /// deadlines, an orphaned worker, `--reload`). Returns when the loop next has work
    /// without an event (now, while connections wait for a turn), or `None` once a
    /// stopping worker has drained. Any driver can call it: today's blocking epoll
    /// loop, or an asyncio loop that watches the epoll descriptor.
    pub fn step(&mut self, exec: Exec<'_>, events: &Events) -> Option<Instant> {
        for event in events.iter() {
            match event.token() {
                SIGNAL_TOKEN => self.handle_signals(),
                WAKER_TOKEN => self.collect_finished(exec),
                WATCH_TOKEN => self.check_watch_events(),
                Token(t) if t >= LISTENER_BASE => self.accept(exec, t - LISTENER_BASE),
                Token(t) => self.drive(exec, t, Input::Event),
            }
        }
        // One more turn each for those that yielded; a key closed and reused since
        // is merely driven once more, which is harmless.
        for _ in 0..self.runnable.len() {
            if let Some(key) = self.runnable.pop_front() {
                self.drive(exec, key, Input::Queued);
            }
        }
        if !events.is_empty() {
            yield_cpu();
        }
        let now = Instant::now();
        if now >= self.next_heartbeat {
            self.shared.slot.heartbeat_at(now);
            self.next_heartbeat = now + HEARTBEAT_EVERY;
        }
        crate::statsd::flush(now);
        self.listening.resume_if_due(&self.poll, self.open, now);
        if now >= self.next_sweep {
            self.sweep(now);
        }
        if let Some(deadline) = self.stop_by {
            if Instant::now() >= deadline {
                return None;
            }
            if self.open == 0 {
                // Done, unless clients wait in the backlog that only we may serve.
                return self.take_the_backlog(exec).then(Instant::now);
            }
        }
        if !self.runnable.is_empty() {
            return Some(now);
        }
        Some(match self.listening.pause_ends() {
            Some(t) => t.min(self.next_sweep),
            None => self.next_sweep,
        })
    }

    fn handle_signals(&mut self) {
        use signal_hook::consts::*;
        for sig in self.signals.take() {
            match sig {
                SIGINT | SIGQUIT => {
                    tracing::info!("Worker exiting (pid: {})", std::process::id());
                    if let Some(h) = &self.service.hooks {
                        Python::with_gil(|py| {
                            h.call(py, "worker_int", Vec::new());
                            h.call(py, "worker_exit", Vec::new());
                        });
                    }
                    std::process::exit(0)
                }
                SIGUSR1 => self.shared.reopen_logs(),
                SIGTERM if self.stop_by.is_none() => {
                    if self.shared.settings.uvicorn_records {
                        tracing::info!("Shutting down");
                    } else {
                        tracing::info!("Worker exiting (pid: {})", std::process::id());
                    }
                    self.begin_stop();
                }
                _ => {}
            }
        }
    }

    fn accept(&mut self, exec: Exec<'_>, index: usize) {
        if !self.listening.accepting() {
            return;
        }
        self.accept_batch(exec, index);
        if self.accepting {
            self.listening.after_accepting(&self.poll, self.open);
        }
    }

    fn accept_batch(&mut self, exec: Exec<'_>, index: usize) {
        // Bounded, so one busy listener cannot starve the rest of the loop; the
        // listener is level-triggered and wakes us again for what is left. Beyond the
        // first connection, only while no other worker holds fewer: a burst of new
        // clients is shared out rather than taken by whichever worker woke first.
        for taken in 0..ACCEPT_BATCH {
            if !self.accepting {
                return;
            }
            if taken > 0 && self.listening.lead(self.open) > 0 {
                return;
            }
            if self.open >= self.shared.settings.max_connections && !self.make_room() {
                return;
            }
            let (sock, addr) = match self.listening.listeners()[index].socket.accept() {
                Ok(pair) => {
                    self.shared.slot.accept_worked();
                    pair
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.shared.slot.accept_worked();
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The client gave up while in the backlog: the next one may be fine.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => {
                    self.accept_failed(&e);
                    return;
                }
            };
            if let Some(conn) = self.open_conn(index, sock, &addr) {
                self.admit(exec, conn);
            }
        }
    }

    /// At `--worker-connections`: room for a client that is there (after the last one
    /// of a burst, evicting would close an idle connection, or back off, for nobody).
    /// `false` leaves the rest in the kernel's backlog until a connection frees up.
    fn make_room(&mut self) -> bool {
        if !self.listening.clients_waiting() {
            return false;
        }
        if !self.evict_idle() {
            self.listening.back_off(&self.poll);
            return false;
        }
        true
    }

    /// Out of descriptors or memory: pause accepting for a while; anything else is the
    /// one client's problem.
    fn accept_failed(&mut self, e: &std::io::Error) {
        match e.raw_os_error() {
            Some(errno @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                // The master logs the episode once, not each retry.
                self.shared.slot.accept_failed(errno);
                self.listening.back_off(&self.poll);
            }
            _ => tracing::debug!("accept failed: {e}"),
        }
    }

    /// A new client's connection: who it is (a trusted proxy's PROXY header expected?
    /// `--forwarded-allow-ips`?), over TLS or not. `None` when it cannot be served, or
    /// may not be: a uwsgi peer outside `--uwsgi-allow-from` is closed unanswered.
    fn open_conn(
        &self,
        index: usize,
        sock: socket2::Socket,
        addr: &socket2::SockAddr,
    ) -> Option<Conn> {
        sock.set_nonblocking(true).ok()?;
        let settings = &self.shared.settings;
        if let (Some(allowed), Some(sa)) = (&settings.uwsgi, addr.as_socket()) {
            if !allowed.allows(sa.ip()) {
                tracing::warn!(
                    "uwsgi connection from {} refused: not in --uwsgi-allow-from",
                    sa.ip().to_canonical()
                );
                return None;
            }
        }
        let proxy = match addr.as_socket() {
            Some(sa) if !settings.proxy_allow_from.allows(sa.ip()) => None,
            _ if settings.proxy_mode == crate::http::proxy::ProxyMode::Off => None,
            _ => Some(settings.proxy_mode),
        };
        let peer = match addr.as_socket() {
            Some(sa) => {
                let _ = sock.set_nodelay(true);
                Peer {
                    addr: sa.ip().to_canonical().to_string(),
                    port: sa.port().to_string(),
                    trusted: settings.forwarded_allow_ips.allows(sa.ip()),
                }
            }
            None => Peer {
                addr: String::new(),
                port: String::new(),
                trusted: true,
            },
        };
        let transport = match &settings.tls {
            Some(tls) => match Transport::tls(sock, tls) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("cannot start a TLS session: {e}");
                    return None;
                }
            },
            None => Transport::new(sock),
        };
        Some(Conn::new(
            transport,
            peer,
            proxy,
            Arc::clone(&self.locals[index]),
            settings.request_timeout,
        ))
    }

    /// A connection into the table and the poll, counted, and driven at once (its
    /// request may already be there).
    fn admit(&mut self, exec: Exec<'_>, mut conn: Conn) {
        let key = match self.free.pop() {
            Some(k) => k,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        conn.key = key;
        if self
            .poll
            .registry()
            .register(&mut SourceFd(&conn.fd()), Token(key), Interest::READABLE)
            .is_err()
        {
            self.free.push(key);
            return;
        }
        self.conns[key] = Some(conn);
        self.open += 1;
        self.publish_open();
        self.shared
            .slot
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.drive(exec, key, Input::Event);
    }

    fn drive(&mut self, exec: Exec<'_>, key: usize, input: Input) {
        let Some(conn) = self.conns.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        match input {
            // Already waiting for its turn: serving it now would give a client that
            // keeps sending a turn per packet instead of one per round.
            Input::Event if conn.queued => {
                conn.note_event();
                return;
            }
            Input::Event => conn.note_event(),
            Input::Queued => conn.queued = false,
        }
        let drive = conn.drive(exec, &self.shared);
        if let Some(pool) = &self.pool {
            for job in conn.take_stream_jobs() {
                pool.run(key, Work::Stream(Box::new(job)));
            }
            pool.close_sources(conn.take_unclosed());
        }
        match drive {
            wait @ (Drive::WaitRead | Drive::WaitWrite | Drive::Yield) => {
                if wait == Drive::Yield && !conn.queued {
                    conn.queued = true;
                    self.runnable.push_back(key);
                }
                let want_write = wait == Drive::WaitWrite;
                if want_write != conn.writable_registered {
                    let interest = if want_write {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if self
                        .poll
                        .registry()
                        .reregister(&mut SourceFd(&conn.fd()), Token(key), interest)
                        .is_ok()
                    {
                        conn.writable_registered = want_write;
                    }
                }
            }
            Drive::Close => self.close(key),
            Drive::Dispatch => {
                let conn = self.conns[key].take().expect("present");
                if let Some(pool) = &self.pool {
                    pool.run(key, Work::Conn(conn));
                }
            }
        }
        self.check_max_requests();
    }

    /// Work back from the pool: connections whose response it produced come home;
    /// streams go back to their connection (or, when it is gone, are forgotten).
    fn collect_finished(&mut self, exec: Exec<'_>) {
        let Some(pool) = &self.pool else { return };
        let finished: Vec<_> = pool.finished().collect();
        for (key, work, keep) in finished {
            match work {
                Work::Stream(job) => {
                    let returned = match self.conns[key].as_mut() {
                        Some(conn) => conn.return_stream(job),
                        None => Err(job),
                    };
                    match returned {
                        Ok(()) => self.drive(exec, key, Input::Event),
                        Err(job) => self.forget_stream(*job),
                    }
                }
                Work::Conn(conn) => {
                    self.conns[key] = Some(conn);
                    if keep {
                        // Events that came while it was away were dropped: read as
                        // after one.
                        self.drive(exec, key, Input::Event);
                    } else {
                        self.close(key);
                    }
                }
            }
        }
    }

    /// A stream back from the pool whose connection is gone: the scoreboard forgets
    /// it; a pool thread closes its response.
    fn forget_stream(&self, job: StreamJob) {
        let source = job.abandon(&self.shared);
        if let Some(pool) = &self.pool {
            pool.close_sources(source.into_iter().collect());
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns[key].take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&conn.fd()));
            if conn.in_request {
                conn.abandon(&self.shared, Some(&self.service));
            }
            // Without the GIL here, a pool thread calls the abandoned iterable's close().
            if let Some(pool) = &self.pool {
                let mut sources = conn.take_all_sources();
                sources.extend(conn.take_unfinished());
                pool.close_sources(sources);
            }
            self.free.push(key);
            self.open -= 1;
            self.publish_open();
            if self.open < self.shared.settings.max_connections {
                self.listening.room(&self.poll);
            }
        }
    }

    fn publish_open(&self) {
        let open = self.open as u32;
        self.shared
            .slot
            .connections
            .store(open, std::sync::atomic::Ordering::Relaxed);
    }
}

/// After a batch of work, let whatever else is runnable on this core go first.
///
/// Under load a worker never runs out of ready connections, so it never sleeps; the
/// scheduler then treats it as a CPU hog and, when it preempts it, keeps all of its
/// connections waiting for a whole time slice — and the processes that feed it (a proxy,
/// the clients, the other workers) wait for theirs while it runs. Stepping aside after
/// each batch turns those long, rare stalls into short, frequent turns: at 64
/// connections on 2 cores, hello-world p99 fell from ~8 ms to ~1–2 ms with no loss of
/// throughput (docs/performance.md). With nothing else runnable it returns at once.
fn yield_cpu() {
    // SAFETY: sched_yield has no preconditions and cannot fail on Linux.
    unsafe { libc::sched_yield() };
}
