//! Sending the application's response: the head once the first body bytes exist, then
//! the body pulled from the iterable only as fast as the socket drains, so a slow
//! reader costs at most `HIGH_WATER_BYTES` of buffer. A list response's large `bytes`
//! go out from the objects themselves, in one `sendmsg` with the head, rather than
//! copied. `wsgi.file_wrapper` files go out with sendfile(2). The iterable's `close()`
//! is always called, also when the client has gone away.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyTuple};

use crate::http::response::{write_head, RequestFacts, ResponseError, ResponseFraming};
use crate::wsgi::environ::latin1_text;
use crate::wsgi::start_response::StartResponse;
use crate::wsgi::{App, AppResponse};

/// Stop pulling from the application once this much is waiting for the socket.
pub const HIGH_WATER_BYTES: usize = 64 * 1024;
/// Largest single sendfile(2) call.
const SENDFILE_CHUNK_BYTES: usize = 1024 * 1024;
/// A list response's chunk this big is sent from its `bytes` object, not copied.
const SHARE_MIN_BYTES: usize = 8 * 1024;
/// Most pieces in one `sendmsg`.
const MAX_IOV: usize = 16;

/// Why a response could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    /// The application raised, or returned something that is not a WSGI response.
    #[error("{0}")]
    App(String),
    #[error("{0}")]
    Head(#[from] ResponseError),
    /// The client went away (or the socket failed) mid-response.
    #[error("client gone: {0}")]
    Io(#[from] io::Error),
}

/// Progress of one pump call.
pub enum Pump {
    /// Everything is sent.
    Finished,
    /// The socket is full; call again when it is writable.
    Blocked,
}

/// A response being sent.
pub struct Responding {
    result: Option<Py<PyAny>>,
    start_response: Py<StartResponse>,
    iter: Option<Py<PyIterator>>,
    file: Option<(RawFd, i64)>,
    pub framing: ResponseFraming,
    pub status: u16,
    /// Payload bytes produced so far (the access log's `%(B)s`).
    pub body_bytes: u64,
    pub close_after: bool,
    /// Output waiting for the socket, and how much of it is already written.
    pub out: Vec<u8>,
    pub out_pos: usize,
    /// Body bytes that follow `out` on the wire, sent straight from the application's
    /// `bytes` objects: (object, next byte, end).
    shared: VecDeque<(Py<PyBytes>, usize, usize)>,
    terminated: bool,
}

impl Responding {
    /// Turns what the application returned into a response with its head queued in
    /// `out` (which may already hold bytes, e.g. pipelined `100 Continue`).
    pub fn start(
        py: Python<'_>,
        app: &App,
        response: AppResponse,
        facts: RequestFacts,
        out: Vec<u8>,
    ) -> Result<Responding, (RespondError, Option<Py<PyAny>>)> {
        let AppResponse {
            result,
            start_response,
            ..
        } = response;
        let mut r = Responding {
            result: Some(result),
            start_response,
            iter: None,
            file: None,
            framing: ResponseFraming::NoBody,
            status: 0,
            body_bytes: 0,
            close_after: facts.close,
            out,
            out_pos: 0,
            shared: VecDeque::new(),
            terminated: false,
        };
        match r.begin(py, app, facts) {
            Ok(()) => Ok(r),
            Err(e) => {
                let result = r.result.take();
                Err((e, result))
            }
        }
    }

    fn begin(
        &mut self,
        py: Python<'_>,
        app: &App,
        facts: RequestFacts,
    ) -> Result<(), RespondError> {
        let result = self
            .result
            .as_ref()
            .expect("result present")
            .bind(py)
            .clone();
        let mut first: Vec<Bound<'_, PyBytes>> = Vec::new();
        let mut known_length = None;
        if let Some((fd, offset)) = app.sendfile_source(py, &result) {
            // SAFETY: fstat on a descriptor the application's file object owns; the
            // struct is plain data filled by the kernel.
            let size = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                (libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG)
                    .then_some(st.st_size)
            };
            if let Some(size) = size {
                self.file = Some((fd, offset));
                known_length = Some((size - offset).max(0) as u64);
            }
        }
        if self.file.is_none() {
            if let Ok(list) = result.downcast::<PyList>() {
                first = collect_bytes(list.iter())?;
                known_length = Some(0);
            } else if let Ok(tuple) = result.downcast::<PyTuple>() {
                first = collect_bytes(tuple.iter())?;
                known_length = Some(0);
            } else {
                let iter = result.try_iter().map_err(|e| app_error(py, e))?;
                // PEP 3333: the head waits for the first non-empty chunk (start_response
                // may be called lazily by a generator).
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
        self.write_head(
            py,
            RequestFacts {
                known_length,
                ..facts
            },
        )?;
        self.push_body(&written);
        // The whole body is known (no iterator will add to `out` later): large chunks,
        // and every chunk after one, are sent from their objects.
        let whole = self.iter.is_none() && self.file.is_none();
        for chunk in first {
            match self.framing {
                ResponseFraming::Length(n)
                    if whole
                        && (!self.shared.is_empty()
                            || chunk.as_bytes().len() >= SHARE_MIN_BYTES) =>
                {
                    let room = n.saturating_sub(self.body_bytes) as usize;
                    let take = room.min(chunk.as_bytes().len());
                    if take > 0 {
                        self.shared.push_back((chunk.unbind(), 0, take));
                        self.body_bytes += take as u64;
                    }
                }
                _ => self.push_body(chunk.as_bytes()),
            }
        }
        if self.iter.is_none() && self.file.is_none() {
            self.finish_body();
        }
        Ok(())
    }

    fn write_head(&mut self, py: Python<'_>, facts: RequestFacts) -> Result<(), RespondError> {
        let mut sr = self.start_response.borrow_mut(py);
        let Some(head) = sr.head.as_ref() else {
            return Err(RespondError::App(
                "the application did not call start_response".into(),
            ));
        };
        let written = write_head(&mut self.out, head.status(), head.headers(), facts)?;
        self.framing = written.framing;
        self.status = written.status;
        self.close_after |= written.close;
        sr.head_sent = true;
        Ok(())
    }

    /// Frames payload bytes into `out` (and enforces a declared Content-Length).
    fn push_body(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.framing {
            ResponseFraming::NoBody => {}
            ResponseFraming::Length(n) => {
                let room = n.saturating_sub(self.body_bytes) as usize;
                let take = room.min(data.len());
                self.out.extend_from_slice(&data[..take]);
                self.body_bytes += take as u64;
            }
            ResponseFraming::Chunked => {
                use std::io::Write;
                let _ = write!(self.out, "{:x}\r\n", data.len());
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
                self.body_bytes += data.len() as u64;
            }
            ResponseFraming::Close => {
                self.out.extend_from_slice(data);
                self.body_bytes += data.len() as u64;
            }
        }
    }

    fn finish_body(&mut self) {
        if self.terminated {
            return;
        }
        self.terminated = true;
        match self.framing {
            ResponseFraming::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            // A short body under a declared length can only be ended by closing.
            ResponseFraming::Length(n) if self.body_bytes < n && self.file.is_none() => {
                self.close_after = true
            }
            _ => {}
        }
    }

    /// Sends as much as the socket takes, pulling more from the application as it
    /// drains. With the GIL held (`py`).
    pub fn pump(&mut self, py: Python<'_>, fd: RawFd) -> Result<Pump, RespondError> {
        loop {
            while self.out_pos < self.out.len() || !self.shared.is_empty() {
                match self.send_some(py, fd) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pump::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.out.clear();
            self.out_pos = 0;
            if let Some((file_fd, offset)) = self.file {
                match self.send_file(fd, file_fd, offset) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.file = None;
                        self.finish_body();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pump::Blocked),
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            let Some(mut iter) = self.iter.as_ref().map(|i| i.bind(py).clone()) else {
                self.finish_body();
                if self.out.is_empty() {
                    return Ok(Pump::Finished);
                }
                continue;
            };
            if self.framing == ResponseFraming::NoBody {
                self.iter = None;
                continue;
            }
            while self.out.len() < HIGH_WATER_BYTES {
                // PyIter_Next: the end is None, not a StopIteration to fetch and match.
                let next = iter.next();
                let written = std::mem::take(&mut self.start_response.borrow_mut(py).written);
                self.push_body(&written);
                match next {
                    Some(Ok(item)) => {
                        let chunk = as_bytes(item)?;
                        self.push_body(chunk.as_bytes());
                    }
                    None => {
                        self.iter = None;
                        break;
                    }
                    Some(Err(e)) => return Err(app_error(py, e)),
                }
            }
        }
    }

    /// One send of what waits: `out`, then the shared pieces, in one `sendmsg`.
    fn send_some(&mut self, py: Python<'_>, fd: RawFd) -> io::Result<()> {
        if self.shared.is_empty() {
            self.out_pos += write_fd(fd, &self.out[self.out_pos..])?;
            return Ok(());
        }
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        let mut count = 0;
        let unsent = &self.out[self.out_pos..];
        if !unsent.is_empty() {
            iov[0] = libc::iovec {
                iov_base: unsent.as_ptr() as *mut libc::c_void,
                iov_len: unsent.len(),
            };
            count = 1;
        }
        for (bytes, start, end) in self.shared.iter().take(MAX_IOV - count) {
            let piece = &bytes.bind(py).as_bytes()[*start..*end];
            iov[count] = libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: piece.len(),
            };
            count += 1;
        }
        // SAFETY: a zeroed msghdr is valid (no name, no control data); its iovecs
        // point into `out` and into `bytes` objects that `shared` keeps alive and that
        // are immutable, for the duration of the call.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = count as _;
            libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sent = sent as usize;
        let from_out = sent.min(self.out.len() - self.out_pos);
        self.out_pos += from_out;
        sent -= from_out;
        while sent > 0 {
            let Some(front) = self.shared.front_mut() else {
                break;
            };
            let left = front.2 - front.1;
            if sent < left {
                front.1 += sent;
                break;
            }
            sent -= left;
            self.shared.pop_front();
        }
        Ok(())
    }

    /// One sendfile(2) call. `Ok(true)` while there is more to send.
    fn send_file(&mut self, sock: RawFd, file_fd: RawFd, offset: i64) -> io::Result<bool> {
        let remaining = match self.framing {
            ResponseFraming::Length(n) => n.saturating_sub(self.body_bytes),
            ResponseFraming::NoBody => 0,
            _ => u64::MAX,
        };
        if remaining == 0 {
            return Ok(false);
        }
        let mut off = offset as libc::off_t;
        let count = remaining.min(SENDFILE_CHUNK_BYTES as u64) as usize;
        // SAFETY: both descriptors are open for the duration of the call (the response
        // object keeps the application's file alive); `off` is a valid local.
        let n = unsafe { libc::sendfile(sock, file_fd, &mut off, count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(false);
        }
        self.body_bytes += n as u64;
        self.file = Some((file_fd, off as i64));
        Ok(true)
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

    /// Calls the iterable's `close()` (PEP 3333), logging what it raises.
    pub fn close(&mut self, py: Python<'_>) {
        close_result(py, self.result.take());
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        if self.result.is_some() {
            Python::with_gil(|py| self.close(py));
        }
    }
}

/// Calls `close()` on an application result if it has one.
pub fn close_result(py: Python<'_>, result: Option<Py<PyAny>>) {
    let Some(result) = result else { return };
    let result = result.bind(py);
    // Plain lists and tuples (the common case) have no close(); asking would build and
    // discard an AttributeError per request.
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

fn collect_bytes<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
) -> Result<Vec<Bound<'py, PyBytes>>, RespondError> {
    items.map(as_bytes).collect()
}

fn as_bytes(item: Bound<'_, PyAny>) -> Result<Bound<'_, PyBytes>, RespondError> {
    item.downcast_into::<PyBytes>().map_err(|e| {
        RespondError::App(format!(
            "the response iterable yielded {} instead of bytes",
            e.into_inner()
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

fn app_error(py: Python<'_>, e: PyErr) -> RespondError {
    RespondError::App(crate::python::format_exception(py, &e))
}

/// write(2) on a non-blocking socket, without SIGPIPE.
pub fn write_fd(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice for the duration of the call.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
