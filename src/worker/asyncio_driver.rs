//! The ASGI worker's driver: asyncio owns the worker's thread, and the connection
//! core's epoll descriptor is one reader in it. When it is readable, or when the core
//! asked for a turn (a deadline, a connection waiting its turn, an application's
//! `send()` through `asgi::wake::Wakeups`), asyncio calls `Turn`, which runs one
//! `EventLoop::step`. Complete requests become coroutines right there, with no
//! thread hand-off; everything else asyncio does (the application's tasks, its own
//! sockets and timers) runs between turns.
//!
//! Only this file knows that asyncio exists; the core is the same one the WSGI
//! worker's blocking loop drives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Events;
use pyo3::intern;
use pyo3::prelude::*;

use super::conn::Exec;
use super::event_loop::EventLoop;
use super::Service;
use crate::asgi::wake::Wakeups;
use crate::asgi::AsgiApp;

/// A timer already set this close to the wanted deadline is kept (re-arming one per
/// turn would cost a TimerHandle each).
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Serves until the worker has drained after a stop (or the loop fails).
pub fn serve(
    py: Python<'_>,
    event_loop: &mut EventLoop<'_>,
    service: &Service,
    app: &AsgiApp,
) -> PyResult<()> {
    let aio = app.event_loop(py).clone();
    let mut driver = Driver {
        core: event_loop,
        service,
        wakeups: Arc::clone(&app.wakeups),
        events: Events::with_capacity(256),
        keys: Vec::new(),
        timer: None,
        call_soon: aio.getattr("call_soon")?.unbind(),
        call_later: aio.getattr("call_later")?.unbind(),
        aio: aio.clone().unbind(),
        turn: None,
        timer_turn: None,
        finished: false,
    };
    let erased: *mut (dyn Turning + '_) = &mut driver;
    // SAFETY: only the lifetime is erased. `Turn` dereferences the pointer only while
    // `driver` is alive: asyncio calls it from inside `run_forever` below, and the
    // pointer is cleared before `driver` goes out of scope, so later calls (a
    // callback still queued) find it null and do nothing.
    let erased: *mut (dyn Turning + 'static) = unsafe { std::mem::transmute(erased) };
    let turn = Py::new(
        py,
        Turn {
            driver: std::cell::Cell::new(Some(erased)),
            timer: false,
        },
    )?;
    let timer_turn = Py::new(
        py,
        Turn {
            driver: std::cell::Cell::new(Some(erased)),
            timer: true,
        },
    )?;
    driver.turn = Some(turn.clone_ref(py).into_any());
    driver.timer_turn = Some(timer_turn.clone_ref(py).into_any());
    app.wakeups.set_schedule(
        driver.call_soon.clone_ref(py),
        turn.clone_ref(py).into_any(),
    );
    if let Some(slot) = driver.core.idle_clock_slot() {
        IdleClock::install(&aio, slot);
    }
    let fd = driver.core.poll_fd();
    aio.call_method1("add_reader", (fd, turn.bind(py)))?;
    // The first turn: connections may already wait on the listeners.
    aio.call_method1("call_soon", (turn.bind(py),))?;
    let result = aio.call_method0("run_forever").map(drop);
    turn.borrow(py).driver.set(None);
    timer_turn.borrow(py).driver.set(None);
    let _ = aio.call_method1("remove_reader", (fd,));
    if let Some((_, handle)) = driver.timer.take() {
        let _ = handle.bind(py).call_method0("cancel");
    }
    result
}

/// The asyncio selector's `select`, wrapped to count the time the loop waits in it
/// (`Slot::loop_idle_us`): one minus that share of the time is how busy the loop is,
/// for autoscaling (`--workers-min`/`--workers-max` only). A loop without asyncio's
/// `_selector` (uvloop) is not measured; the master then reads its heartbeat.
#[pyclass(unsendable, module = "rgun")]
struct IdleClock {
    select: Py<PyAny>,
    slot: &'static crate::scoreboard::Slot,
}

#[pymethods]
impl IdleClock {
    fn __call__(&self, py: Python<'_>, timeout: Py<PyAny>) -> PyResult<Py<PyAny>> {
        use crate::scoreboard::monotonic_us;
        use std::sync::atomic::Ordering::Relaxed;
        let start = monotonic_us();
        self.slot.loop_waiting_since_us.store(start, Relaxed);
        let ready = self.select.call1(py, (timeout,));
        let waited = monotonic_us().saturating_sub(start);
        self.slot.loop_idle_us.fetch_add(waited, Relaxed);
        self.slot.loop_waiting_since_us.store(0, Relaxed);
        ready
    }
}

impl IdleClock {
    fn install(aio: &Bound<'_, PyAny>, slot: &'static crate::scoreboard::Slot) {
        let py = aio.py();
        let installed = aio.getattr("_selector").and_then(|selector| {
            let select = selector.getattr("select")?.unbind();
            let clock = Py::new(py, IdleClock { select, slot })?;
            selector.setattr("select", clock)
        });
        match installed {
            Ok(()) => slot
                .loop_idle_us
                .store(1, std::sync::atomic::Ordering::Relaxed),
            Err(e) => tracing::debug!("the loop's idle time is not measured: {e}"),
        }
    }
}

trait Turning {
    /// `from_timer`: the `call_later` the driver set is what fired.
    fn turn(&mut self, py: Python<'_>, from_timer: bool) -> PyResult<()>;
}

/// The callable asyncio runs for each turn of the connection core (one for the
/// reader and `call_soon`, one for the driver's timer, so it knows its timer fired).
#[pyclass(unsendable, module = "rgun")]
struct Turn {
    driver: std::cell::Cell<Option<*mut dyn Turning>>,
    timer: bool,
}

#[pymethods]
impl Turn {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some(driver) = self.driver.take() else {
            return Ok(());
        };
        // SAFETY: see `serve`: the pointer is set only while the driver lives. It is
        // taken out for the call, so a re-entrant call (there is none: asyncio runs
        // one callback at a time) would find it empty instead of aliasing it.
        let result = unsafe { (*driver).turn(py, self.timer) };
        // Put back unless `serve` cleared it meanwhile (it cannot: we are inside
        // run_forever, which it waits on).
        self.driver.set(Some(driver));
        result
    }
}

struct Driver<'a, 'b> {
    core: &'a mut EventLoop<'b>,
    service: &'a Service,
    wakeups: Arc<Wakeups>,
    events: Events,
    keys: Vec<usize>,
    /// The pending `call_later` and when it fires.
    timer: Option<(Instant, Py<PyAny>)>,
    call_soon: Py<PyAny>,
    call_later: Py<PyAny>,
    aio: Py<PyAny>,
    turn: Option<Py<PyAny>>,
    timer_turn: Option<Py<PyAny>>,
    finished: bool,
}

impl Turning for Driver<'_, '_> {
    fn turn(&mut self, py: Python<'_>, from_timer: bool) -> PyResult<()> {
        if from_timer {
            self.timer = None;
        }
        if self.finished {
            return Ok(());
        }
        let exec = Exec::Inline(py, self.service);
        self.wakeups.begin_turn();
        self.core.poll_ready(&mut self.events);
        let next = loop {
            self.wakeups.take(&mut self.keys);
            for &key in &self.keys {
                self.core.wake(key);
            }
            let next = self.core.step(exec, &self.events);
            self.events.clear();
            if next.is_none() || self.wakeups.end_turn() {
                break next;
            }
        };
        match next {
            None => {
                self.finished = true;
                self.aio.bind(py).call_method0(intern!(py, "stop"))?;
                Ok(())
            }
            Some(at) => self.schedule(py, at),
        }
    }
}

impl Driver<'_, '_> {
    /// The core wants a turn at `at` even without events.
    fn schedule(&mut self, py: Python<'_>, at: Instant) -> PyResult<()> {
        let now = Instant::now();
        if at <= now {
            let turn = self.turn.as_ref().expect("set before the first turn");
            self.call_soon.call1(py, (turn,))?;
            return Ok(());
        }
        let turn = self.timer_turn.as_ref().expect("set before the first turn");
        if let Some((set, handle)) = &self.timer {
            if *set <= at + TIMER_SLACK {
                return Ok(());
            }
            handle.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        let delay = (at - now).as_secs_f64();
        let handle = self.call_later.call1(py, (delay, turn))?;
        self.timer = Some((at, handle));
        Ok(())
    }
}
