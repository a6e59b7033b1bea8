//! Fuzzes the sans-I/O WebSocket frame decoder (`http::websocket::Decoder`): any
//! client byte stream, with or without permessage-deflate, delivered whole or as a
//! buffer that grows in pieces cut at arbitrary points, must give messages, "need
//! more" or an error with an RFC close code — never a panic, a consumed count past
//! the input, or a message over the limit — and the same outcome however it is cut.
//!
//! Input: one flags byte (bit 0: deflate negotiated; bits 1-3: the message limit,
//! 2^(4 + n) bytes), one byte `k`, `k` cut offsets of two bytes each, then the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rgun::http::websocket::{Decoder, Message, WsError};
use rgun_fuzz::cuts_and_stream;

/// Everything `stream` decodes to, delivered as a buffer that grows to each cut (a
/// socket's reads) and is consumed from the front, as the connection does.
fn decode_all(
    stream: &[u8],
    cuts: &[usize],
    deflate: bool,
    limit: usize,
) -> (Vec<Message>, Option<WsError>) {
    let mut decoder = Decoder::new(limit);
    decoder.set_deflate(deflate);
    let mut messages = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
    ends.sort_unstable();
    ends.push(stream.len());
    for end in ends {
        loop {
            let available = &stream[start..end.max(start)];
            match decoder.decode(available) {
                Ok((message, n)) => {
                    assert!(n <= available.len(), "consumed past the input");
                    start += n;
                    match message {
                        Some(m) => {
                            let size = match &m {
                                Message::Text(t) => t.len(),
                                Message::Binary(b) => b.len(),
                                Message::Ping(p) | Message::Pong(p) => {
                                    assert!(p.len() <= 125, "control payload over 125 bytes");
                                    0
                                }
                                Message::Close(c) => {
                                    if let Some((code, reason)) = c {
                                        assert!((1000..5000).contains(code));
                                        assert!(reason.len() <= 123);
                                    }
                                    0
                                }
                            };
                            assert!(size <= limit, "a message over the limit");
                            messages.push(m);
                        }
                        None => break,
                    }
                }
                Err(e) => {
                    assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    return (messages, Some(e));
                }
            }
        }
    }
    (messages, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((cuts, stream)) = cuts_and_stream(rest) else {
        return;
    };
    let deflate = flags & 1 != 0;
    let limit = 1usize << (4 + ((flags >> 1) & 0x7));
    let whole = decode_all(stream, &[], deflate, limit);
    let pieces = decode_all(stream, &cuts, deflate, limit);
    assert_eq!(
        whole, pieces,
        "the outcome depends on how the stream is cut"
    );
});
