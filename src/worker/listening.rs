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
//!   long, whatever the peers do.
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

/// The first token of the listeners; listener `i` has `LISTENER_BASE + i`.
pub const LISTENER_BASE: usize = usize::MAX - 1024;

enum Place {
    /// In every listener's wait queue.
    Queued,
    /// Off the wait queues until then.
    Paused(Instant),
    /// Off for good: the worker is draining.
    Stopped,
}

pub struct Listening<'a> {
    listeners: &'a [Listener],
    peers: Peers,
    place: Place,
}

impl<'a> Listening<'a> {
    pub fn new(poll: &Poll, listeners: &'a [Listener], peers: Peers) -> std::io::Result<Self> {
        let listening = Listening {
            listeners,
            peers,
            place: Place::Queued,
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
        let result = if lead >= 2 {
            self.place = Place::Paused(Instant::now() + PAUSE);
            self.remove_all(poll)
        } else if lead == 1 {
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
            Place::Paused(until) => Some(until),
            _ => None,
        }
    }

    /// Back in the queue once the pause is over or we are no longer ahead.
    pub fn resume_if_due(&mut self, poll: &Poll, open: usize, now: Instant) {
        let Place::Paused(until) = self.place else {
            return;
        };
        if now >= until || self.lead(open) <= 0 {
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
