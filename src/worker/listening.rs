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
//! - two or more ahead, leaves the wait queue for [`PAUSE`], so arrivals wake the
//!   others. It comes back when the pause ends or as soon as it is no longer ahead:
//!   connections already in the backlog that no peer was woken for wait at most that
//!   long, whatever the peers do. If no peer accepted anything meanwhile (with
//!   `--threads 1`, a peer inside a long request cannot), it does not pause again for
//!   [`COOLDOWN`]: a stuck peer must not cap this worker at one accept per pause.
//!
//! Per-worker `SO_REUSEPORT` sockets would balance by hash instead, but every
//! generation and a USR2 master inherit one set of listeners (DESIGN.md).

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::Poll;

use crate::master::listeners::Listener;
use crate::scoreboard::Peers;

/// How long a worker well ahead of its peers stays off the listeners.
pub const PAUSE: Duration = Duration::from_millis(2);
/// After a pause in which no peer accepted, how long before pausing again.
pub const COOLDOWN: Duration = Duration::from_millis(100);

/// The first token of the listeners; listener `i` has `LISTENER_BASE + i`.
pub const LISTENER_BASE: usize = usize::MAX - 1024;

enum Place {
    /// In every listener's wait queue.
    Queued,
    /// Off the wait queues until `until`; the peers had accepted `peers_accepted`.
    Paused { until: Instant, peers_accepted: u64 },
    /// Off for good: the worker is draining.
    Stopped,
}

pub struct Listening<'a> {
    listeners: &'a [Listener],
    peers: Peers,
    place: Place,
    /// No pausing before then (a pause did not help).
    cooldown_until: Option<Instant>,
}

impl<'a> Listening<'a> {
    pub fn new(poll: &Poll, listeners: &'a [Listener], peers: Peers) -> std::io::Result<Self> {
        let listening = Listening {
            listeners,
            peers,
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
        let result = if lead >= 2 && !cooling {
            self.place = Place::Paused {
                until: now + PAUSE,
                peers_accepted: self.peers.accepted(),
            };
            self.remove_all(poll)
        } else if lead >= 1 {
            self.remove_all(poll).and_then(|()| self.add_all(poll))
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::error!("cannot re-register the listeners: {e}");
        }
    }

    /// When a pause ends (for the loop's epoll time-out).
    pub fn pause_ends(&self) -> Option<Instant> {
        match self.place {
            Place::Paused { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Back in the queue once the pause is over or we are no longer ahead.
    pub fn resume_if_due(&mut self, poll: &Poll, open: usize, now: Instant) {
        let Place::Paused {
            until,
            peers_accepted,
        } = self.place
        else {
            return;
        };
        if now >= until || self.lead(open) <= 0 {
            if self.peers.accepted() == peers_accepted {
                self.cooldown_until = Some(now + COOLDOWN);
            }
            self.place = Place::Queued;
            if let Err(e) = self.add_all(poll) {
                tracing::error!("cannot register the listeners again: {e}");
            }
        }
    }

    /// Off the listeners for good (draining).
    pub fn stop(&mut self, poll: &Poll) {
        if matches!(self.place, Place::Queued) {
            let _ = self.remove_all(poll);
        }
        self.place = Place::Stopped;
    }

    fn add_all(&self, poll: &Poll) -> std::io::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            register_exclusive(poll, l.socket.as_raw_fd(), LISTENER_BASE + i)?;
        }
        Ok(())
    }

    fn remove_all(&self, poll: &Poll) -> std::io::Result<()> {
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
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
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
        let mut l = Listening::new(&poll, &[], Peers::new(board, 0)).unwrap();
        l.after_accepting(&poll, 50);
        assert_eq!(l.lead(50), 0);
        assert!(l.pause_ends().is_none());
    }

    #[test]
    fn two_ahead_pauses_until_the_peer_catches_up() {
        let (board, peer) = board_with_peer();
        let poll = Poll::new().unwrap();
        let mut l = Listening::new(&poll, &[], Peers::new(board, 0)).unwrap();
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

    #[test]
    fn a_pause_no_peer_used_is_not_repeated_at_once() {
        let (board, _peer) = board_with_peer();
        let poll = Poll::new().unwrap();
        let mut l = Listening::new(&poll, &[], Peers::new(board, 0)).unwrap();
        l.after_accepting(&poll, 3);
        let until = l.pause_ends().expect("paused");
        // The pause ends and the peer accepted nothing (it is stuck in a request).
        l.resume_if_due(&poll, 3, until);
        assert!(l.pause_ends().is_none());
        l.after_accepting(&poll, 4);
        assert!(
            l.pause_ends().is_none(),
            "paused again within the cool-down"
        );
    }
}
