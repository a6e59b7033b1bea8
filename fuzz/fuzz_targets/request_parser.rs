//! Fuzzes the sans-I/O request parser: any bytes, fed whole or split at an arbitrary
//! point, must give a head, "need more" or an error — never a panic, and never
//! ranges outside the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rgun::http::chunked::ChunkedDecoder;
use rgun::http::head::{parse_head, BodyFraming, HeadLimits, RequestHead};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    let mut head = RequestHead::default();
    if let Ok(Some(n)) = parse_head(data, &limits, &mut head) {
        assert!(n <= data.len());
        for r in [&head.method, &head.target, &head.path, &head.query] {
            assert!(r.end <= n);
        }
        for (name, value) in &head.headers {
            assert!(name.end <= n && value.end <= n);
        }
        if head.framing == BodyFraming::Chunked {
            let mut decoder = ChunkedDecoder::default();
            let mut total = 0usize;
            if let Ok(used) = decoder.decode(&data[n..], |b| total += b.len()) {
                assert!(used <= data.len() - n);
                assert!(total <= used);
            }
        }
    }
});
