//! The loop's periodic duties, run every `sweep_every` (and eviction at the connection
//! limit): connections past their deadline, a re-parented worker, changed sources
//! (`--reload`), `--max-requests`, an idle connection making room, the age of an
//! ASGI worker's oldest request on the scoreboard, and the end of a descriptor
//! shortage no client has tested.

use std::time::Instant;

use pyo3::prelude::*;

use super::{Conn, EventLoop};

impl EventLoop<'_> {
    /// The periodic duties, due every `sweep_every`: out of `step`'s line, which runs
    /// once per request under load.
    #[cold]
    pub(super) fn sweep(&mut self, now: Instant) {
        self.close_expired(now);
        self.publish_oldest_asgi_request(now);
        self.check_parent();
        self.check_accept_recovery();
        self.check_sources();
        self.check_closing();
        self.next_sweep = now + self.shared.settings.sweep_every;
    }

    /// A worker whose master died (re-parented) stops, as Gunicorn's do; the death
    /// signal set at boot usually gets there first.
    pub(super) fn check_parent(&mut self) {
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != self.parent && self.accepting {
            tracing::info!("Parent changed, shutting down: {}", std::process::id());
            self.begin_stop();
        }
    }

    /// A worker marked as failing to accept (`Slot::accept_failed`) clears the mark once
    /// it could take a descriptor again and no client waits: otherwise the mark (and
    /// the master's episode) would last until the next client happened to reach it.
    /// With clients waiting, the next `accept` decides.
    pub(super) fn check_accept_recovery(&mut self) {
        let slot = self.shared.slot;
        if slot.accept_errno.load(std::sync::atomic::Ordering::Relaxed) == 0
            || self.listening.clients_waiting()
        {
            return;
        }
        // SAFETY: F_DUPFD_CLOEXEC on our own stderr makes a descriptor we close at once.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 0) };
        if fd >= 0 {
            // SAFETY: `fd` was just made by us and is used nowhere else.
            unsafe { libc::close(fd) };
            slot.accept_worked();
        }
    }

    /// The master's shutdown delay or rebalancing (`Shared::close_pending`): the
    /// worker keeps accepting, and each HTTP/2 connection gets a turn to send GOAWAY
    /// if it is one to end (HTTP/1 responses carry `Connection: close` as they are
    /// framed).
    pub(super) fn check_closing(&mut self) {
        if self.shared.stopping() || !self.shared.close_pending() {
            return;
        }
        let h2: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(k, c)| c.as_ref().filter(|c| c.is_http2()).map(|_| k))
            .collect();
        for key in h2 {
            self.wake(key);
        }
    }

    /// `--reload`: a changed source file means this worker's code is stale.
    pub(super) fn check_sources(&mut self) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        if let Some(path) = Python::with_gil(|py| watch.changed(py)) {
            self.reload_for(&path);
        }
    }

    /// `--reload` with inotify: the kernel reported events on the watched directories.
    pub(super) fn check_watch_events(&mut self) {
        if let Some(path) = self.watch.as_mut().and_then(|w| w.events_ready()) {
            self.reload_for(&path);
        }
    }

    fn reload_for(&mut self, path: &std::path::Path) {
        if self.accepting {
            tracing::info!("Worker reloading: {} modified", path.display());
            self.begin_stop();
        }
    }

    /// `--max-requests` reached: drain and exit so the master starts a fresh worker.
    pub(super) fn check_max_requests(&mut self) {
        let max = self.shared.settings.max_requests;
        if max > 0 && self.shared.served() >= max && self.accepting {
            tracing::info!("Autorestarting worker after current request.");
            self.begin_stop();
        }
    }

    /// At the connection limit, an idle connection makes room for a new client (limits
    /// are on requests in flight, not on idle sockets): a keep-alive one first, else the
    /// oldest silent fresh one.
    pub(super) fn evict_idle(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(k, c)| {
                c.as_ref()
                    .filter(|c| c.is_idle())
                    .map(|c| (c.served() == 0, c.deadline, k))
            })
            .min();
        match oldest {
            Some((_, _, key)) => {
                self.close(key);
                true
            }
            None => false,
        }
    }

    /// An ASGI worker's scoreboard shows the age of its oldest HTTP request in flight
    /// (`rgunctl status`'s current request; WebSockets are not requests that end).
    /// `bridge::call` starts the clock for an ASGI request when none runs; this keeps it on the oldest.
    /// The master does not time an ASGI worker out on it: its `--timeout` watches the
    /// loop's heartbeat.
    pub(super) fn publish_oldest_asgi_request(&self, now: Instant) {
        if !matches!(self.service.app, crate::worker::Application::Asgi(_)) {
            return;
        }
        let oldest = self
            .conns
            .iter()
            .flatten()
            .filter_map(Conn::asgi_request_started)
            .min();
        let slot = &self.shared.slot;
        match oldest {
            Some(at) => {
                let age_ms = now.saturating_duration_since(at).as_millis() as u64;
                let started = crate::scoreboard::monotonic_ms().saturating_sub(age_ms);
                slot.request_started_ms
                    .store(started.max(1), std::sync::atomic::Ordering::Relaxed);
            }
            None => slot.clock_stop(),
        }
    }

    pub(super) fn close_expired(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(k, c)| c.as_ref().filter(|c| c.deadline <= now).map(|_| k))
            .collect();
        for key in expired {
            // An HTTP/2 connection resets its overdue streams and lives on.
            let lives = self.conns[key]
                .as_mut()
                .is_some_and(|c| c.expire_streams(now));
            if lives {
                self.wake(key);
            } else {
                self.close(key);
            }
        }
    }
}
