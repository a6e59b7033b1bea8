//! The dirty protocol's framing, as Gunicorn's `gunicorn.dirty` client speaks it: a
//! 16-byte header (`GD`, version 1, the message kind, the payload's length as a
//! big-endian u32, a u64 request id) and a TLV payload (`tlv`). Sans-I/O: `Frames`
//! collects bytes as they arrive and hands out whole frames; a bad header is an error
//! for the connection, never a panic.

use thiserror::Error;

use super::tlv::{TlvError, Value};

pub const HEADER_BYTES: usize = 16;
const MAGIC: &[u8; 2] = b"GD";
const VERSION: u8 = 1;
/// The largest payload (Gunicorn's limit too).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
    Error,
    Chunk,
    End,
    Stash,
    Status,
    Manage,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Request => 0x01,
            Kind::Response => 0x02,
            Kind::Error => 0x03,
            Kind::Chunk => 0x04,
            Kind::End => 0x05,
            Kind::Stash => 0x10,
            Kind::Status => 0x11,
            Kind::Manage => 0x12,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            0x01 => Kind::Request,
            0x02 => Kind::Response,
            0x03 => Kind::Error,
            0x04 => Kind::Chunk,
            0x05 => Kind::End,
            0x10 => Kind::Stash,
            0x11 => Kind::Status,
            0x12 => Kind::Manage,
            _ => return None,
        })
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum FrameError {
    #[error("not a dirty protocol frame (magic {0:02x?})")]
    Magic([u8; 2]),
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown message type 0x{0:02x}")]
    Kind(u8),
    #[error("payload of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("bad payload: {0}")]
    Payload(#[from] TlvError),
}

/// One whole frame; its payload still encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The payload decoded (an empty payload is an empty dictionary, as for `End`).
    pub fn value(&self) -> Result<Value, TlvError> {
        if self.payload.is_empty() {
            return Ok(Value::Dict(Vec::new()));
        }
        Value::decode(&self.payload)
    }
}

/// A frame's bytes: the header, then the payload.
pub fn encode(kind: Kind, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    write_header(&mut out, kind, id, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A frame whose payload is `value` encoded.
pub fn encode_value(kind: Kind, id: u64, value: &Value) -> Vec<u8> {
    let mut out = vec![0; HEADER_BYTES];
    value.encode_into(&mut out);
    let len = out.len() - HEADER_BYTES;
    let mut header = Vec::with_capacity(HEADER_BYTES);
    write_header(&mut header, kind, id, len);
    out[..HEADER_BYTES].copy_from_slice(&header);
    out
}

fn write_header(out: &mut Vec<u8>, kind: Kind, id: u64, len: usize) {
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind.code());
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
}

/// Bytes from a stream, cut into frames.
#[derive(Debug, Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_BYTES {
            // Refuse a stranger at its first bytes, not 16 bytes later.
            if self.buf.len() >= 2 && &self.buf[..2] != MAGIC {
                return Err(FrameError::Magic([self.buf[0], self.buf[1]]));
            }
            return Ok(None);
        }
        let h = &self.buf[..HEADER_BYTES];
        if &h[..2] != MAGIC {
            return Err(FrameError::Magic([h[0], h[1]]));
        }
        if h[2] != VERSION {
            return Err(FrameError::Version(h[2]));
        }
        let kind = Kind::from_code(h[3]).ok_or(FrameError::Kind(h[3]))?;
        let len = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD_BYTES {
            return Err(FrameError::TooLarge(len));
        }
        let id = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
        if self.buf.len() < HEADER_BYTES + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_BYTES..HEADER_BYTES + len].to_vec();
        self.buf.drain(..HEADER_BYTES + len);
        Ok(Some(Frame { kind, id, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cut_anywhere_come_out_whole() {
        let value = Value::dict([("result", Value::Int(7))]);
        let mut wire = encode_value(Kind::Response, 9, &value);
        wire.extend(encode(Kind::End, 9, &[]));
        for cut in 0..wire.len() {
            let mut frames = Frames::default();
            frames.push(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = frames.next_frame().unwrap() {
                got.push(f);
            }
            frames.push(&wire[cut..]);
            while let Some(f) = frames.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].kind, Kind::Response);
            assert_eq!(got[0].id, 9);
            assert_eq!(got[0].value(), Ok(value.clone()));
            assert_eq!(got[1].kind, Kind::End);
            assert_eq!(frames.pending(), 0);
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut f = Frames::default();
        f.push(b"GET / HTTP/1.1\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::Magic(*b"GE")));
        let mut wire = encode(Kind::End, 1, &[]);
        wire[2] = 2;
        let mut f = Frames::default();
        f.push(&wire);
        assert_eq!(f.next_frame(), Err(FrameError::Version(2)));
        let mut wire = encode(Kind::End, 1, &[]);
        wire[3] = 0x77;
        let mut f = Frames::default();
        f.push(&wire);
        assert_eq!(f.next_frame(), Err(FrameError::Kind(0x77)));
        let mut wire = encode(Kind::End, 1, &[]);
        wire[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut f = Frames::default();
        f.push(&wire);
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge(u32::MAX as usize)));
    }
}
