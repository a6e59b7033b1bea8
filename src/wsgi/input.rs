//! `wsgi.input`: the request body, already read by Rust, as a Python file-like object.
//!
//! Small bodies are held in memory, large ones in an anonymous temporary file (see
//! `worker::body::BodySink`), so Python never waits on the client's socket and a huge
//! upload costs bounded memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::http::body::Body;

enum Source {
    Memory { data: Vec<u8>, pos: usize },
    File(BufReader<File>),
}

impl Source {
    /// Up to `limit` bytes. A body in memory is copied once, straight into the bytes
    /// object the app gets.
    fn read<'py>(&mut self, py: Python<'py>, limit: usize) -> PyResult<Bound<'py, PyBytes>> {
        match self {
            Source::Memory { data, pos } => {
                let end = pos.saturating_add(limit).min(data.len());
                let out = PyBytes::new(py, &data[*pos..end]);
                *pos = end;
                Ok(out)
            }
            Source::File(f) => {
                let mut out = Vec::new();
                f.by_ref()
                    .take(limit as u64)
                    .read_to_end(&mut out)
                    .map_err(io_err)?;
                Ok(PyBytes::new(py, &out))
            }
        }
    }

    /// Up to `limit` bytes, to the end of the line (the `\n` included).
    fn read_line<'py>(&mut self, py: Python<'py>, limit: usize) -> PyResult<Bound<'py, PyBytes>> {
        match self {
            Source::Memory { data, pos } => {
                let rest = &data[*pos..];
                let window = &rest[..limit.min(rest.len())];
                let take = memchr::memchr(b'\n', window).map_or(window.len(), |i| i + 1);
                let out = PyBytes::new(py, &window[..take]);
                *pos += take;
                Ok(out)
            }
            Source::File(f) => {
                let mut out = Vec::new();
                f.by_ref()
                    .take(limit as u64)
                    .read_until(b'\n', &mut out)
                    .map_err(io_err)?;
                Ok(PyBytes::new(py, &out))
            }
        }
    }
}

/// The `wsgi.input` object.
#[pyclass(module = "rgun")]
pub struct Input {
    source: Source,
}

impl Input {
    pub fn new(body: Body) -> Self {
        let source = match body {
            Body::Empty => Source::Memory {
                data: Vec::new(),
                pos: 0,
            },
            Body::Memory(data) => Source::Memory { data, pos: 0 },
            Body::File(f) => Source::File(BufReader::with_capacity(64 * 1024, f)),
        };
        Input { source }
    }
}

fn limit(size: Option<isize>) -> usize {
    match size {
        Some(n) if n >= 0 => n as usize,
        _ => usize::MAX,
    }
}

fn io_err(e: std::io::Error) -> PyErr {
    pyo3::exceptions::PyOSError::new_err(e.to_string())
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.source.read(py, limit(size))
    }

    #[pyo3(signature = (size = None))]
    fn read1<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.read(py, size)
    }

    #[pyo3(signature = (size = None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.source.read_line(py, limit(size))
    }

    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<isize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let lines = PyList::empty(py);
        let budget = limit(hint);
        let mut total = 0usize;
        loop {
            let line = self.source.read_line(py, usize::MAX)?;
            if line.as_bytes().is_empty() {
                break;
            }
            total += line.as_bytes().len();
            lines.append(line)?;
            if total >= budget {
                break;
            }
        }
        Ok(lines)
    }

    fn readable(&self) -> bool {
        true
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.readline(py, None)?;
        Ok(if line.as_bytes().is_empty() {
            None
        } else {
            Some(line)
        })
    }

    fn close(&self) {}

    fn seek(&self, _offset: isize) -> PyResult<()> {
        Err(PyValueError::new_err("wsgi.input is not seekable"))
    }
}
