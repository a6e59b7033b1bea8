//! Finding where a request head ends while it arrives, scanning each byte once.
//!
//! A head dribbled in small pieces up to the size limit would cost quadratic work if
//! every read re-parsed it from its start. `HeadScan` remembers how far it has looked
//! and what it has seen (lines, the current line's start), applies the limits that
//! can be judged on a partial head, and hands the complete head to `parse_head` once.

use super::head::{parse_head, HeadLimits, RequestHead};
use super::HttpError;

/// How far an incomplete head has been scanned. Reset for every new head.
#[derive(Debug, Default, Clone)]
pub struct HeadScan {
    /// Bytes already looked at.
    scanned: usize,
    /// Where the line being received starts.
    line_start: usize,
    /// Complete lines seen, the request line included.
    lines: usize,
}

impl HeadScan {
    /// `parse_head` for a head that arrives piecewise: `buf` is the same head with
    /// more bytes at its end than last time. Only the new bytes are scanned; the head
    /// is parsed once, when its end is found.
    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: &HeadLimits,
        out: &mut RequestHead,
    ) -> Result<Option<usize>, HttpError> {
        debug_assert!(buf.len() >= self.scanned, "the head shrank");
        if self.scanned == 0 {
            // The usual case, a whole head in the first read: one parse, as for any
            // head. Only an incomplete one is scanned (once more) to remember where.
            if let Some(n) = parse_head(buf, limits, out)? {
                return Ok(Some(n));
            }
        }
        let from = self.scanned;
        self.scanned = buf.len();
        for i in memchr::memchr_iter(b'\n', &buf[from..]).map(|i| i + from) {
            // The same ends as `parse_head`'s: CRLF CRLF, or LF LF (refused there).
            let ends = (i >= 1 && buf[i - 1] == b'\n') || (i >= 3 && &buf[i - 3..i] == b"\r\n\r");
            if ends {
                return match parse_head(&buf[..=i], limits, out)? {
                    Some(n) => Ok(Some(n)),
                    None => Err(HttpError::Malformed("incomplete head")),
                };
            }
            if self.lines == 0 {
                let line_len = i.saturating_sub(1);
                if limits.request_line_bytes != 0 && line_len > limits.request_line_bytes {
                    return Err(HttpError::RequestLineTooLong);
                }
            } else {
                if i - self.line_start + 1 > limits.field_bytes {
                    return Err(HttpError::HeaderFieldTooLarge);
                }
                // The fields so far, and the one being received.
                if self.lines > limits.fields + 1 {
                    return Err(HttpError::TooManyHeaders);
                }
            }
            self.lines += 1;
            self.line_start = i + 1;
        }
        if self.lines == 0 {
            if limits.request_line_bytes != 0 && buf.len() > limits.request_line_bytes + 1 {
                return Err(HttpError::RequestLineTooLong);
            }
            return Ok(None);
        }
        if buf.len() > limits.max_head_bytes() {
            return Err(HttpError::HeadersTooLarge);
        }
        if buf.len() - self.line_start + 1 > limits.field_bytes {
            return Err(HttpError::HeaderFieldTooLarge);
        }
        if self.lines > limits.fields + 1 {
            return Err(HttpError::TooManyHeaders);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `raw` in `piece`-byte steps; the outcome once complete (or the error).
    fn dribble(raw: &[u8], piece: usize, limits: &HeadLimits) -> Result<Option<usize>, HttpError> {
        let mut scan = HeadScan::default();
        let mut head = RequestHead::default();
        let mut end = 0;
        loop {
            end = (end + piece).min(raw.len());
            match scan.parse(&raw[..end], limits, &mut head)? {
                Some(n) => return Ok(Some(n)),
                None if end == raw.len() => return Ok(None),
                None => {}
            }
        }
    }

    fn whole(raw: &[u8], limits: &HeadLimits) -> Result<Option<usize>, HttpError> {
        parse_head(raw, limits, &mut RequestHead::default())
    }

    #[test]
    fn agrees_with_parse_head_however_the_head_is_cut() {
        let limits = HeadLimits {
            request_line_bytes: 40,
            fields: 3,
            field_bytes: 30,
            ..HeadLimits::default()
        };
        let long_field = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(40));
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "p".repeat(60));
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody".to_vec(),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\n\n".to_vec(),
            b"GET / HTTP/1.1\r\nA: b\n\nrest".to_vec(),
            b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            long_field.into_bytes(),
            long_line.into_bytes(),
        ];
        for raw in &cases {
            let want = whole(raw, &limits);
            for piece in [1, 2, 3, 7, 100, raw.len()] {
                assert_eq!(
                    dribble(raw, piece, &limits),
                    want,
                    "{:?} in {piece}-byte pieces",
                    String::from_utf8_lossy(raw)
                );
            }
        }
    }

    #[test]
    fn a_maximal_head_dribbled_byte_by_byte_is_refused_at_the_limit() {
        let limits = HeadLimits::default();
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        while raw.len() <= limits.max_head_bytes() + 10 {
            raw.extend_from_slice(b"X-Filler: ");
            raw.extend(std::iter::repeat_n(b'f', limits.field_bytes - 14));
            raw.extend_from_slice(b"\r\n");
        }
        let got = dribble(&raw, 1, &limits);
        assert!(
            matches!(
                got,
                Err(HttpError::TooManyHeaders) | Err(HttpError::HeadersTooLarge)
            ),
            "{got:?}"
        );
    }
}
