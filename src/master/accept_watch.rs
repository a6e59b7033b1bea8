//! Episodes of failing `accept` (out of descriptors or memory): each worker counts its
//! failures and marks itself failing in its scoreboard slot, pausing accepts for 100 ms
//! between tries; the master turns those marks into one log line when an episode starts
//! and one (with the count) when it ends, and into `status` and `/metrics`. So a
//! descriptor shortage costs two log lines, not one per worker every 100 ms.
//! Invariant: reads the scoreboard only; never signals or changes a worker.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rgunctl::protocol::AcceptFailing;

use super::Arbiter;

/// What the master knows of failing accepts.
#[derive(Default)]
pub struct AcceptWatch {
    /// Per scoreboard slot: the worker's pid and the failures already counted.
    seen: BTreeMap<usize, (i32, u32)>,
    /// Failed accepts since the master started (workers that exited included).
    pub total: u64,
    /// The episode in progress.
    episode: Option<Episode>,
}

struct Episode {
    started: Instant,
    failures: u64,
    errno: i32,
}

impl Arbiter {
    /// Counts new failures and logs an episode's start or end (each loop turn).
    pub(super) fn watch_accept_errors(&mut self) {
        let mut new_failures = 0u64;
        let mut failing_errno = None;
        let watch = &mut self.accept_watch;
        watch.seen.retain(|slot, _| self.workers.contains_key(slot));
        for w in self.workers.values() {
            let slot = self.scoreboard.slot(w.slot);
            let errors = slot.accept_errors.load(Ordering::Relaxed);
            let pid = w.pid.as_raw();
            let seen = watch.seen.entry(w.slot).or_insert((pid, 0));
            if seen.0 != pid {
                *seen = (pid, 0);
            }
            new_failures += u64::from(errors.saturating_sub(seen.1));
            seen.1 = errors;
            let errno = slot.accept_errno.load(Ordering::Relaxed);
            if errno != 0 {
                failing_errno = Some(errno);
            }
        }
        watch.total += new_failures;
        match (&mut watch.episode, failing_errno) {
            (None, Some(errno)) => {
                tracing::error!(
                    "accepting connections fails: {}; workers pause accepts and retry every 100 ms (logged again when accepts work)",
                    describe(errno)
                );
                watch.episode = Some(Episode {
                    started: Instant::now(),
                    failures: new_failures,
                    errno,
                });
            }
            (Some(episode), Some(errno)) => {
                episode.failures += new_failures;
                episode.errno = errno;
            }
            (Some(episode), None) => {
                let failures = episode.failures + new_failures;
                tracing::warn!(
                    "accepting connections works again after {:.1} s; {failures} accepts failed ({})",
                    episode.started.elapsed().as_secs_f64(),
                    describe(episode.errno)
                );
                watch.episode = None;
            }
            (None, None) => {}
        }
    }

    /// The episode in progress, for `status`.
    pub(super) fn accept_failing(&self) -> Option<AcceptFailing> {
        self.accept_watch.episode.as_ref().map(|e| AcceptFailing {
            since_s: e.started.elapsed().as_secs_f64(),
            failures: e.failures,
            error: describe(e.errno),
        })
    }
}

/// `Too many open files (EMFILE)`.
fn describe(errno: i32) -> String {
    let errno = nix::errno::Errno::from_raw(errno);
    format!("{} ({errno:?})", errno.desc())
}
