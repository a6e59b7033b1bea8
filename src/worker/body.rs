//! Request-body reading: the framing decoder (length or chunked) and the sink that keeps
//! small bodies in memory and spills large ones to an anonymous temporary file, so that
//! memory per upload stays bounded whatever its size.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use crate::http::body::Body;
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::BodyFraming;
use crate::http::HttpError;

/// Bodies up to this size stay in memory; larger ones go to a temporary file.
pub const SPILL_THRESHOLD_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// The protocol frames the body itself (HTTP/2 DATA frames): every byte fed is
    /// body, and `end` says when it is complete.
    Framed {
        ended: bool,
    },
}

/// A body being received.
#[derive(Debug)]
pub struct BodyReader {
    decoder: Decoder,
    mem: Vec<u8>,
    file: Option<File>,
    received: u64,
}

impl BodyReader {
    /// `None` when the request has no body.
    pub fn new(framing: BodyFraming) -> Option<BodyReader> {
        let decoder = match framing {
            BodyFraming::None => return None,
            BodyFraming::Length(n) => Decoder::Length(n),
            BodyFraming::Chunked => Decoder::Chunked(ChunkedDecoder::default()),
        };
        let hint = match framing {
            BodyFraming::Length(n) => (n as usize).min(SPILL_THRESHOLD_BYTES),
            _ => 0,
        };
        Some(BodyReader {
            decoder,
            mem: Vec::with_capacity(hint),
            file: None,
            received: 0,
        })
    }

    /// A body whose framing is the protocol's own (an HTTP/2 stream's).
    pub fn framed() -> BodyReader {
        BodyReader {
            decoder: Decoder::Framed { ended: false },
            mem: Vec::new(),
            file: None,
            received: 0,
        }
    }

    /// A framed body is complete.
    pub fn end(&mut self) {
        if let Decoder::Framed { ended } = &mut self.decoder {
            *ended = true;
        }
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn is_done(&self) -> bool {
        match &self.decoder {
            Decoder::Length(left) => *left == 0,
            Decoder::Chunked(c) => c.is_done(),
            Decoder::Framed { ended } => *ended,
        }
    }

    /// Takes body bytes from `input`; returns how many were consumed.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        match &mut self.decoder {
            Decoder::Framed { .. } => {
                Self::store(&mut self.mem, &mut self.file, &mut self.received, input)?;
                Ok(input.len())
            }
            Decoder::Length(left) => {
                let take = (*left).min(input.len() as u64) as usize;
                *left -= take as u64;
                Self::store(
                    &mut self.mem,
                    &mut self.file,
                    &mut self.received,
                    &input[..take],
                )?;
                Ok(take)
            }
            Decoder::Chunked(decoder) => {
                let mut io_error = None;
                let (mem, file, received) = (&mut self.mem, &mut self.file, &mut self.received);
                let used = decoder.decode(input, |data| {
                    if io_error.is_none() {
                        if let Err(e) = Self::store(mem, file, received, data) {
                            io_error = Some(e);
                        }
                    }
                })?;
                match io_error {
                    Some(e) => Err(e),
                    None => Ok(used),
                }
            }
        }
    }

    fn store(
        mem: &mut Vec<u8>,
        file: &mut Option<File>,
        received: &mut u64,
        data: &[u8],
    ) -> Result<(), BodyError> {
        *received += data.len() as u64;
        if let Some(f) = file {
            return f.write_all(data).map_err(BodyError::Spill);
        }
        if mem.len() + data.len() <= SPILL_THRESHOLD_BYTES {
            mem.extend_from_slice(data);
            return Ok(());
        }
        let mut f = tempfile::tempfile().map_err(BodyError::Spill)?;
        f.write_all(mem).map_err(BodyError::Spill)?;
        f.write_all(data).map_err(BodyError::Spill)?;
        *mem = Vec::new();
        *file = Some(f);
        Ok(())
    }

    /// The complete body, ready for `wsgi.input`.
    pub fn take_body(&mut self) -> Result<Body, BodyError> {
        Ok(match self.file.take() {
            Some(mut f) => {
                f.seek(SeekFrom::Start(0)).map_err(BodyError::Spill)?;
                Body::File(f)
            }
            None => Body::Memory(std::mem::take(&mut self.mem)),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("cannot spill request body to a temporary file: {0}")]
    Spill(std::io::Error),
}
