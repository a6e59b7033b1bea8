//! `start_response` and the `write()` callable it returns (PEP 3333).
//!
//! Status and headers are checked and converted to latin-1 bytes here, once; the
//! connection writes them when the first body bytes exist. `exc_info` follows the PEP:
//! replacing the response is allowed until the head is on the wire, after which the
//! exception is re-raised into the application.

use std::ops::Range;

use pyo3::exceptions::{PyAssertionError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// The response head the application chose, in wire bytes: the status and every
/// header name and value back to back in one buffer (one allocation, not two per
/// header).
#[derive(Debug, Default)]
pub struct AppHead {
    bytes: Vec<u8>,
    status_len: usize,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

impl AppHead {
    /// The status line's text (`200 OK`); empty if it is not ASCII, which the
    /// response writer then refuses as a bad status.
    pub fn status(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.status_len]).unwrap_or("")
    }

    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.headers
            .iter()
            .map(|(n, v)| (&self.bytes[n.clone()], &self.bytes[v.clone()]))
    }
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
    // Room for a typical head, so that it is one allocation each.
    let mut head = AppHead {
        bytes: Vec::with_capacity(256),
        status_len: 0,
        headers: Vec::with_capacity(8),
    };
    push_latin1(&mut head.bytes, status)?;
    head.status_len = head.bytes.len();
    // Almost every application gives a list: read by index, its items borrowed (no
    // iterator object, no reference counting per item). Nothing here runs Python
    // code, so the list cannot change under us.
    if let Ok(list) = headers.downcast_exact::<PyList>() {
        for i in 0..list.len() {
            // SAFETY: `i` is below the list's length, read just now with the GIL
            // held; the item is borrowed from the list, which `headers` holds.
            let item = unsafe {
                let ptr = pyo3::ffi::PyList_GET_ITEM(list.as_ptr(), i as pyo3::ffi::Py_ssize_t);
                pyo3::Borrowed::from_ptr(list.py(), ptr)
            };
            push_header(&mut head, &item)?;
        }
        return Ok(head);
    }
    for item in headers.try_iter()? {
        push_header(&mut head, &item?)?;
    }
    Ok(head)
}

/// One `(name, value)` header of the application's list into `head`.
#[inline]
fn push_header(head: &mut AppHead, item: &Bound<'_, PyAny>) -> PyResult<()> {
    let not_a_pair = || PyTypeError::new_err("headers must be (name, value) tuples");
    let pair = item.downcast::<PyTuple>().map_err(|_| not_a_pair())?;
    if pair.len() != 2 {
        return Err(not_a_pair());
    }
    // SAFETY: the tuple has two items (checked above); they are borrowed from it
    // while `item` holds it.
    let (name, value) = unsafe {
        (
            pair.get_borrowed_item_unchecked(0),
            pair.get_borrowed_item_unchecked(1),
        )
    };
    let (Ok(name), Ok(value)) = (name.downcast::<PyString>(), value.downcast::<PyString>()) else {
        return Err(PyTypeError::new_err("header names and values must be str"));
    };
    let name = push_latin1(&mut head.bytes, name)?;
    let value = push_latin1(&mut head.bytes, value)?;
    head.headers.push((name, value));
    Ok(())
}

/// Appends a `str` as latin-1 bytes, as PEP 3333 requires of status and headers, and
/// returns where they are in `out`.
fn push_latin1(out: &mut Vec<u8>, s: &Bound<'_, PyString>) -> PyResult<Range<usize>> {
    let start = out.len();
    let ptr = s.as_ptr();
    // SAFETY: `ptr` is a live str (the GIL is held through `s`). Once ready, a str
    // whose kind is 1 byte per character stores exactly its characters, all below
    // 256, which are their latin-1 bytes; GET_LENGTH counts them.
    unsafe {
        if pyo3::ffi::PyUnicode_READY(ptr) != 0 {
            return Err(PyErr::fetch(s.py()));
        }
        if pyo3::ffi::PyUnicode_KIND(ptr) == pyo3::ffi::PyUnicode_1BYTE_KIND {
            let len = pyo3::ffi::PyUnicode_GET_LENGTH(ptr) as usize;
            let data = pyo3::ffi::PyUnicode_1BYTE_DATA(ptr);
            out.extend_from_slice(std::slice::from_raw_parts(data, len));
            return Ok(start..out.len());
        }
    }
    // Wider kinds hold a character above U+00FF.
    Err(PyTypeError::new_err(format!(
        "{:?} is not latin-1 encodable",
        s.to_cow()?
    )))
}
