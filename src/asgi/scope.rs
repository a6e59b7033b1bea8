//! Building an HTTP connection scope (ASGI 3.0, spec 2.4) from a parsed request: the
//! constant part (`asgi`, `type`, `root_path`, the extensions) made once per worker,
//! the rest per request (an HTTP/2 stream's from the HTTP/1 head `http::h2` made of
//! it: `http_version` "2", `host` from `:authority`). Header names are lower-cased
//! bytes, values bytes as sent; `path` is percent-decoded UTF-8 with `root_path` in
//! front (as Uvicorn does).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::http::request::RequestInfo;
use crate::net::{Local, Peer};

crate::python::interned_keys! {
    type_ = "type",
    asgi, http_version, method, scheme, path, raw_path, query_string, root_path,
    headers, client, server, state, extensions, http, https,
    v10 = "1.0",
    v11 = "1.1",
    v2 = "2",
    get = "GET",
    post = "POST",
}

/// The scope's `client` and `server`, made by a connection's first request and
/// shared by the rest (tuples are immutable).
pub type Addresses = (Py<PyAny>, Py<PyAny>);

/// The per-worker part of every scope.
pub struct ScopeBuilder {
    k: Keys,
    /// `{"type": "http", "root_path": ..., "extensions": ...}`, copied per request.
    template: Py<PyDict>,
    root_path: String,
    /// `{"version": "3.0", "spec_version": "2.4"}`.
    asgi_version: Py<PyDict>,
}

/// The scope's `client` (`None` for a Unix-socket peer) and `server` for a
/// connection's peer and local address.
pub fn addresses(py: Python<'_>, peer: &Peer, local: &Local) -> PyResult<Addresses> {
    let client = if peer.addr.is_empty() {
        py.None()
    } else {
        let port: u16 = peer.port.parse().unwrap_or(0);
        (peer.addr.as_str(), port)
            .into_pyobject(py)?
            .into_any()
            .unbind()
    };
    let server = match local.port.parse::<u16>() {
        Ok(port) => (local.name.as_str(), port).into_pyobject(py)?,
        Err(_) => (local.name.as_str(), py.None()).into_pyobject(py)?,
    };
    Ok((client, server.into_any().unbind()))
}

impl ScopeBuilder {
    pub fn new(py: Python<'_>, root_path: &str) -> PyResult<ScopeBuilder> {
        let k = Keys::new(py);
        let template = PyDict::new(py);
        template.set_item(&k.type_, &k.http)?;
        template.set_item(&k.root_path, root_path)?;
        let extensions = PyDict::new(py);
        extensions.set_item("http.response.pathsend", PyDict::new(py))?;
        template.set_item(&k.extensions, extensions)?;
        let asgi_version = PyDict::new(py);
        asgi_version.set_item("version", "3.0")?;
        asgi_version.set_item("spec_version", "2.4")?;
        Ok(ScopeBuilder {
            k,
            template: template.unbind(),
            root_path: root_path.to_owned(),
            asgi_version: asgi_version.unbind(),
        })
    }

    /// A `websocket` scope for an upgrade request: the HTTP scope's fields without
    /// `method`, with `ws`/`wss` and the offered subprotocols.
    pub fn build_websocket<'py>(
        &self,
        py: Python<'py>,
        req: &RequestInfo<'_>,
        state: &Bound<'py, PyDict>,
        subprotocols: &[String],
    ) -> PyResult<Bound<'py, PyDict>> {
        let scope = self.build(py, req, state, &addresses(py, req.peer, req.local)?)?;
        scope.set_item(&self.k.type_, "websocket")?;
        scope.del_item(&self.k.method)?;
        scope.set_item(&self.k.scheme, if req.https { "wss" } else { "ws" })?;
        scope.set_item("subprotocols", PyList::new(py, subprotocols)?)?;
        let extensions = PyDict::new(py);
        extensions.set_item("websocket.http.response", PyDict::new(py))?;
        scope.set_item(&self.k.extensions, extensions)?;
        Ok(scope)
    }

    /// A fresh scope for one request; `state` is the lifespan state, copied shallowly;
    /// `addresses` its connection's (`addresses`).
    pub fn build<'py>(
        &self,
        py: Python<'py>,
        req: &RequestInfo<'_>,
        state: &Bound<'py, PyDict>,
        addresses: &Addresses,
    ) -> PyResult<Bound<'py, PyDict>> {
        let k = &self.k;
        let scope = self.template.bind(py).copy()?;
        let head = req.head;
        let bytes = req.head_bytes;
        scope.set_item(&k.asgi, self.asgi_version.bind(py).copy()?)?;
        scope.set_item(
            &k.http_version,
            if head.http2 {
                &k.v2
            } else if head.minor_version == 0 {
                &k.v10
            } else {
                &k.v11
            },
        )?;
        let method = &bytes[head.method.clone()];
        match method {
            b"GET" => scope.set_item(&k.method, &k.get)?,
            b"POST" => scope.set_item(&k.method, &k.post)?,
            // A token: ASCII.
            _ => scope.set_item(
                &k.method,
                PyString::new(py, &String::from_utf8_lossy(method)),
            )?,
        }
        scope.set_item(&k.scheme, if req.https { &k.https } else { &k.http })?;
        let raw_path = &bytes[head.path.clone()];
        let decoded = crate::http::percent_decode(raw_path);
        let path = String::from_utf8_lossy(&decoded);
        if self.root_path.is_empty() {
            scope.set_item(&k.path, PyString::new(py, &path))?;
            scope.set_item(&k.raw_path, PyBytes::new(py, raw_path))?;
        } else {
            scope.set_item(&k.path, format!("{}{path}", self.root_path))?;
            let mut full = self.root_path.as_bytes().to_vec();
            full.extend_from_slice(raw_path);
            scope.set_item(&k.raw_path, PyBytes::new(py, &full))?;
        }
        scope.set_item(
            &k.query_string,
            PyBytes::new(py, &bytes[head.query.clone()]),
        )?;
        let headers = PyList::empty(py);
        let mut lower = Vec::with_capacity(32);
        for (name, value) in &head.headers {
            lower.clear();
            lower.extend_from_slice(&bytes[name.clone()]);
            lower.make_ascii_lowercase();
            headers.append(PyTuple::new(
                py,
                [
                    PyBytes::new(py, &lower),
                    PyBytes::new(py, &bytes[value.clone()]),
                ],
            )?)?;
        }
        if req.peer.trusted && !head.underscored.is_empty() {
            for (name, value) in req.forwarder_headers.forwarded(bytes, head) {
                let name = name.to_ascii_lowercase();
                headers.append(PyTuple::new(
                    py,
                    [PyBytes::new(py, &name), PyBytes::new(py, value)],
                )?)?;
            }
        }
        scope.set_item(&k.headers, headers)?;
        scope.set_item(&k.client, addresses.0.bind(py))?;
        scope.set_item(&k.server, addresses.1.bind(py))?;
        scope.set_item(&k.state, state.copy()?)?;
        Ok(scope)
    }
}
