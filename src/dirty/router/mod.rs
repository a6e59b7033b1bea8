//! The dirty router: rgun's side of Gunicorn's dirty arbiter. A process the master
//! forks (it runs no Python), with one thread and one poll loop. It accepts
//! `gunicorn.dirty` clients (HTTP workers, dirty workers using the stash) on the
//! socket `GUNICORN_DIRTY_SOCKET` names, routes each call to a dirty worker of the
//! serving generation that holds its app (`routes.rs`), forwards the answer — or the
//! chunks of a stream — back under the caller's request id, answers stash operations
//! itself (`stash.rs`), and enforces `--dirty-timeout`.
//!
//! The master tells it over a socketpair (newline-terminated lines): `W pid gen index`
//! with the router's end of that worker's link attached (SCM_RIGHTS), `G gen app...`
//! (the generation to route to and its apps). It tells the master `T pid` (a call on
//! that worker timed out: abort it) and `C json` (counters for metrics and status).
//!
//! Invariant: a call's answer goes only to the caller that made it: each call gets a
//! router id of its own, and an answer whose call has ended (timed out, its worker
//! lost, its caller gone) is dropped.

mod routes;
mod stash;

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::frame::Frames;
use crate::signals::SignalPipe;

const LISTENER: Token = Token(0);
const MASTER: Token = Token(1);
const SIGNALS: Token = Token(2);
const FIRST_CONN: usize = 16;
/// A client that does not read its answers may have this much waiting; past it, it
/// is dropped rather than the router holding its stream in memory.
const MAX_UNSENT_BYTES: usize = 256 * 1024 * 1024;
/// How often counters go to the master.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What the router gets from the master at fork.
pub struct RouterInit {
    pub listener: std::os::unix::net::UnixListener,
    pub master: std::os::unix::net::UnixStream,
    /// `--dirty-timeout` in seconds (0: none).
    pub timeout_secs: u64,
    /// `--dirty-threads`: calls one worker runs at once.
    pub threads: usize,
    pub master_pid: nix::unistd::Pid,
    pub master_signals: Vec<signal_hook::SigId>,
    pub signals: Option<crate::python::BlockedSignals>,
}

/// The router's main: never returns.
pub fn run(mut init: RouterInit) -> ! {
    for id in init.master_signals.drain(..) {
        signal_hook::low_level::unregister(id);
    }
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    crate::process::set_title("rgun: dirty router");
    let code = match Router::new(init) {
        Ok(mut router) => {
            router.serve();
            0
        }
        Err(e) => {
            tracing::error!("the dirty router cannot start: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// A connection's other end.
enum Peer {
    Client(Client),
    Worker(Worker),
}

struct Client {
    /// The router id of its call in flight; its next frames wait meanwhile.
    call: Option<u64>,
}

struct Worker {
    pid: i32,
    generation: u32,
    index: usize,
    /// What it holds, from its hello; `None` while it boots.
    apps: Option<Vec<String>>,
    in_flight: usize,
    /// Draining (it was told to stop) or aborted (a call timed out): no new calls.
    closed_to_calls: bool,
}

struct Conn {
    stream: UnixStream,
    frames: Frames,
    out: Vec<u8>,
    /// WRITABLE interest is registered (`out` waits for room).
    want_write: bool,
    peer: Peer,
}

/// A call dispatched to a worker.
struct Call {
    client: Option<Token>,
    client_id: u64,
    worker: Token,
    started: Instant,
    deadline: Option<Instant>,
}

/// A call waiting for a free worker that holds its app.
struct Queued {
    client: Token,
    client_id: u64,
    app: String,
    payload: Vec<u8>,
    deadline: Option<Instant>,
}

/// Counters for the master (`C` lines).
#[derive(Default, PartialEq, Clone)]
struct Counters {
    calls: u64,
    errors: u64,
    timeouts: u64,
    /// Sum of finished calls' durations, in microseconds.
    call_us: u64,
    queued: usize,
    in_flight: usize,
}

pub struct Router {
    poll: Poll,
    listener: UnixListener,
    master: std::os::unix::net::UnixStream,
    master_in: Vec<u8>,
    /// Descriptors received from the master, for its `W` lines in order.
    passed: VecDeque<OwnedFd>,
    signals: SignalPipe,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    generation: u32,
    apps: Vec<String>,
    calls: HashMap<u64, Call>,
    queue: VecDeque<Queued>,
    next_id: u64,
    rotate: usize,
    stash: stash::Stash,
    timeout: Option<Duration>,
    timeout_secs: u64,
    threads: usize,
    counters: Counters,
    reported: Counters,
    last_report: Instant,
}

impl Router {
    fn new(mut init: RouterInit) -> std::io::Result<Router> {
        use signal_hook::consts::*;
        let signals = SignalPipe::install(&[SIGTERM, SIGINT, SIGQUIT])?;
        for sig in [SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGWINCH] {
            // SAFETY: setting a standard disposition.
            unsafe { libc::signal(sig, libc::SIG_IGN) };
        }
        if let Some(blocked) = init.signals.take() {
            blocked.release();
        }
        let poll = Poll::new()?;
        init.listener.set_nonblocking(true)?;
        init.master.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(init.listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let master_fd = init.master.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&master_fd), MASTER, Interest::READABLE)?;
        signals.register(poll.registry(), SIGNALS)?;
        Ok(Router {
            poll,
            listener,
            master: init.master,
            master_in: Vec::new(),
            passed: VecDeque::new(),
            signals,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            generation: 0,
            apps: Vec::new(),
            calls: HashMap::new(),
            queue: VecDeque::new(),
            next_id: 1,
            rotate: 0,
            stash: stash::Stash::default(),
            timeout: (init.timeout_secs > 0).then(|| Duration::from_secs(init.timeout_secs)),
            timeout_secs: init.timeout_secs,
            threads: init.threads.max(1),
            counters: Counters::default(),
            reported: Counters::default(),
            last_report: Instant::now(),
        })
    }

    /// Wait for something → handle it → expire time-outs → report; until TERM or the
    /// master's end.
    fn serve(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let wait = self.next_deadline();
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!("dirty router poll failed: {e}");
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    MASTER => {
                        if !self.read_master() {
                            return;
                        }
                    }
                    SIGNALS => {
                        if !self.signals.take().is_empty() {
                            return;
                        }
                    }
                    token => {
                        if event.is_writable() {
                            self.flush(token);
                        }
                        if event.is_readable() || event.is_read_closed() {
                            self.read_conn(token);
                        }
                    }
                }
            }
            self.expire(Instant::now());
            self.report();
        }
    }

    fn next_deadline(&self) -> Duration {
        let now = Instant::now();
        let soonest = self
            .calls
            .values()
            .filter_map(|c| c.deadline)
            .chain(self.queue.iter().filter_map(|q| q.deadline))
            .min();
        let wake = soonest.map_or(REPORT_EVERY, |d| d.saturating_duration_since(now));
        wake.min(REPORT_EVERY).max(Duration::from_millis(1))
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add_conn(stream, Peer::Client(Client { call: None })),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("dirty router: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, mut stream: UnixStream, peer: Peer) {
        let token = Token(self.next_token);
        self.next_token += 1;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            tracing::warn!("dirty router: cannot watch a connection: {e}");
            return;
        }
        self.conns.insert(
            token,
            Conn {
                stream,
                frames: Frames::default(),
                out: Vec::new(),
                want_write: false,
                peer,
            },
        );
    }

    /// The master's lines (and the descriptors passed with them); false when the
    /// master has gone.
    fn read_master(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match recv_with_fds(self.master.as_raw_fd(), &mut buf, &mut self.passed) {
                Ok(0) => return false,
                Ok(n) => self.master_in.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
        while let Some(nl) = memchr::memchr(b'\n', &self.master_in) {
            let line = String::from_utf8_lossy(&self.master_in[..nl]).into_owned();
            self.master_in.drain(..=nl);
            self.master_said(&line);
        }
        true
    }

    fn master_said(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("W") => {
                let nums: Vec<i64> = words.filter_map(|w| w.parse().ok()).collect();
                let Some(fd) = self.passed.pop_front() else {
                    tracing::error!("dirty router: a worker's link was announced but not passed");
                    return;
                };
                let &[pid, generation, index] = &nums[..] else {
                    return;
                };
                let stream = std::os::unix::net::UnixStream::from(fd);
                if stream.set_nonblocking(true).is_err() {
                    return;
                }
                let worker = Worker {
                    pid: pid as i32,
                    generation: generation as u32,
                    index: index as usize,
                    apps: None,
                    in_flight: 0,
                    closed_to_calls: false,
                };
                self.add_conn(UnixStream::from_std(stream), Peer::Worker(worker));
            }
            Some("G") => {
                self.generation = words.next().and_then(|g| g.parse().ok()).unwrap_or(0);
                self.apps = words.map(str::to_owned).collect();
                self.pump_queue();
            }
            _ => tracing::warn!("dirty router: unknown word from the master: {line:?}"),
        }
    }

    /// Appends bytes for a connection and sends what the socket takes.
    fn send(&mut self, token: Token, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.out.extend_from_slice(bytes);
        if conn.out.len() > MAX_UNSENT_BYTES {
            tracing::warn!("dirty router: a client stopped reading its answers; dropping it");
            self.drop_conn(token, "it stopped reading");
            return;
        }
        self.flush(token);
    }

    fn flush(&mut self, token: Token) {
        if !self.write_out(token) {
            self.drop_conn(token, "its socket failed");
        }
    }

    /// Sends what the socket takes and watches for room when some is left; false
    /// when the socket failed.
    fn write_out(&mut self, token: Token) -> bool {
        let Some(conn) = self.conns.get_mut(&token) else {
            return true;
        };
        while !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        let want = !conn.out.is_empty();
        if want != conn.want_write {
            conn.want_write = want;
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, interest);
        }
        true
    }

    fn read_conn(&mut self, token: Token) {
        let mut buf = [0u8; 64 * 1024];
        let mut ended = false;
        if let Some(conn) = self.conns.get_mut(&token) {
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => conn.frames.push(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        ended = true;
                        break;
                    }
                }
            }
        }
        self.take_frames(token);
        if ended {
            self.drop_conn(token, "the connection closed");
        }
    }

    /// Removes a connection: a worker's calls fail, a client's call is orphaned.
    fn drop_conn(&mut self, token: Token, why: &str) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        match conn.peer {
            Peer::Client(Client { call: Some(id) }) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.client = None;
                }
                self.queue.retain(|q| q.client != token);
            }
            Peer::Client(_) => self.queue.retain(|q| q.client != token),
            Peer::Worker(w) => self.worker_gone(token, &w, why),
        }
    }

    fn report(&mut self) {
        self.counters.queued = self.queue.len();
        self.counters.in_flight = self.calls.len();
        if self.counters == self.reported || self.last_report.elapsed() < REPORT_EVERY {
            return;
        }
        self.last_report = Instant::now();
        self.reported = self.counters.clone();
        let c = &self.counters;
        let json = serde_json::json!({
            "calls": c.calls, "errors": c.errors, "timeouts": c.timeouts,
            "call_us": c.call_us, "queued": c.queued, "in_flight": c.in_flight,
        });
        let line = format!("C {json}\n");
        self.tell_master(&line);
    }

    fn tell_master(&mut self, line: &str) {
        // Lines are small and rare; a master that does not read is stuck anyway.
        let _ = (&self.master).write_all(line.as_bytes());
    }
}

/// recvmsg(2) that keeps any descriptors passed with the bytes.
fn recv_with_fds(fd: RawFd, buf: &mut [u8], passed: &mut VecDeque<OwnedFd>) -> nix::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel just gave us these descriptors; nothing else owns them.
            passed.extend(fds.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    Ok(msg.bytes)
}
