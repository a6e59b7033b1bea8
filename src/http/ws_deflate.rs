//! permessage-deflate (RFC 7692), sans I/O: choosing an answer to the client's offers
//! and compressing or inflating one message. rgun always answers with
//! `server_no_context_takeover; client_no_context_takeover`: every message stands
//! alone, so an idle WebSocket holds no compressor state (a deflate context is
//! hundreds of KiB; 10,000 idle sockets must not hold gigabytes).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a compressed message lacks at its end (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// What the server answers when it accepts an offer.
pub const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The answer to `Sec-WebSocket-Extensions` offers (header values, in order): the
/// first acceptable `permessage-deflate` offer gets `ACCEPTED`; `None` declines.
/// An offer asking for a smaller server window than 15 bits is declined (the
/// compressor always uses 32 KiB); the client's own window needs no answer, since
/// inflating with the full window reads any smaller one.
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a [u8]>) -> Option<&'static str> {
    for value in offers {
        for offer in value.split(|&b| b == b',') {
            let mut parts = offer.split(|&b| b == b';').map(|p| p.trim_ascii());
            if !parts
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(b"permessage-deflate"))
            {
                continue;
            }
            let acceptable = parts.all(|param| {
                let (name, value) = match param.iter().position(|&b| b == b'=') {
                    Some(i) => (param[..i].trim_ascii(), Some(param[i + 1..].trim_ascii())),
                    None => (param, None),
                };
                let value = value.map(|v| v.strip_prefix(b"\"").unwrap_or(v));
                let value = value.map(|v| v.strip_suffix(b"\"").unwrap_or(v));
                match name.to_ascii_lowercase().as_slice() {
                    b"server_no_context_takeover" | b"client_no_context_takeover" => {
                        value.is_none()
                    }
                    b"server_max_window_bits" => value == Some(b"15"),
                    b"client_max_window_bits" => value.is_none_or(|v| {
                        matches!(
                            std::str::from_utf8(v)
                                .ok()
                                .and_then(|v| v.parse::<u8>().ok()),
                            Some(8..=15)
                        )
                    }),
                    _ => false,
                }
            });
            if acceptable {
                return Some(ACCEPTED);
            }
        }
    }
    None
}

/// Why a compressed message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// Not valid deflate data.
    Corrupt,
    /// It inflates to more than the limit.
    TooBig,
}

/// Inflates one message's payload (its frames' payloads joined), at most `limit`
/// bytes of output.
pub fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity((payload.len() * 3).min(limit).max(64));
    let mut input: Vec<u8> = Vec::with_capacity(payload.len() + TAIL.len());
    input.extend_from_slice(payload);
    input.extend_from_slice(&TAIL);
    loop {
        let consumed = d.total_in() as usize;
        if out.len() == out.capacity() {
            if out.len() >= limit {
                // Full at the limit: any more output is too much.
                let mut probe = [0u8; 1];
                let before = d.total_out();
                d.decompress(&input[consumed..], &mut probe, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                return if d.total_out() > before {
                    Err(InflateError::TooBig)
                } else {
                    Ok(out)
                };
            }
            out.reserve((out.len()).min(limit - out.len()).max(64));
        }
        let status = d
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        if out.len() > limit {
            return Err(InflateError::TooBig);
        }
        let done_input = d.total_in() as usize == input.len();
        match status {
            Status::StreamEnd => return Ok(out),
            _ if done_input && out.len() < out.capacity() => return Ok(out),
            Status::BufError if out.len() < out.capacity() => return Err(InflateError::Corrupt),
            _ => {}
        }
    }
}

/// Compresses one message's payload for a single frame with RSV1 set.
pub fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let consumed = c.total_in() as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .expect("deflate into a vector cannot fail");
        if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers() {
        assert_eq!(negotiate([&b"permessage-deflate"[..]]), Some(ACCEPTED));
        assert_eq!(
            negotiate([&b"permessage-deflate; client_max_window_bits"[..]]),
            Some(ACCEPTED)
        );
        assert_eq!(
            negotiate([&b"x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover; client_max_window_bits=10"[..]]),
            Some(ACCEPTED)
        );
        assert_eq!(
            negotiate([&b"permessage-deflate; server_max_window_bits=10"[..]]),
            None
        );
        assert_eq!(
            negotiate([&b"permessage-deflate; server_max_window_bits=10, permessage-deflate"[..]]),
            Some(ACCEPTED),
            "the second offer is acceptable"
        );
        assert_eq!(negotiate([&b"permessage-deflate; unknown_param"[..]]), None);
        assert_eq!(negotiate([&b"foo"[..]]), None);
        assert_eq!(negotiate(std::iter::empty()), None);
    }

    #[test]
    fn round_trip_and_the_rfc_example() {
        // RFC 7692 7.2.3.1: "Hello" compressed.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&hello, 100).unwrap(), b"Hello");
        for text in [
            &b""[..],
            b"a",
            &[b'z'; 100_000],
            "wörld ".repeat(5000).as_bytes(),
        ] {
            let packed = deflate(text);
            assert!(!packed.ends_with(&TAIL));
            assert_eq!(inflate(&packed, 1 << 20).unwrap(), text);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let packed = deflate(&vec![0u8; 10_000_000]);
        assert!(packed.len() < 200_000, "{}", packed.len());
        assert_eq!(inflate(&packed, 1_000_000), Err(InflateError::TooBig));
        assert_eq!(inflate(&packed, 10_000_000).unwrap().len(), 10_000_000);
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 100),
            Err(InflateError::Corrupt)
        );
    }
}
