//! The master's life as one state machine: the phases of `Phase`, the events of
//! `Event` (a signal, a control command, or what the worker table shows), and
//! `decide`, the one function that says where an event leads from where the master
//! is. `Arbiter::step` applies its answer to the phase; the callers do the work the
//! `Step` names (ARCHITECTURE.md, "The master's life", draws the whole machine).
//!
//! Invariants: a reload runs (`Arbiter::reload` is set) exactly while the phase is
//! `Reloading`; a reload asked for while one runs or while the first workers boot is
//! queued and started as that phase ends; once the master drains or stops, nothing
//! brings it back, and a quick stop can always overtake a graceful one.

use super::Arbiter;

/// Where the master is in its life (`status`'s `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Booting the first workers; a worker that cannot load the application now
    /// stops the server.
    Starting,
    /// Serving, with nothing in flight.
    Running,
    /// Serving while the next generation boots beside the serving one (with
    /// `--preload`, the master re-executes itself in place first).
    Reloading,
    /// `--shutdown-delay`: not ready, still serving, every response closing its
    /// connection; the workers have not been told to stop.
    Draining,
    /// The workers were told to stop; the master exits once none is left, and kills
    /// the rest when their time is up.
    Stopping { graceful: bool },
}

impl Phase {
    /// Draining or stopping: the server is on its way out.
    pub fn is_stopping(self) -> bool {
        matches!(self, Phase::Draining | Phase::Stopping { .. })
    }

    /// `status`'s word for it.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Reloading => "reloading",
            Phase::Draining => "draining",
            Phase::Stopping { .. } => "stopping",
        }
    }
}

/// What can move the master from one phase to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Every first worker said ready.
    FirstWorkersReady,
    /// A worker could not load the application (or boot at all).
    BootFailed,
    /// HUP, `rgunctl reload`, or a queued reload whose turn came.
    ReloadAsked,
    /// The reload in progress ended: the new generation serves, or it failed.
    ReloadEnded,
    /// USR2: start a new master beside this one.
    UpgradeAsked,
    /// TERM or `rgunctl stop` (graceful); INT, QUIT or `rgunctl stop --quick`.
    Stop { graceful: bool },
    /// `--shutdown-delay` ran out.
    DelayOver,
    /// No worker is left.
    WorkersGone,
}

/// What the master knows beside its phase when it decides.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// A reload is queued.
    pub queued: bool,
    /// A graceful stop would drain first (`--shutdown-delay`, and workers to drain).
    pub delay: bool,
    /// A new master (USR2) is starting or has taken over.
    pub new_master: bool,
}

/// What to do about an event; each names the phase it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes.
    Stay,
    /// Refused, with the reason (the phase does not change).
    Refuse(&'static str),
    /// Queue the reload; it starts when the phase ends (`Serve { then_reload }`).
    Queue,
    /// Into `Running`; then start the queued reload if `then_reload`.
    Serve { then_reload: bool },
    /// Into `Reloading`: boot the next generation.
    Reload,
    /// Start a new master (USR2); this one's phase does not change.
    NewMaster,
    /// Into `Draining` (a graceful stop with a shutdown delay).
    Drain,
    /// Into `Stopping`: tell the workers to stop, gracefully or not.
    Stop { graceful: bool },
    /// The master exits.
    Exit,
}

impl Step {
    /// The phase this step leads to from `from`.
    fn phase_after(self, from: Phase) -> Phase {
        match self {
            Step::Serve { .. } => Phase::Running,
            Step::Reload => Phase::Reloading,
            Step::Drain => Phase::Draining,
            Step::Stop { graceful } => Phase::Stopping { graceful },
            Step::Stay | Step::Refuse(_) | Step::Queue | Step::NewMaster | Step::Exit => from,
        }
    }
}

pub const STOPPING: &str = "the server is stopping";
const NEW_MASTER: &str =
    "a new master (USR2) is starting or has taken over: reload that one, or stop it first";

/// The master's transitions, all of them.
pub fn decide(phase: Phase, event: Event, ctx: Context) -> Step {
    use Event as E;
    use Phase as P;
    match (phase, event) {
        (P::Stopping { .. } | P::Draining, E::WorkersGone) => Step::Exit,
        (_, E::WorkersGone) => Step::Stay,
        // On the way out: only faster.
        (P::Stopping { graceful: true }, E::Stop { graceful: false }) => {
            Step::Stop { graceful: false }
        }
        // INT or QUIT skips the graceful stop; a second TERM cuts the delay short.
        (P::Draining, E::Stop { graceful: false }) => Step::Stop { graceful: false },
        (P::Draining, E::Stop { .. } | E::DelayOver) => Step::Stop { graceful: true },
        (P::Stopping { .. } | P::Draining, E::ReloadAsked | E::UpgradeAsked) => {
            Step::Refuse(STOPPING)
        }
        (P::Stopping { .. } | P::Draining, _) => Step::Stay,
        // Serving (or about to): a stop abandons any reload in progress or queued.
        (_, E::Stop { graceful: true }) if ctx.delay => Step::Drain,
        (_, E::Stop { graceful }) => Step::Stop { graceful },
        (P::Starting, E::BootFailed) => Step::Stop { graceful: false },
        (P::Starting, E::FirstWorkersReady) => Step::Serve {
            then_reload: ctx.queued,
        },
        (P::Starting | P::Reloading, E::ReloadAsked) => Step::Queue,
        // The new master owns the control socket (or is about to): reload that one.
        (P::Running, E::ReloadAsked) if ctx.new_master => Step::Refuse(NEW_MASTER),
        (P::Running, E::ReloadAsked) => Step::Reload,
        (P::Reloading, E::ReloadEnded) => Step::Serve {
            then_reload: ctx.queued,
        },
        (P::Starting, E::UpgradeAsked) => Step::Refuse("the first workers are still booting"),
        // One change at a time: a second master started mid-reload would serve a
        // configuration and code the reload has not vetted (with `--preload` the
        // master is about to re-execute under it).
        (P::Reloading, E::UpgradeAsked) => {
            Step::Refuse("a reload is in progress; send USR2 again once it ends")
        }
        (P::Running, E::UpgradeAsked) => Step::NewMaster,
        (
            P::Running | P::Reloading,
            E::BootFailed | E::FirstWorkersReady | E::DelayOver | E::ReloadEnded,
        )
        | (P::Starting, E::DelayOver | E::ReloadEnded) => Step::Stay,
    }
}

impl Arbiter {
    /// The one place the phase changes: what `event` means now (`decide`), with the
    /// transition logged. The caller does the work the step names.
    pub(super) fn step(&mut self, event: Event) -> Step {
        let ctx = Context {
            queued: self.queued_reload.is_some(),
            delay: !self.cfg.shutdown_delay().is_zero() && !self.workers.is_empty(),
            new_master: self.upgrade_child.is_some() || self.upgraded_to.is_some(),
        };
        let step = decide(self.phase, event, ctx);
        let next = step.phase_after(self.phase);
        if next != self.phase {
            tracing::debug!("master phase: {:?} -> {next:?} ({event:?})", self.phase);
            self.phase = next;
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_PHASES: [Phase; 6] = [
        Phase::Starting,
        Phase::Running,
        Phase::Reloading,
        Phase::Draining,
        Phase::Stopping { graceful: true },
        Phase::Stopping { graceful: false },
    ];

    fn at(phase: Phase, event: Event) -> Step {
        decide(phase, event, Context::default())
    }

    #[test]
    fn a_stop_always_stops_and_nothing_leaves_stopping() {
        for phase in ALL_PHASES {
            let step = at(phase, Event::Stop { graceful: false });
            assert!(step.phase_after(phase).is_stopping(), "{phase:?}: {step:?}");
            let next = step.phase_after(phase);
            for event in [
                Event::ReloadAsked,
                Event::ReloadEnded,
                Event::UpgradeAsked,
                Event::FirstWorkersReady,
                Event::BootFailed,
                Event::Stop { graceful: true },
            ] {
                let after = at(next, event).phase_after(next);
                assert!(after.is_stopping(), "{next:?} + {event:?} -> {after:?}");
            }
        }
    }

    #[test]
    fn a_quick_stop_overtakes_a_graceful_one_and_never_the_reverse() {
        let graceful = Phase::Stopping { graceful: true };
        let quick = Phase::Stopping { graceful: false };
        assert_eq!(
            at(graceful, Event::Stop { graceful: false }),
            Step::Stop { graceful: false }
        );
        assert_eq!(at(quick, Event::Stop { graceful: true }), Step::Stay);
        assert_eq!(at(graceful, Event::Stop { graceful: true }), Step::Stay);
    }

    #[test]
    fn a_graceful_stop_drains_first_when_there_is_a_delay() {
        let delay = Context {
            delay: true,
            ..Context::default()
        };
        for phase in [Phase::Starting, Phase::Running, Phase::Reloading] {
            assert_eq!(
                decide(phase, Event::Stop { graceful: true }, delay),
                Step::Drain
            );
            assert_eq!(
                decide(phase, Event::Stop { graceful: false }, delay),
                Step::Stop { graceful: false }
            );
        }
        for event in [Event::DelayOver, Event::Stop { graceful: true }] {
            assert_eq!(
                decide(Phase::Draining, event, delay),
                Step::Stop { graceful: true }
            );
        }
        assert_eq!(
            at(Phase::Draining, Event::Stop { graceful: false }),
            Step::Stop { graceful: false }
        );
    }

    #[test]
    fn a_reload_during_another_or_the_first_boot_is_queued_then_started() {
        assert_eq!(at(Phase::Running, Event::ReloadAsked), Step::Reload);
        assert_eq!(at(Phase::Reloading, Event::ReloadAsked), Step::Queue);
        assert_eq!(at(Phase::Starting, Event::ReloadAsked), Step::Queue);
        let queued = Context {
            queued: true,
            ..Context::default()
        };
        assert_eq!(
            decide(Phase::Reloading, Event::ReloadEnded, queued),
            Step::Serve { then_reload: true }
        );
        assert_eq!(
            decide(Phase::Starting, Event::FirstWorkersReady, queued),
            Step::Serve { then_reload: true }
        );
        assert_eq!(
            at(Phase::Reloading, Event::ReloadEnded),
            Step::Serve { then_reload: false }
        );
        for phase in [Phase::Draining, Phase::Stopping { graceful: true }] {
            assert_eq!(at(phase, Event::ReloadAsked), Step::Refuse(STOPPING));
        }
    }

    #[test]
    fn a_boot_failure_stops_only_a_starting_server() {
        assert_eq!(
            at(Phase::Starting, Event::BootFailed),
            Step::Stop { graceful: false }
        );
        assert_eq!(at(Phase::Running, Event::BootFailed), Step::Stay);
        assert_eq!(at(Phase::Reloading, Event::BootFailed), Step::Stay);
    }

    #[test]
    fn the_master_exits_only_once_stopping_with_no_worker() {
        for phase in ALL_PHASES {
            let exits = at(phase, Event::WorkersGone) == Step::Exit;
            assert_eq!(exits, phase.is_stopping(), "{phase:?}");
        }
    }

    #[test]
    fn a_new_master_starts_only_from_a_serving_one_and_then_takes_the_reloads() {
        assert_eq!(at(Phase::Running, Event::UpgradeAsked), Step::NewMaster);
        assert!(matches!(
            at(Phase::Reloading, Event::UpgradeAsked),
            Step::Refuse(_)
        ));
        let upgraded = Context {
            new_master: true,
            ..Context::default()
        };
        assert_eq!(
            decide(Phase::Running, Event::ReloadAsked, upgraded),
            Step::Refuse(NEW_MASTER)
        );
        assert!(matches!(
            at(Phase::Starting, Event::UpgradeAsked),
            Step::Refuse(_)
        ));
        assert_eq!(
            at(Phase::Draining, Event::UpgradeAsked),
            Step::Refuse(STOPPING)
        );
    }
}
