//! A complete request body, as the connection collected it (`worker::body`): in
//! memory, or in an anonymous temporary file past the spill threshold. Both bridges
//! take this one type (WSGI's `wsgi.input`, ASGI's `receive()`), whatever protocol
//! carried the request. No I/O here beyond owning the file.

use std::fs::File;

/// A complete request body.
#[derive(Debug, Default)]
pub enum Body {
    #[default]
    Empty,
    Memory(Vec<u8>),
    File(File),
}
