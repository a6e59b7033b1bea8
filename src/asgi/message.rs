//! The ASGI messages' fields as rgun reads them from an application's dicts (a body
//! and `more_body`, a required key, `[name, value]` header pairs), and the
//! `http.disconnect` message it hands out: shared by the HTTP cycle and the WebSocket
//! one, refusing a malformed message with the `TypeError`/`ValueError` the
//! application sees.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

/// A response body message's `body` (bytes, if any; else `not_bytes` is the error)
/// and `more_body`.
#[inline]
pub(super) fn body_and_more<'py>(
    message: &Bound<'py, PyDict>,
    not_bytes: &'static str,
) -> PyResult<(Option<Bound<'py, PyBytes>>, bool)> {
    let py = message.py();
    let more = match message.get_item(intern!(py, "more_body"))? {
        Some(m) => m.is_truthy()?,
        None => false,
    };
    let body = match message.get_item(intern!(py, "body"))? {
        Some(b) => Some(
            b.downcast_into::<PyBytes>()
                .map_err(|_| PyTypeError::new_err(not_bytes))?,
        ),
        None => None,
    };
    Ok((body, more))
}

#[inline]
pub(super) fn required<'py>(
    message: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    message.get_item(key)?.ok_or_else(|| {
        PyTypeError::new_err(format!(
            "the ASGI message has no {:?} key",
            key.to_string_lossy()
        ))
    })
}

/// A `[name, value]` header pair: a tuple or list read by index (the common case, no
/// iterator object), any other iterable of two items through the iterator protocol.
#[inline]
pub(super) fn header_pair(pair: &Bound<'_, PyAny>) -> PyResult<(Vec<u8>, Vec<u8>)> {
    let refused = || PyValueError::new_err("each response header must be a [name, value] pair");
    if let Ok(t) = pair.downcast::<pyo3::types::PyTuple>() {
        if t.len() != 2 {
            return Err(refused());
        }
        return Ok((
            header_bytes(&t.get_item(0)?)?,
            header_bytes(&t.get_item(1)?)?,
        ));
    }
    if let Ok(l) = pair.downcast::<pyo3::types::PyList>() {
        if l.len() != 2 {
            return Err(refused());
        }
        return Ok((
            header_bytes(&l.get_item(0)?)?,
            header_bytes(&l.get_item(1)?)?,
        ));
    }
    let mut items = pair.try_iter()?;
    let (Some(name), Some(value), None) = (items.next(), items.next(), items.next()) else {
        return Err(refused());
    };
    Ok((header_bytes(&name?)?, header_bytes(&value?)?))
}

#[inline]
fn header_bytes(item: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    item.downcast::<PyBytes>()
        .map(|b| b.as_bytes().to_vec())
        .map_err(|_| PyTypeError::new_err("response header names and values must be bytes"))
}

pub(super) fn disconnect_message(py: Python<'_>) -> PyObject {
    let message = PyDict::new(py);
    let _ = message.set_item(intern!(py, "type"), intern!(py, "http.disconnect"));
    message.into_any().unbind()
}
