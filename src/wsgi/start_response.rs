//! `start_response` and the `write()` callable it returns (PEP 3333).
//!
//! Status and headers are checked and converted to latin-1 bytes here, once; the
//! connection writes them when the first body bytes exist. `exc_info` follows the PEP:
//! replacing the response is allowed until the head is on the wire, after which the
//! exception is re-raised into the application.

use pyo3::exceptions::{PyAssertionError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

/// The response head the application chose, in wire bytes.
#[derive(Debug, Default)]
pub struct AppHead {
    pub status: String,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

#[pyclass(module = "rgun")]
#[derive(Default)]
pub struct StartResponse {
    pub head: Option<AppHead>,
    /// Set by the connection once the head has been written to the socket.
    pub head_sent: bool,
    /// Bytes given to `write()`, sent before the iterable's.
    pub written: Vec<u8>,
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__(
        slf: Bound<'_, Self>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Writer>> {
        let py = slf.py();
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let this = slf.borrow();
            if let Some(exc_info) = exc_info {
                if this.head_sent {
                    return Err(reraise(exc_info));
                }
            } else if this.head.is_some() {
                return Err(PyAssertionError::new_err(
                    "start_response called a second time without exc_info",
                ));
            }
        }
        let head = convert_head(status, headers)?;
        slf.borrow_mut().head = Some(head);
        Py::new(
            py,
            Writer {
                start_response: slf.unbind(),
            },
        )
    }
}

/// The `write(data)` callable returned by `start_response`.
#[pyclass(module = "rgun")]
pub struct Writer {
    start_response: Py<StartResponse>,
}

#[pymethods]
impl Writer {
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data
            .downcast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() argument must be bytes"))?;
        self.start_response
            .borrow_mut(py)
            .written
            .extend_from_slice(bytes.as_bytes());
        Ok(())
    }
}

fn reraise(exc_info: &Bound<'_, PyAny>) -> PyErr {
    match exc_info.get_item(1) {
        Ok(value) => PyErr::from_value(value),
        Err(e) => e,
    }
}

fn convert_head(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<AppHead> {
    let status = status
        .downcast::<PyString>()
        .map_err(|_| PyTypeError::new_err("status must be a str"))?;
    let status = String::from_utf8(latin1_bytes(status)?).unwrap_or_default();
    let mut converted = Vec::new();
    for item in headers.try_iter()? {
        let item = item?;
        let pair = item
            .downcast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("headers must be (name, value) tuples"))?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err("headers must be (name, value) tuples"));
        }
        let name = pair.get_item(0)?;
        let value = pair.get_item(1)?;
        let (Ok(name), Ok(value)) = (name.downcast::<PyString>(), value.downcast::<PyString>())
        else {
            return Err(PyTypeError::new_err("header names and values must be str"));
        };
        converted.push((latin1_bytes(name)?, latin1_bytes(value)?));
    }
    Ok(AppHead {
        status,
        headers: converted,
    })
}

/// A `str` as latin-1 bytes, as PEP 3333 requires of status and headers.
pub fn latin1_bytes(s: &Bound<'_, PyString>) -> PyResult<Vec<u8>> {
    let text = s.to_cow()?;
    if text.is_ascii() {
        return Ok(text.as_bytes().to_vec());
    }
    text.chars()
        .map(|c| u8::try_from(u32::from(c)))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| PyTypeError::new_err(format!("{text:?} is not latin-1 encodable")))
}
