//! The chunked transfer-coding decoder (RFC 9112 7.1) as a state machine over bytes.
//!
//! No I/O: the connection feeds it whatever arrived and gets body bytes back. Strict
//! where laxness enables smuggling: hex digits only in sizes, no whitespace around
//! them, CRLF line endings, no bare CR in extensions, bounded size and trailer lines,
//! and no framing fields (`Content-Length`, `Transfer-Encoding`, `Host`) in trailers.

use super::HttpError;

/// Longest chunk-size line (size plus extensions) we accept.
const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Most trailer bytes we accept.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line; holds the bytes of it seen so far.
    Size,
    /// Inside chunk data, this many bytes to go.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk, reading trailer lines.
    Trailers,
    Done,
}

/// Decodes one chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size,
            line: Vec::new(),
            trailer_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes from `input`, appending decoded body bytes to `out` through `emit`.
    /// Returns how many input bytes were consumed; stops at the end of the body so that
    /// pipelined bytes after it stay with the caller.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut emit: impl FnMut(&[u8]),
    ) -> Result<usize, HttpError> {
        let mut pos = 0;
        while pos < input.len() && self.state != State::Done {
            match self.state {
                State::Size | State::DataEnd | State::Trailers => {
                    let rest = &input[pos..];
                    let Some(nl) = memchr::memchr(b'\n', rest) else {
                        self.line.extend_from_slice(rest);
                        pos = input.len();
                        self.check_line_length()?;
                        break;
                    };
                    self.line.extend_from_slice(&rest[..=nl]);
                    pos += nl + 1;
                    self.check_line_length()?;
                    let line = std::mem::take(&mut self.line);
                    self.end_line(&line)?;
                    self.line = line;
                    self.line.clear();
                }
                State::Data(remaining) => {
                    let take = remaining.min((input.len() - pos) as u64) as usize;
                    emit(&input[pos..pos + take]);
                    pos += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::Done => unreachable!(),
            }
        }
        Ok(pos)
    }

    fn check_line_length(&self) -> Result<(), HttpError> {
        let limit = if self.state == State::Trailers {
            MAX_TRAILER_BYTES
        } else {
            MAX_CHUNK_LINE_BYTES
        };
        if self.line.len() > limit {
            Err(HttpError::Malformed("chunk line too long"))
        } else {
            Ok(())
        }
    }

    /// Handles one complete line (ending in `\n`).
    fn end_line(&mut self, line: &[u8]) -> Result<(), HttpError> {
        let Some(content) = line.strip_suffix(b"\r\n") else {
            return Err(HttpError::Malformed("bare LF in chunked body"));
        };
        match self.state {
            State::Size => {
                let size = parse_chunk_size(content)?;
                self.state = if size == 0 {
                    State::Trailers
                } else {
                    State::Data(size)
                };
            }
            State::DataEnd => {
                if !content.is_empty() {
                    return Err(HttpError::Malformed("chunk data longer than its size"));
                }
                self.state = State::Size;
            }
            State::Trailers => {
                if content.is_empty() {
                    self.state = State::Done;
                } else {
                    self.trailer_bytes += line.len();
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(HttpError::Malformed("trailers too large"));
                    }
                    check_trailer(content)?;
                }
            }
            State::Data(_) | State::Done => unreachable!(),
        }
        Ok(())
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let bad = HttpError::Malformed("invalid chunk size");
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, ext) = line.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad);
    }
    if !ext.is_empty() {
        // Extensions start with `;` right after the size (optionally after BWS before
        // the `;`, which Gunicorn rejects too when no extension follows).
        if ext[0] != b';' || ext.contains(&b'\r') {
            return Err(bad);
        }
    }
    let digits = {
        let nonzero = digits
            .iter()
            .position(|b| *b != b'0')
            .unwrap_or(digits.len());
        &digits[nonzero..]
    };
    if digits.len() > 15 {
        return Err(bad);
    }
    let mut size = 0u64;
    for &d in digits {
        size = size * 16 + (d as char).to_digit(16).unwrap_or(0) as u64;
    }
    Ok(size)
}

fn check_trailer(line: &[u8]) -> Result<(), HttpError> {
    let colon = memchr::memchr(b':', line).ok_or(HttpError::Malformed("invalid trailer"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|b| super::head::is_token_byte(*b)) {
        return Err(HttpError::Malformed("invalid trailer name"));
    }
    for forbidden in [&b"content-length"[..], b"transfer-encoding", b"host"] {
        if name.eq_ignore_ascii_case(forbidden) {
            return Err(HttpError::Malformed("framing field in trailers"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let n = d.decode(input, |b| out.extend_from_slice(b))?;
        Ok((out, n, d.is_done()))
    }

    #[test]
    fn decodes_and_stops_at_end() {
        let (out, n, done) =
            decode_all(b"5\r\nhello\r\n6;x=y\r\n world\r\n000\r\nA: b\r\n\r\nNEXT").unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(n, 38);
    }

    #[test]
    fn byte_at_a_time_gives_the_same_result() {
        let input = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        for b in input.chunks(1) {
            d.decode(b, |x| out.extend_from_slice(x)).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(out, b"0123456789");
    }

    #[test]
    fn rejects_sloppy_sizes() {
        for bad in [
            &b"0 \r\n\r\n"[..],
            b" 0\r\n\r\n",
            b"\r\n",
            b"-5\r\n",
            b"5\n;\r\n",
            b"6_0\r\n",
            b"5;a\rb\r\n",
        ] {
            assert!(decode_all(bad).is_err(), "{:?}", bad);
        }
    }
}
