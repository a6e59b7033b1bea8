//! Fuzzes the connection state machine: any client byte stream, cut into pieces at
//! arbitrary points, driven through a real `Conn` over a socketpair. It must end in
//! requests handed on, an error answer or a close — never a panic, a range outside a
//! head, or a read buffer that grows without bound.
//!
//! Input: one byte `k`, then `k` cut offsets of two bytes each, then the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rgun::worker::fuzzing::drive_stream;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = (k % 16) as usize;
    if rest.len() < 2 * k {
        return;
    }
    let (cuts, stream) = rest.split_at(2 * k);
    let cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize)
        .collect();
    drive_stream(stream, &cuts);
});
