//! The WSGI response source: what the application returned (a list, an iterable, a
//! `wsgi.file_wrapper`) and `write()` output, turned into a head and body data for a
//! `ResponseSink`, pulled only while the sink is below its high-water mark. No I/O and
//! no wire format here: the sink frames, the connection sends.
//!
//! PEP 3333 rules kept here: the head waits for the first non-empty chunk (a generator
//! may call `start_response` lazily); `close()` is called exactly once, when the body
//! is produced or the response is abandoned.

use std::os::fd::{BorrowedFd, OwnedFd};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyTuple};

use super::environ::latin1_text;
use super::start_response::StartResponse;
use super::{App, AppResponse};
use crate::http::framer::ResponseSink;
use crate::http::response::{RequestFacts, ResponseError};
use crate::net::outbox::SharedBytes;

/// A list response's chunk this big is sent from its `bytes` object, not copied.
const SHARE_MIN_BYTES: usize = 8 * 1024;

/// Why a response could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The application raised, or returned something that is not a WSGI response.
    #[error("{0}")]
    App(String),
    #[error("{0}")]
    Head(#[from] ResponseError),
}

/// A response being produced.
pub struct WsgiSource {
    result: Option<Py<PyAny>>,
    start_response: Py<StartResponse>,
    /// The iterable still to pull from; `None` once the body is all produced.
    iter: Option<Py<PyIterator>>,
}

impl WsgiSource {
    /// Writes the head and the first body data into `sink`. On error the result is
    /// closed and the head not sent, so the caller can still answer 500.
    pub fn start<S: ResponseSink>(
        py: Python<'_>,
        app: &App,
        response: AppResponse,
        facts: RequestFacts,
        sink: &mut S,
    ) -> Result<WsgiSource, SourceError> {
        let AppResponse {
            result,
            start_response,
            ..
        } = response;
        let mut source = WsgiSource {
            result: Some(result),
            start_response,
            iter: None,
        };
        match source.begin(py, app, facts, sink) {
            Ok(()) => Ok(source),
            Err(e) => {
                source.close(py);
                Err(e)
            }
        }
    }

    /// Every body byte is produced (and `close()` may be called).
    pub fn is_done(&self) -> bool {
        self.iter.is_none()
    }

    fn begin<S: ResponseSink>(
        &mut self,
        py: Python<'_>,
        app: &App,
        facts: RequestFacts,
        sink: &mut S,
    ) -> Result<(), SourceError> {
        let result = self
            .result
            .as_ref()
            .expect("result present")
            .bind(py)
            .clone();
        let mut first: Vec<Bound<'_, PyBytes>> = Vec::new();
        let mut known_length = None;
        let mut file = None;
        if let Some((fd, offset)) = app.sendfile_source(py, &result) {
            if let Some((owned, size)) = regular_file(fd) {
                known_length = Some(size.saturating_sub(offset.max(0) as u64));
                file = Some((owned, offset.max(0) as u64));
            }
        }
        if file.is_none() {
            if let Ok(list) = result.downcast::<PyList>() {
                first = collect_bytes(list.iter())?;
                known_length = Some(0);
            } else if let Ok(tuple) = result.downcast::<PyTuple>() {
                first = collect_bytes(tuple.iter())?;
                known_length = Some(0);
            } else {
                let iter = result.try_iter().map_err(|e| app_error(py, e))?;
                loop {
                    match iter.clone().next() {
                        None => {
                            known_length = Some(0);
                            break;
                        }
                        Some(item) => {
                            let chunk = as_bytes(item.map_err(|e| app_error(py, e))?)?;
                            let empty = chunk.as_bytes().is_empty();
                            first.push(chunk);
                            if !empty || !self.start_response.borrow(py).written.is_empty() {
                                self.iter = Some(iter.unbind());
                                break;
                            }
                        }
                    }
                }
            }
        }
        let written = std::mem::take(&mut self.start_response.borrow_mut(py).written);
        let known_length = known_length.map(|extra: u64| {
            extra
                + written.len() as u64
                + first.iter().map(|b| b.as_bytes().len() as u64).sum::<u64>()
        });
        {
            let mut sr = self.start_response.borrow_mut(py);
            let Some(head) = sr.head.as_ref() else {
                return Err(SourceError::App(
                    "the application did not call start_response".into(),
                ));
            };
            sink.head(
                head.status(),
                head.headers(),
                RequestFacts {
                    known_length,
                    ..facts
                },
            )?;
            sr.head_sent = true;
        }
        sink.data(&written);
        // The whole body is known (no iterator will add to it later): large chunks,
        // and every chunk after one, are sent from their objects.
        let whole = self.iter.is_none() && file.is_none();
        let mut sharing = false;
        for chunk in first {
            if whole && (sharing || chunk.as_bytes().len() >= SHARE_MIN_BYTES) {
                sharing = true;
                sink.shared(Box::new(PyBytesPiece::new(chunk)));
            } else {
                sink.data(chunk.as_bytes());
            }
        }
        if let Some((fd, offset)) = file {
            sink.file(fd, offset);
        }
        if self.iter.is_none() {
            sink.end();
        }
        Ok(())
    }

    /// Pulls from the iterable until `sink` holds `high_water` bytes or the body ends
    /// (then `sink.end()`).
    pub fn produce<S: ResponseSink>(
        &mut self,
        py: Python<'_>,
        sink: &mut S,
        high_water: usize,
    ) -> Result<(), SourceError> {
        let Some(iter) = self.iter.as_ref().map(|i| i.bind(py).clone()) else {
            return Ok(());
        };
        let mut iter = iter;
        while sink.buffered() < high_water {
            // PyIter_Next: the end is None, not a StopIteration to fetch and match.
            let next = iter.next();
            let written = std::mem::take(&mut self.start_response.borrow_mut(py).written);
            sink.data(&written);
            match next {
                Some(Ok(item)) => sink.data(as_bytes(item)?.as_bytes()),
                None => {
                    self.iter = None;
                    sink.end();
                    break;
                }
                Some(Err(e)) => return Err(app_error(py, e)),
            }
        }
        Ok(())
    }

    /// The status line and headers the application chose, for `post_request` hooks.
    pub fn head_text(&self, py: Python<'_>) -> (String, Vec<(String, String)>) {
        let sr = self.start_response.borrow(py);
        match &sr.head {
            Some(h) => (
                h.status().to_owned(),
                h.headers()
                    .map(|(n, v)| (latin1_text(n), latin1_text(v)))
                    .collect(),
            ),
            None => (String::new(), Vec::new()),
        }
    }

    /// Calls the iterable's `close()` (PEP 3333) once, logging what it raises; nothing
    /// more is produced after it.
    pub fn close(&mut self, py: Python<'_>) {
        self.iter = None;
        let Some(result) = self.result.take() else {
            return;
        };
        let result = result.bind(py);
        // Plain lists and tuples (the common case) have no close(); asking would build
        // and discard an AttributeError per request.
        if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
            return;
        }
        if let Ok(close) = result.getattr(pyo3::intern!(py, "close")) {
            if let Err(e) = close.call0() {
                tracing::error!(
                    "Error closing the response iterable\n{}",
                    crate::python::format_exception(py, &e)
                );
            }
        }
    }

    /// `close()` is still to be called.
    pub fn needs_close(&self) -> bool {
        self.result.is_some()
    }
}

impl Drop for WsgiSource {
    fn drop(&mut self) {
        if self.result.is_some() {
            Python::with_gil(|py| self.close(py));
        }
    }
}

/// A `bytes` object's contents, sent from the object itself.
struct PyBytesPiece {
    _keep: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

impl PyBytesPiece {
    fn new(bytes: Bound<'_, PyBytes>) -> PyBytesPiece {
        let data = bytes.as_bytes();
        PyBytesPiece {
            ptr: data.as_ptr(),
            len: data.len(),
            _keep: bytes.unbind(),
        }
    }
}

// SAFETY: a `bytes` object is immutable and `_keep` holds a strong reference, so its
// buffer stays valid and unchanged for the piece's life; reading it needs no GIL.
// Dropping `_keep` off the GIL is deferred by pyo3 until a thread holds it.
unsafe impl Send for PyBytesPiece {}

impl SharedBytes for PyBytesPiece {
    fn bytes(&self) -> &[u8] {
        // SAFETY: see the `Send` impl: `ptr..ptr+len` is the live object's buffer.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A duplicate of the application's file descriptor and its size, if it is a regular
/// file: the response can then be sent with sendfile(2) after the application's file
/// object is closed.
fn regular_file(fd: i32) -> Option<(OwnedFd, u64)> {
    // SAFETY: the descriptor belongs to the application's open file object, which is
    // alive for the duration of this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    let file = std::fs::File::from(owned);
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| (OwnedFd::from(file), meta.len()))
}

fn collect_bytes<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
) -> Result<Vec<Bound<'py, PyBytes>>, SourceError> {
    items.map(as_bytes).collect()
}

fn as_bytes(item: Bound<'_, PyAny>) -> Result<Bound<'_, PyBytes>, SourceError> {
    item.downcast_into::<PyBytes>().map_err(|e| {
        SourceError::App(format!(
            "the response iterable yielded {} instead of bytes",
            e.into_inner()
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

fn app_error(py: Python<'_>, e: PyErr) -> SourceError {
    SourceError::App(crate::python::format_exception(py, &e))
}
