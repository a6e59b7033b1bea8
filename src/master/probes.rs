//! The probes the operations listener (`--metrics-bind`) answers for Kubernetes and
//! load balancers: `/livez` (the master runs its loop) and `/readyz` (a worker of the
//! serving generation has the application loaded and accepts, and the server is not
//! stopping). Each answer is one line computed from the worker table, with no
//! syscall, no Python and no worker involved.

use super::{Arbiter, Phase};

impl Arbiter {
    /// `/livez`: the loop answered, so the master runs; once it stops, 503.
    pub(super) fn liveness(&self) -> Result<String, String> {
        if self.phase.is_stopping() {
            return Err("stopping".into());
        }
        Ok(format!("live: master {}", std::process::id()))
    }

    /// `/readyz`: `Ok` while at least one worker of the serving generation is ready
    /// and the server is not stopping; otherwise why not, in one line.
    pub(super) fn readiness(&self) -> Result<String, String> {
        match self.phase {
            Phase::Draining => return Err("draining: shutdown delay, still serving".into()),
            Phase::Stopping { .. } => return Err("draining: the server is stopping".into()),
            _ => {}
        }
        let ready = self.ready_workers();
        if ready > 0 {
            return Ok(format!(
                "ready: {ready} of {} workers of generation {}",
                self.target, self.generation
            ));
        }
        Err(if self.boot_failing {
            "not ready: workers fail to boot (the application does not import; see the error log)"
                .into()
        } else if self.phase == Phase::Starting {
            "not ready: booting".into()
        } else {
            format!("not ready: no worker up (target {})", self.target)
        })
    }
}
