//! The application bridge: one interface over WSGI and ASGI for every protocol
//! driver. `call` runs an `Exchange`'s application with a response sink (an HTTP/1
//! connection's `Http1Response`, an HTTP/2 stream's `H2Response`) and answers what
//! now produces the response: a WSGI iterable pulled into that sink (`produce`,
//! then `close`), or an ASGI cycle whose `send()`s frame into it. `asgi_over`
//! ends an ASGI response, complete or cut short.
//!
//! Knows sinks, never HTTP versions; the drivers know `Running`, never WSGI or ASGI
//! calls.

use std::sync::atomic::Ordering;

use pyo3::prelude::*;

use super::exchange::{status_line, Exchange};
use super::{Application, Service, Shared};
use crate::asgi::cycle::Cycle;
use crate::asgi::scope::Addresses;
use crate::asgi::sink::Sink;
use crate::http::body::Body;
use crate::http::framer::ResponseSink;
use crate::http::request::RequestInfo;
use crate::http::response::RequestFacts;
use crate::net::{Local, Peer};
use crate::wsgi::environ::Remote;
use crate::wsgi::response::WsgiSource;

/// Stop producing a WSGI response once this much waits for the client.
pub const HIGH_WATER_BYTES: usize = 64 * 1024;

/// The connection's side of a request: what the application is told about it
/// besides the head.
pub(super) struct Origin<'a> {
    /// The connection's key in the event loop (an ASGI cycle wakes it by key).
    pub(super) key: usize,
    pub(super) peer: &'a Peer,
    pub(super) local: &'a Local,
    pub(super) client_subject: Option<&'a str>,
    /// The peer and local address as Python objects, kept where the connection keeps
    /// them.
    pub(super) peer_objects: &'a mut PeerObjects,
}

/// The peer and the local address as the application is given them, made by a
/// connection's first request and kept for the rest.
#[derive(Default)]
pub(super) struct PeerObjects {
    /// REMOTE_ADDR and REMOTE_PORT (WSGI).
    remote: Option<Remote>,
    /// The scope's `client` and `server` (ASGI).
    addresses: Option<Addresses>,
}

/// What produces a called application's response.
pub(super) enum Running {
    /// A WSGI iterable, pulled into the driver's sink by `produce`.
    Wsgi(WsgiSource),
    /// An ASGI application's task; the sink was moved into its cycle.
    Asgi(Py<Cycle>),
}

/// How far `produce` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Produced {
    /// Up to the high-water mark: more to come.
    More,
    /// The body is all produced; `close()` and `post_request` ran.
    Done,
    /// The application raised mid-body (logged): the response cannot end properly.
    Failed,
}

/// The application's call holds the calling thread until its response is produced
/// (WSGI): the driver records the request in a lane for `--timeout`
/// (`abort::Lanes`). An ASGI call returns at its first `await`.
#[inline]
pub(super) fn holds_thread(service: &Service) -> bool {
    matches!(service.app, Application::Wsgi(_))
}

/// Calls the application for a begun exchange: `pre_request`, the environ or scope,
/// the call, what `post_request` will need. A WSGI response starts in `sink`, which
/// stays the driver's; an ASGI cycle takes it (leaving an empty one). `None`: it
/// raised (logged by `Exchange::fail`); the driver answers 500 and finishes the
/// exchange.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) fn call<S: ResponseSink + Default + Into<Sink>>(
    py: Python<'_>,
    service: &Service,
    ctx: &Shared,
    ex: &mut Exchange,
    origin: Origin<'_>,
    body: Body,
    sink: &mut S,
    facts: RequestFacts,
) -> Option<Running> {
    if ctx.keep_response_heads {
        sink.keep_head();
    }
    let hook_req = ex.pre_request(py, service, origin.peer);
    // What `post_request` needs is kept as soon as the call answered (a failure
    // after it, `Exchange::fail`, forgets it again).
    let called = match &service.app {
        Application::Wsgi(app) => {
            let remote = origin
                .peer_objects
                .remote
                .get_or_insert_with(|| remote_strings(py, origin.peer));
            let info = request_info(ex, ctx, origin.peer, origin.local, origin.client_subject);
            match app.call(py, &info, remote, body) {
                Ok(response) => {
                    let environ = response.environ.bind(py).as_any();
                    ex.keep_for_post_request(service, hook_req, environ);
                    WsgiSource::start(py, app, response, facts, sink)
                        .map(Running::Wsgi)
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(crate::python::format_exception(py, &e)),
            }
        }
        Application::Asgi(app) => call_asgi(
            py, service, ctx, app, ex, hook_req, origin, body, facts, sink,
        ),
    };
    match called {
        Ok(running) => Some(running),
        Err(traceback) => {
            ex.fail(&traceback);
            None
        }
    }
}

/// `call`'s ASGI arm: the scope (its addresses made once per connection), the cycle,
/// which takes `sink`. `Err`: the traceback.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn call_asgi<'py, S: Default + Into<Sink>>(
    py: Python<'py>,
    service: &Service,
    ctx: &Shared,
    app: &crate::asgi::AsgiApp,
    ex: &mut Exchange,
    hook_req: Option<Bound<'py, PyAny>>,
    origin: Origin<'_>,
    body: Body,
    facts: RequestFacts,
    sink: &mut S,
) -> Result<Running, String> {
    // `rgunctl status` shows a request's age; the sweep keeps it on the oldest
    // (`EventLoop::publish_oldest_asgi_request`).
    let slot = &ctx.slot;
    if slot.request_started_ms.load(Ordering::Relaxed) == 0 {
        slot.request_begin();
    }
    let addresses = match &mut origin.peer_objects.addresses {
        Some(addresses) => Ok(&*addresses),
        empty => crate::asgi::scope::addresses(py, origin.peer, origin.local)
            .map(|made| &*empty.insert(made)),
    };
    let info = request_info(ex, ctx, origin.peer, origin.local, origin.client_subject);
    match addresses.and_then(|addresses| {
        app.call(
            py,
            &info,
            addresses,
            body,
            std::mem::take(sink).into(),
            facts,
            origin.key,
        )
    }) {
        Ok((cycle, scope)) => {
            ex.keep_for_post_request(service, hook_req, scope.as_any());
            Ok(Running::Asgi(cycle))
        }
        Err(e) => Err(crate::python::format_exception(py, &e)),
    }
}

/// What the environ or scope is made from: the exchange's head and scheme, the
/// connection's addresses.
#[inline(always)]
fn request_info<'a>(
    ex: &'a Exchange,
    ctx: &'a Shared,
    peer: &'a Peer,
    local: &'a Local,
    client_subject: Option<&'a str>,
) -> RequestInfo<'a> {
    RequestInfo {
        head_bytes: &ex.head_bytes,
        head: &ex.head,
        peer,
        local,
        https: ex.https,
        client_subject,
        forwarder_headers: &ctx.settings.forwarder_headers,
    }
}

fn remote_strings(py: Python<'_>, peer: &Peer) -> Remote {
    (
        pyo3::types::PyString::new(py, &peer.addr).unbind(),
        pyo3::types::PyString::new(py, &peer.port).unbind(),
    )
}

/// Pulls a WSGI response into its sink up to `HIGH_WATER_BYTES`; at its end the
/// iterable's `close()` and `post_request`. An application that raises is closed and
/// logged, and gets no `post_request` (as before the Exchange).
#[inline]
pub(super) fn produce<S: ResponseSink>(
    py: Python<'_>,
    service: &Service,
    ex: &mut Exchange,
    source: &mut WsgiSource,
    sink: &mut S,
) -> Produced {
    if let Err(e) = source.produce(py, sink, HIGH_WATER_BYTES) {
        source.close(py);
        ex.fail(&e.to_string());
        return Produced::Failed;
    }
    if !source.is_done() {
        return Produced::More;
    }
    if source.needs_close() {
        source.close(py);
        let bytes = sink.body_bytes();
        ex.post_request(py, service, || source.head_text(py), bytes);
    }
    Produced::Done
}

/// An ASGI response is over (complete, or cut short because the client left or the
/// application failed): its `post_request`, with the scope as the environ.
#[inline]
pub(super) fn asgi_over(
    py: Python<'_>,
    service: &Service,
    ex: &mut Exchange,
    cycle: &Cycle,
    status: u16,
    body_bytes: u64,
) {
    ex.post_request(
        py,
        service,
        || (status_line(status), cycle.response_headers()),
        body_bytes,
    );
}
