//! What `/metrics` keeps of the workers that have gone: `ExitReason`, why a worker
//! left, and the `Ledger` of exited workers' tallies, exits by reason and reloads by
//! result (handed over across a `--preload` reload's re-execution).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::BUCKETS;
use crate::scoreboard::Slot;

/// Why a worker left, as `rgun_worker_exits_total` counts it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum ExitReason {
    /// Killed for `--timeout`.
    Timeout,
    /// Left on its own with status 0: `--max-requests` (or `--reload`'s source change).
    MaxRequests,
    /// Retired for `--max-worker-rss`.
    MaxRss,
    /// Died without being asked: a signal or a non-zero status.
    Crash,
    /// Failed to boot (import error, boot error, died before ready).
    BootFailure,
    /// Retired by a scale-down.
    Scale,
    /// The old generation after a reload, or a new one torn down by a failed reload.
    Reload,
    /// `rgunctl kill`.
    Kill,
    /// The server is stopping.
    Shutdown,
}

impl ExitReason {
    pub fn label(self) -> &'static str {
        match self {
            ExitReason::Timeout => "timeout",
            ExitReason::MaxRequests => "max_requests",
            ExitReason::MaxRss => "max_rss",
            ExitReason::Crash => "crash",
            ExitReason::BootFailure => "boot_failure",
            ExitReason::Scale => "scale",
            ExitReason::Reload => "reload",
            ExitReason::Kill => "kill",
            ExitReason::Shutdown => "shutdown",
        }
    }
}

/// Counts that outlive the workers they describe, so every counter only grows (also
/// across a `--preload` reload's re-execution, which hands it over).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// Per scoreboard slot: responses by status class of the workers that have left it.
    pub(super) retired_by_class: BTreeMap<usize, [u64; 5]>,
    pub(super) retired_buckets: [u64; BUCKETS],
    pub(super) retired_sum_us: u64,
    pub(super) exits: BTreeMap<ExitReason, u64>,
    pub(super) reloads_ok: u64,
    pub(super) reloads_failed: u64,
}

impl Ledger {
    /// A worker left `slot`: keep its tally before the slot is reused.
    pub fn retire_slot(&mut self, slot: usize, s: &Slot, reason: ExitReason) {
        self.fold_slot(slot, s);
        *self.exits.entry(reason).or_default() += 1;
    }

    /// Adds what the worker in `slot` has counted so far (when it leaves, or when the
    /// master re-executes and will not read this scoreboard again).
    pub fn fold_slot(&mut self, slot: usize, s: &Slot) {
        let by_class = self.retired_by_class.entry(slot).or_default();
        for (sum, c) in by_class.iter_mut().zip(&s.tally.by_class) {
            *sum += c.load(Ordering::Relaxed);
        }
        for (sum, c) in self
            .retired_buckets
            .iter_mut()
            .zip(&s.tally.duration_buckets)
        {
            *sum += c.load(Ordering::Relaxed);
        }
        self.retired_sum_us += s.tally.duration_sum_us.load(Ordering::Relaxed);
    }

    pub fn reload_finished(&mut self, ok: bool) {
        if ok {
            self.reloads_ok += 1;
        } else {
            self.reloads_failed += 1;
        }
    }
}
