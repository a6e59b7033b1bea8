//! The ASGI 3 bridge: the application, its lifespan, and calling it for one HTTP
//! request (`AsgiApp::call`), which builds the scope (`scope`) and the request's
//! `receive`/`send` (`cycle::Cycle`).
//!
//! A request's coroutine becomes an asyncio Task right here, on the event loop's
//! thread, in the turn that read the request: no thread hand-off. With Python 3.12+
//! the Task starts eagerly, so an application that answers without waiting (the
//! common case) is done before `call` returns. Nothing here does socket I/O or knows
//! the event loop's connections beyond a key to wake.

pub mod cycle;
mod message;
pub mod scope;
pub mod sink;
#[cfg(test)]
mod tests;
pub mod wake;
pub mod websocket;

use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use self::cycle::{Cycle, Kit};
use self::scope::{Addresses, ScopeBuilder};
use self::sink::Sink;
use self::wake::Wakeups;
use self::websocket::WsCycle;
use crate::http::body::Body;
use crate::http::request::RequestInfo;
use crate::http::response::RequestFacts;
use crate::net::outbox::Outbox;

const BRIDGE: &str = include_str!("bridge.py");

/// `--asgi-lifespan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifespanMode {
    Auto,
    On,
    Off,
}

impl LifespanMode {
    pub fn parse(text: &str) -> LifespanMode {
        match text {
            "on" => LifespanMode::On,
            "off" => LifespanMode::Off,
            _ => LifespanMode::Auto,
        }
    }
}

/// How the lifespan startup went.
pub enum Startup {
    /// Complete (or not run): serve.
    Ready,
    /// The application does not speak lifespan (`auto`): serve without it.
    Unsupported,
    /// `lifespan.startup.failed`, or an error with `--asgi-lifespan on`: its message.
    Failed(String),
}

/// A loaded ASGI application, its asyncio loop, and what every request shares.
pub struct AsgiApp {
    callable: Py<PyAny>,
    scope: ScopeBuilder,
    /// The lifespan state, copied into every request scope.
    state: Py<PyDict>,
    lifespan: Option<Py<PyAny>>,
    bridge: Py<PyModule>,
    event_loop: Py<PyAny>,
    kit: Kit,
    /// `asyncio.Task` when it can start eagerly (Python 3.12+), and its arguments.
    eager_task: Option<Py<PyAny>>,
    eager_kwargs: Py<PyDict>,
    pub wakeups: Arc<Wakeups>,
    /// `--websocket-max-message-size`.
    pub ws_max_message_bytes: usize,
}

impl AsgiApp {
    /// Wraps the imported `callable` and makes this worker's asyncio loop (`loop_choice`:
    /// `auto`, `asyncio` or `uvloop`).
    pub fn new(
        py: Python<'_>,
        callable: Bound<'_, PyAny>,
        root_path: &str,
        loop_choice: &str,
        ws_max_message_bytes: u64,
        disconnect_grace: std::time::Duration,
    ) -> PyResult<AsgiApp> {
        let bridge = crate::python::embedded_module(py, BRIDGE, "rgun_asgi")?;
        let event_loop = bridge.getattr("new_event_loop")?.call1((loop_choice,))?;
        py.import("asyncio")?
            .call_method1("set_event_loop", (&event_loop,))?;
        Ok(AsgiApp {
            callable: callable.unbind(),
            scope: ScopeBuilder::new(py, root_path)?,
            state: PyDict::new(py).unbind(),
            lifespan: None,
            kit: Kit {
                create_future: event_loop.getattr("create_future")?.unbind(),
                done: {
                    let done = event_loop.call_method0("create_future")?;
                    done.call_method1("set_result", (py.None(),))?;
                    done.unbind()
                },
                disconnected_error: bridge.getattr("ClientDisconnected")?.unbind(),
                cancel_after_grace: bridge
                    .getattr("canceller")?
                    .call1((&event_loop, disconnect_grace.as_secs_f64()))?
                    .unbind(),
            },
            eager_task: (py.version_info() >= (3, 12))
                .then(|| py.import("asyncio")?.getattr("Task").map(Bound::unbind))
                .transpose()?,
            eager_kwargs: {
                let kwargs = PyDict::new(py);
                kwargs.set_item("loop", &event_loop)?;
                kwargs.set_item("eager_start", true)?;
                kwargs.unbind()
            },
            event_loop: event_loop.unbind(),
            bridge: bridge.unbind(),
            wakeups: Arc::new(Wakeups::default()),
            ws_max_message_bytes: ws_max_message_bytes as usize,
        })
    }

    pub fn event_loop<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.event_loop.bind(py)
    }

    /// The application and the scope a request would get, for a call made outside a
    /// connection (the reload probe's, `worker::probe`).
    pub fn callable_and_scope<'py>(
        &self,
        py: Python<'py>,
        req: &RequestInfo<'_>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        let addresses = scope::addresses(py, req.peer, req.local)?;
        let scope = self.scope.build(py, req, self.state.bind(py), &addresses)?;
        Ok((self.callable.bind(py).clone(), scope))
    }

    /// Runs the lifespan startup to its answer (before the worker reports ready).
    pub fn startup(&mut self, py: Python<'_>, mode: LifespanMode) -> PyResult<Startup> {
        if mode == LifespanMode::Off {
            return Ok(Startup::Ready);
        }
        let mode_text = if mode == LifespanMode::On {
            "on"
        } else {
            "auto"
        };
        let lifespan = self
            .bridge
            .bind(py)
            .getattr("Lifespan")?
            .call1((self.callable.bind(py), mode_text))?;
        let loop_ = self.event_loop.bind(py);
        loop_.call_method1("run_until_complete", (lifespan.call_method0("startup")?,))?;
        if lifespan.getattr("failed")?.is_truthy()? {
            let message: String = lifespan.getattr("message")?.extract()?;
            return Ok(Startup::Failed(message));
        }
        if lifespan.getattr("unsupported")?.is_truthy()? {
            return Ok(Startup::Unsupported);
        }
        self.state = lifespan
            .getattr("state")?
            .downcast_into::<PyDict>()?
            .unbind();
        self.lifespan = Some(lifespan.unbind());
        Ok(Startup::Ready)
    }

    /// Runs the lifespan shutdown for at most `limit`; the failure's message, if any.
    /// The application took part in the lifespan protocol's startup (so its shutdown
    /// is sent too).
    pub fn has_lifespan(&self) -> bool {
        self.lifespan.is_some()
    }

    pub fn shutdown(&self, py: Python<'_>, limit: std::time::Duration) -> PyResult<Option<String>> {
        let Some(lifespan) = &self.lifespan else {
            return Ok(None);
        };
        let wait_for = py.import("asyncio")?.getattr("wait_for")?;
        let shutdown = wait_for.call1((
            lifespan.bind(py).call_method0("shutdown")?,
            limit.as_secs_f64(),
        ))?;
        match self
            .event_loop
            .bind(py)
            .call_method1("run_until_complete", (shutdown,))
        {
            Ok(message) => message.extract(),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyTimeoutError>(py) => Ok(Some(
                format!("lifespan shutdown did not finish within {limit:?}"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Calls the application for one request (an HTTP/1 request or an HTTP/2 stream,
    /// as `sink` says) and runs its first step. The returned cycle holds the response
    /// (complete already, if the application did not wait); the scope is returned
    /// too, for a `post_request` hook.
    #[allow(clippy::too_many_arguments)]
    pub fn call<'py>(
        &self,
        py: Python<'py>,
        req: &RequestInfo<'_>,
        addresses: &Addresses,
        body: Body,
        sink: Sink,
        facts: RequestFacts,
        key: usize,
    ) -> PyResult<(Py<Cycle>, Bound<'py, PyDict>)> {
        let scope = self.scope.build(py, req, self.state.bind(py), addresses)?;
        let cycle = Py::new(
            py,
            Cycle::new(
                py,
                sink,
                facts,
                body,
                (Arc::clone(&self.wakeups), key),
                &self.kit,
            ),
        )?;
        let bound = cycle.bind(py);
        let receive = bound.getattr(intern!(py, "receive"))?;
        let send = bound.getattr(intern!(py, "send"))?;
        let error = match self.callable.bind(py).call1((&scope, receive, send)) {
            Ok(coro) => self.start_task(py, &cycle, coro).err(),
            Err(e) => Some(e),
        };
        if let Some(e) = error {
            cycle.borrow_mut(py).app_returned(py, Some(e));
        }
        Ok((cycle, scope))
    }

    /// Calls the application for a WebSocket upgrade request (the scope is returned
    /// too, for a `post_request` hook).
    pub fn call_websocket<'py>(
        &self,
        py: Python<'py>,
        req: &RequestInfo<'_>,
        upgrade: crate::http::websocket::UpgradeRequest,
        outbox: Outbox,
        facts: RequestFacts,
        key: usize,
    ) -> PyResult<(Py<WsCycle>, Bound<'py, PyDict>)> {
        let scope =
            self.scope
                .build_websocket(py, req, self.state.bind(py), &upgrade.subprotocols)?;
        let cycle = Py::new(
            py,
            WsCycle::new(
                py,
                outbox,
                facts,
                upgrade.key,
                upgrade.extensions,
                (Arc::clone(&self.wakeups), key),
                &self.kit,
            ),
        )?;
        let bound = cycle.bind(py);
        let receive = bound.getattr(intern!(py, "receive"))?;
        let send = bound.getattr(intern!(py, "send"))?;
        let started = self
            .callable
            .bind(py)
            .call1((&scope, receive, send))
            .and_then(|coro| self.new_task(py, coro));
        match started {
            Ok(task) if task.call_method0(intern!(py, "done"))?.is_truthy()? => {
                cycle.borrow_mut(py).task_done(py, &task)
            }
            Ok(task) => {
                task.call_method1(
                    intern!(py, "add_done_callback"),
                    (bound.getattr(intern!(py, "task_done"))?,),
                )?;
                cycle.borrow_mut(py).set_task(task.unbind());
            }
            Err(e) => cycle.borrow_mut(py).app_returned(py, Some(e)),
        }
        Ok((cycle, scope))
    }

    fn new_task<'py>(
        &self,
        py: Python<'py>,
        coro: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match &self.eager_task {
            Some(task_type) => task_type
                .bind(py)
                .call((coro,), Some(self.eager_kwargs.bind(py))),
            None => self
                .event_loop
                .bind(py)
                .call_method1(intern!(py, "create_task"), (coro,)),
        }
    }

    /// Makes the request's coroutine a Task. With Python 3.12+ the Task starts
    /// eagerly: its first step runs right here, so an application that does not wait
    /// is done before this returns. The Task is needed either way: applications (anyio,
    /// `asyncio.timeout`, task groups) expect `asyncio.current_task()` from their
    /// first line.
    fn start_task(
        &self,
        py: Python<'_>,
        cycle: &Py<Cycle>,
        coro: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let task = self.new_task(py, coro)?;
        // Only an eager Task can be done already (before 3.12 it has not started).
        if self.eager_task.is_some() && task.call_method0(intern!(py, "done"))?.is_truthy()? {
            // Finished in its eager first step: no done callback (it would cost a
            // loop iteration).
            cycle.borrow_mut(py).task_done(py, &task);
            return Ok(());
        }
        task.call_method1(
            intern!(py, "add_done_callback"),
            (cycle.bind(py).getattr(intern!(py, "task_done"))?,),
        )?;
        cycle.borrow_mut(py).set_task(task.unbind());
        Ok(())
    }
}
