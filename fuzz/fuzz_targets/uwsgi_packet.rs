//! Fuzzes the uwsgi packet parser (`--protocol uwsgi`): any bytes give a head, "need
//! more" or an error — never a panic, never a range outside the head's bytes — and the
//! answer does not depend on how much past the packet is buffered. Then the same bytes,
//! cut at one point, go through a real `Conn` in uwsgi mode (requests handed on or a
//! close; never an answer of our own, never an unbounded buffer).
//!
//! Input: two bytes, the cut offset (little-endian), then the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rgun::http::head::RequestHead;
use rgun::http::uwsgi::{parse_packet, PACKET_HEADER_BYTES};
use rgun::worker::fuzzing::drive_uwsgi_stream;

fuzz_target!(|data: &[u8]| {
    let Some((cut, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let mut head = RequestHead::default();
    let mut bytes = Vec::new();
    let whole = parse_packet(stream, &mut head, &mut bytes);
    if let Ok(Some(n)) = whole {
        let size = usize::from(u16::from_le_bytes([stream[1], stream[2]]));
        assert_eq!(n, PACKET_HEADER_BYTES + size);
        for r in [&head.method, &head.target, &head.path, &head.query] {
            assert!(r.start <= r.end && r.end <= bytes.len());
        }
        for (name, value) in &head.headers {
            assert!(name.end <= bytes.len() && value.end <= bytes.len());
        }
        // The packet alone parses the same.
        let mut again = RequestHead::default();
        let mut again_bytes = Vec::new();
        assert_eq!(parse_packet(&stream[..n], &mut again, &mut again_bytes), Ok(Some(n)));
        assert_eq!(again_bytes, bytes);
    }
    let out = drive_uwsgi_stream(stream, &[usize::from(u16::from_le_bytes(*cut))]);
    assert!(out.answered.is_empty(), "a uwsgi connection answered a packet itself");
});
