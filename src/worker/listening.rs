//! The worker's place on the shared listening sockets, and how it shares new clients
//! with the other workers of its master.
//!
//! Every worker registers every listener with `EPOLLEXCLUSIVE`, so one arrival wakes one
//! sleeping worker, not all of them. But the kernel wakes the *first* sleeper in the
//! listener's wait queue, which, left alone, is the same worker every time: we saw
//! 12/52 and 18/46 connections per worker at 64 clients, and the fuller worker's
//! clients waited twice as long for as long as their connections lived. So each worker
//! publishes its open connections in the scoreboard (`Peers`) and:
//!
//! - takes more than one connection per wake-up only while no peer holds fewer;
//! - one ahead of some peer, re-registers (delete and add), which puts it last in the
//!   wait queue, so the next arrival wakes a peer;
//! - two or more ahead, leaves the wait queue, so arrivals wake the others. It comes
//!   back as soon as it is no longer ahead, or at the latest after [`MAX_PAUSE`]: on
//!   a loaded machine clients arrive further apart than a millisecond or two, and a
//!   woken peer may wait a while for a CPU, and the worker that happens to be on one
//!   must not take them all meanwhile. Every [`PAUSE`] it looks at the backlog: if a
//!   client waits there and no peer accepted anything while the emptiest peers are
//!   inside a request (with `--threads 1` they accept nothing until it ends), it
//!   comes back and does not pause again for [`COOLDOWN`]: a stuck peer must not cap
//!   this worker at one accept per pause. A backlog the peers are working through
//!   brings it back too, to help with the burst.
//!
//! A worker that cannot take a connection at all (at `--worker-connections` with
//! nothing idle to evict, or out of descriptors) leaves the wait queues too, so that a
//! level-triggered listener with clients in its backlog does not wake it in a loop. It
//! comes back when one of its connections closes, or after [`RETRY`] (by then one may
//! have gone idle and can be evicted). A registration that fails (`ENOMEM`,
//! `max_user_watches`) is retried the same way rather than leaving the worker off the
//! listeners for good.
//!
//! Per-worker `SO_REUSEPORT` sockets would balance by hash instead, but every
//! generation and a USR2 master inherit the one set of listeners the first master
//! bound.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::Poll;

use crate::net::Listener;
use crate::scoreboard::Peers;

/// How often a worker off the listeners looks for clients no peer took.
pub const PAUSE: Duration = Duration::from_millis(2);
/// The longest a worker stays off the listeners in one go.
pub const MAX_PAUSE: Duration = Duration::from_millis(50);
/// After a pause in which no peer accepted, how long before pausing again.
pub const COOLDOWN: Duration = Duration::from_millis(100);
/// How long a worker that could not accept or register stays off before trying again.
pub const RETRY: Duration = Duration::from_millis(100);

/// The first token of the listeners; listener `i` has `LISTENER_BASE + i`.
pub const LISTENER_BASE: usize = usize::MAX - 1024;

enum Place {
    /// In every listener's wait queue.
    Queued,
    /// Off the wait queues: looks at the backlog at `check`, comes back by `until`;
    /// the peers had accepted `peers_accepted` when it left.
    Paused {
        check: Instant,
        until: Instant,
        peers_accepted: u64,
    },
    /// Off the wait queues because it could not take or register a connection; back
    /// at `at`, or sooner when one of its connections closes.
    Retry { at: Instant },
    /// Off for good: the worker is draining.
    Stopped,
}

pub struct Listening<'a> {
    listeners: &'a [Listener],
    peers: Peers,
    /// The workers call the app on their loop's thread (`--threads 1`), so a peer
    /// inside a request accepts nothing until it is done.
    peers_block_in_requests: bool,
    place: Place,
    /// No pausing before then (a pause did not help).
    cooldown_until: Option<Instant>,
}

impl<'a> Listening<'a> {
    pub fn new(
        poll: &Poll,
        listeners: &'a [Listener],
        peers: Peers,
        peers_block_in_requests: bool,
    ) -> std::io::Result<Self> {
        let listening = Listening {
            listeners,
            peers,
            peers_block_in_requests,
            place: Place::Queued,
            cooldown_until: None,
        };
        listening.add_all(poll)?;
        Ok(listening)
    }

    pub fn listeners(&self) -> &'a [Listener] {
        self.listeners
    }

    pub fn accepting(&self) -> bool {
        !matches!(self.place, Place::Stopped)
    }

    /// How many more connections this worker holds than the emptiest other accepting
    /// worker (negative when it is the emptiest); 0 when it is alone.
    pub fn lead(&self, open: usize) -> i64 {
        match self.peers.fewest_connections() {
            Some(fewest) => open as i64 - i64::from(fewest),
            None => 0,
        }
    }

    /// After accepting: step back in the queue, or out of it, if we are ahead.
    pub fn after_accepting(&mut self, poll: &Poll, open: usize) {
        if !matches!(self.place, Place::Queued) {
            return;
        }
        let lead = self.lead(open);
        let now = Instant::now();
        let cooling = self.cooldown_until.is_some_and(|t| now < t);
        if lead >= 2 && !cooling {
            self.leave(
                poll,
                Place::Paused {
                    check: now + PAUSE,
                    until: now + MAX_PAUSE,
                    peers_accepted: self.peers.accepted(),
                },
            );
        } else if lead >= 1 {
            self.remove_all(poll);
            self.rejoin(poll, now);
        }
    }

    /// This worker cannot take a connection now (at the connection limit with nothing
    /// to evict, out of descriptors or memory): off the wait queues for [`RETRY`] or
    /// until [`Listening::room`], so a backlog it cannot take does not spin its loop.
    pub fn back_off(&mut self, poll: &Poll) {
        if matches!(self.place, Place::Queued) {
            let at = Instant::now() + RETRY;
            self.leave(poll, Place::Retry { at });
        }
    }

    /// A connection closed: a worker that backed off takes clients again.
    pub fn room(&mut self, poll: &Poll) {
        if matches!(self.place, Place::Retry { .. }) {
            self.rejoin(poll, Instant::now());
        }
    }

    /// When a worker off the listeners next looks again (for the loop's epoll time-out).
    pub fn pause_ends(&self) -> Option<Instant> {
        match self.place {
            Place::Paused { check, .. } => Some(check),
            Place::Retry { at } => Some(at),
            _ => None,
        }
    }

    /// Back in the queue once we are no longer ahead, clients wait that a stuck peer
    /// cannot take or that the peers are working through, or the pause is at its
    /// longest; otherwise look again in a `PAUSE`.
    pub fn resume_if_due(&mut self, poll: &Poll, open: usize, now: Instant) {
        let (check, until, peers_accepted) = match self.place {
            Place::Paused {
                check,
                until,
                peers_accepted,
            } => (check, until, peers_accepted),
            Place::Retry { at } if now >= at => return self.rejoin(poll, now),
            _ => return,
        };
        if self.lead(open) > 0 {
            if now < check {
                return;
            }
            let waiting = self.clients_waiting();
            let peers_took_some = self.peers.accepted() != peers_accepted;
            // Clients wait and no peer took any: the emptiest peer is inside a request
            // (stuck until it is done, with `--threads 1`) or has not been given a CPU
            // yet (give it until the longest pause).
            let peer_stuck = self.peers_block_in_requests && self.peers.emptiest_are_busy();
            let stuck = waiting && !peers_took_some && (peer_stuck || now >= until);
            let helping = waiting && peers_took_some;
            if !stuck && !helping && now < until {
                self.place = Place::Paused {
                    check: now + PAUSE,
                    until,
                    peers_accepted,
                };
                return;
            }
            if stuck {
                self.cooldown_until = Some(now + COOLDOWN);
            }
        }
        self.rejoin(poll, now);
    }

    /// Off the wait queues, into `place`.
    fn leave(&mut self, poll: &Poll, place: Place) {
        self.remove_all(poll);
        self.place = place;
    }

    /// Back into every listener's wait queue; if the kernel refuses, try again after
    /// [`RETRY`].
    fn rejoin(&mut self, poll: &Poll, now: Instant) {
        self.place = match self.add_all(poll) {
            Ok(()) => Place::Queued,
            Err(e) => {
                tracing::error!("cannot register the listeners, retrying: {e}");
                Place::Retry { at: now + RETRY }
            }
        };
    }

    /// Whether some listener has a connection in its backlog, not yet accepted.
    pub fn clients_waiting(&self) -> bool {
        let mut fds: Vec<libc::pollfd> = self
            .listeners
            .iter()
            .map(|l| libc::pollfd {
                fd: l.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd; a zero time-out never
        // blocks.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        n > 0
    }

    /// Off the listeners for good (draining).
    pub fn stop(&mut self, poll: &Poll) {
        self.leave(poll, Place::Stopped);
    }

    /// Registers every listener (one already registered counts as done), so that a
    /// failure part-way leaves the others in place for the retry.
    fn add_all(&self, poll: &Poll) -> std::io::Result<()> {
        let mut first_error = Ok(());
        for (i, l) in self.listeners.iter().enumerate() {
            match register_exclusive(poll, l.socket.as_raw_fd(), LISTENER_BASE + i) {
                Err(e) if e.raw_os_error() != Some(libc::EEXIST) && first_error.is_ok() => {
                    first_error = Err(e)
                }
                _ => {}
            }
        }
        first_error
    }

    /// Deregisters every listener; one not registered (a failed `add_all`) is skipped.
    fn remove_all(&self, poll: &Poll) {
        for l in self.listeners {
            // SAFETY: both descriptors are open; DEL ignores its event argument.
            let rc = unsafe {
                libc::epoll_ctl(
                    poll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    l.socket.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::error!("cannot deregister a listener: {e}");
                }
            }
        }
    }
}

/// Registers a listener with EPOLLEXCLUSIVE so that one incoming connection wakes one
/// worker, not all of them (mio has no flag for it; the token layout is mio's). A new
/// registration goes to the end of the listener's wait queue.
fn register_exclusive(poll: &Poll, fd: RawFd, token: usize) -> std::io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
        u64: token as u64,
    };
    // SAFETY: both descriptors are open; `event` is a valid epoll_event.
    let rc = unsafe { libc::epoll_ctl(poll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::scoreboard::{Scoreboard, WorkerState};

    /// A scoreboard with this worker in slot 0 and one accepting peer in slot 1.
    fn board_with_peer() -> (Scoreboard, &'static crate::scoreboard::Slot) {
        let board = Scoreboard::new().expect("map the scoreboard");
        for (i, pid) in [(0, 100), (1, 101)] {
            assert_eq!(board.claim(|j| j < i), Some(i));
            board.assign(i, pid);
            board.slot(i).set_state(WorkerState::Idle);
        }
        (board, board.slot(1))
    }

    #[test]
    fn a_worker_alone_never_steps_back() {
        let board = Scoreboard::new().expect("map the scoreboard");
        let poll = Poll::new().unwrap();
        let mut l = Listening::new(&poll, &[], Peers::new(board, 0), true).unwrap();
        l.after_accepting(&poll, 50);
        assert_eq!(l.lead(50), 0);
        assert!(l.pause_ends().is_none());
    }

    #[test]
    fn two_ahead_pauses_until_the_peer_catches_up() {
        let (board, peer) = board_with_peer();
        let poll = Poll::new().unwrap();
        let mut l = Listening::new(&poll, &[], Peers::new(board, 0), true).unwrap();
        l.after_accepting(&poll, 1);
        assert!(l.pause_ends().is_none(), "one ahead only re-queues");
        l.after_accepting(&poll, 2);
        assert!(l.pause_ends().is_some(), "two ahead pauses");
        // The peer takes the next clients: back at once, and free to pause again.
        peer.connections.store(2, Ordering::Relaxed);
        peer.accepted.fetch_add(2, Ordering::Relaxed);
        l.resume_if_due(&poll, 2, Instant::now());
        assert!(l.pause_ends().is_none());
        l.after_accepting(&poll, 4);
        assert!(l.pause_ends().is_some());
    }

    /// A listener on loopback, and a client waiting in its backlog.
    fn listener_with_a_client() -> (Vec<Listener>, std::net::TcpStream) {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let listener = Listener {
            socket: socket2::Socket::from(std::os::fd::OwnedFd::from(tcp)),
            local: crate::net::Local {
                name: "127.0.0.1".into(),
                port: "0".into(),
            },
            display: "test".into(),
            unix_path: None,
        };
        (vec![listener], client)
    }

    #[test]
    fn with_nobody_waiting_the_pause_goes_on() {
        let (board, _peer) = board_with_peer();
        let poll = Poll::new().unwrap();
        let mut l = Listening::new(&poll, &[], Peers::new(board, 0), true).unwrap();
        l.after_accepting(&poll, 3);
        let check = l.pause_ends().expect("paused");
        l.resume_if_due(&poll, 3, check);
        let next = l.pause_ends().expect("still paused: no client waits");
        assert!(next > check);
        l.resume_if_due(&poll, 3, check + MAX_PAUSE);
        assert!(l.pause_ends().is_none(), "back at the longest pause");
        l.after_accepting(&poll, 4);
        assert!(
            l.pause_ends().is_some(),
            "no cool-down: nobody was kept waiting"
        );
    }

    /// A pausing `Listening` over a listener with a client in its backlog, paused after
    /// three accepts; `end_the_pause` gets it, its poll, the peer that may turn busy and
    /// when the pause ends, and must end the pause; then the next accepts start no new
    /// pause (the cool-down).
    fn a_pause_ended_for_a_waiting_client(
        end_the_pause: impl FnOnce(&mut Listening, &Poll, &crate::scoreboard::Slot, Instant),
    ) {
        let (board, peer) = board_with_peer();
        let poll = Poll::new().unwrap();
        let (listeners, _client) = listener_with_a_client();
        let mut l = Listening::new(&poll, &listeners, Peers::new(board, 0), true).unwrap();
        l.after_accepting(&poll, 3);
        let check = l.pause_ends().expect("paused");
        assert!(wait_for(|| l.clients_waiting()), "the client never arrived");
        end_the_pause(&mut l, &poll, peer, check);
        assert!(l.pause_ends().is_none());
        l.after_accepting(&poll, 4);
        assert!(
            l.pause_ends().is_none(),
            "paused again within the cool-down"
        );
    }

    #[test]
    fn a_client_waiting_for_a_busy_peer_ends_the_pause_and_starts_a_cool_down() {
        a_pause_ended_for_a_waiting_client(|l, poll, peer, check| {
            // An idle peer that accepted nothing has not run yet: the pause goes on.
            l.resume_if_due(poll, 3, check);
            let check = l.pause_ends().expect("still paused: the peer is idle");
            // A peer inside a request accepts nothing until it is done.
            peer.set_state(WorkerState::Busy);
            l.resume_if_due(poll, 3, check);
        });
    }

    #[test]
    fn a_client_waiting_at_the_longest_pause_starts_a_cool_down() {
        a_pause_ended_for_a_waiting_client(|l, poll, _peer, check| {
            l.resume_if_due(poll, 3, check + MAX_PAUSE);
        });
    }

    /// Whether the listeners raise an event for `poll` now (a client waits).
    fn listener_ready(poll: &mut Poll) -> bool {
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        !events.is_empty()
    }

    #[test]
    fn a_worker_that_cannot_take_a_client_leaves_until_room_or_the_retry() {
        let (board, _peer) = board_with_peer();
        let mut poll = Poll::new().unwrap();
        let (listeners, _client) = listener_with_a_client();
        let mut l = Listening::new(&poll, &listeners, Peers::new(board, 0), true).unwrap();
        assert!(
            wait_for(|| listener_ready(&mut poll)),
            "the client never arrived"
        );
        l.back_off(&poll);
        let retry = l.pause_ends().expect("off the listeners");
        assert!(!listener_ready(&mut poll), "still woken by the backlog");
        l.room(&poll);
        assert!(l.pause_ends().is_none());
        assert!(
            listener_ready(&mut poll),
            "back on the listeners after room"
        );
        l.back_off(&poll);
        l.resume_if_due(&poll, 0, retry - RETRY / 2);
        assert!(l.pause_ends().is_some(), "back before the retry is due");
        let retry = l.pause_ends().unwrap();
        l.resume_if_due(&poll, 0, retry);
        assert!(l.pause_ends().is_none());
        assert!(
            listener_ready(&mut poll),
            "back on the listeners after the retry"
        );
        // Stopping deregisters whatever is registered, and stays stopped.
        l.stop(&poll);
        assert!(!listener_ready(&mut poll));
        l.room(&poll);
        assert!(!l.accepting() && !listener_ready(&mut poll));
    }

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        (0..200).any(|_| {
            f() || {
                std::thread::sleep(Duration::from_millis(5));
                false
            }
        })
    }
}
