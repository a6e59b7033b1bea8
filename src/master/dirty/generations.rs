//! The dirty pool across the master's life: a reload's new dirty generation (booted
//! beside the serving one, switched to only when all its apps' `init()` succeeded,
//! killed if the reload fails), the stop (dirty workers after the HTTP workers, the
//! router last), and a `--preload` reload's re-execution.

use nix::sys::signal::{kill, Signal};

use crate::master::metrics::ExitReason;
use crate::master::Arbiter;

impl Arbiter {
    /// A reload boots a whole new dirty generation beside the serving one.
    pub(in crate::master) fn dirty_begin_reload(&mut self, generation: u32) -> anyhow::Result<()> {
        let Some(pool) = &self.dirty else {
            return Ok(());
        };
        if !self.config_for(generation).dirty.enabled() {
            return Ok(());
        }
        let target = pool.target;
        for index in 0..target {
            self.spawn_dirty_worker(generation, index)?;
        }
        Ok(())
    }

    /// The reload's dirty generation is ready (or there is none to wait for).
    pub(in crate::master) fn dirty_reload_ready(&self, generation: u32) -> bool {
        match &self.dirty {
            Some(pool) if self.config_for(generation).dirty.enabled() => {
                pool.generation_ready(generation, pool.target)
            }
            _ => true,
        }
    }

    /// The new generation serves: calls go to its dirty workers; the old ones finish
    /// their calls and stop.
    pub(in crate::master) fn dirty_switch(&mut self, generation: u32) {
        if self.dirty.is_none() {
            return;
        }
        self.route_generation(generation);
        let old: Vec<(u32, usize)> = self
            .dirty
            .iter()
            .flat_map(|p| p.workers.values())
            .filter(|w| w.generation != generation && !w.retiring)
            .map(|w| (w.generation, w.index))
            .collect();
        for (g, index) in old {
            self.retire_dirty(g, index, ExitReason::Reload);
        }
    }

    /// A failed reload: its dirty workers go; the serving ones never stopped.
    pub(in crate::master) fn dirty_abandon(&mut self, generation: u32) {
        let Some(pool) = self.dirty.as_mut() else {
            return;
        };
        for w in pool
            .workers
            .values_mut()
            .filter(|w| w.generation == generation)
        {
            w.retiring = true;
            let _ = kill(w.pid, Signal::SIGKILL);
        }
    }

    /// While stopping: once the HTTP workers have gone, the dirty workers are told
    /// to stop (they finish their calls); once they have gone, the router.
    pub(in crate::master) fn stop_dirty(&mut self) {
        let http_gone = self.workers.is_empty();
        let Some(pool) = self.dirty.as_mut() else {
            return;
        };
        if !http_gone {
            return;
        }
        for w in pool.workers.values_mut().filter(|w| !w.retiring) {
            w.retiring = true;
            let _ = kill(w.pid, Signal::SIGTERM);
        }
        if pool.workers.is_empty() {
            if let Some(r) = &pool.router {
                let _ = kill(r.pid, Signal::SIGTERM);
            }
        }
    }

    /// Before a `--preload` reload re-executes the master: the new image starts a pool
    /// of its own (a new socket, which the new generation's workers are given), so
    /// this one's processes stop and its socket directory goes.
    pub(in crate::master) fn end_dirty_for_exec(&mut self) {
        let Some(pool) = self.dirty.take() else {
            return;
        };
        for pid in pool.pids() {
            let _ = kill(pid, Signal::SIGTERM);
        }
        drop(pool);
    }

    /// Nothing of the pool is left running.
    pub(in crate::master) fn dirty_gone(&self) -> bool {
        self.dirty
            .as_ref()
            .is_none_or(|p| p.workers.is_empty() && p.router.is_none())
    }

    /// The pool's descriptors, for a worker to close after fork.
    pub(in crate::master) fn dirty_fds(&self) -> Vec<i32> {
        self.dirty
            .as_ref()
            .map(super::DirtyPool::fds)
            .unwrap_or_default()
    }

    /// A stop's signal reaches the dirty pool too unless it is the graceful TERM
    /// (then the HTTP workers go first, whose requests may still call dirty apps, and
    /// `stop_dirty` follows); the router only with the last resort's KILL.
    pub(in crate::master) fn signal_dirty(&self, sig: Signal) {
        let Some(pool) = &self.dirty else { return };
        if sig != Signal::SIGTERM {
            for w in pool.workers.values() {
                let _ = kill(w.pid, sig);
            }
        }
        if sig == Signal::SIGKILL {
            for pid in pool.pids() {
                let _ = kill(pid, sig);
            }
        }
    }
}
