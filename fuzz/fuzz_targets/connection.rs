//! Fuzzes the connection state machine: any client byte stream, cut into pieces at
//! arbitrary points, driven through a real `Conn` over a socketpair. It must end in
//! requests handed on, an error answer or a close — never a panic, a range outside a
//! head, or a read buffer that grows without bound.
//!
//! Input: one byte `k`, then `k` cut offsets of two bytes each, then the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rgun::worker::fuzzing::drive_stream;
use rgun_fuzz::cuts_and_stream;

fuzz_target!(|data: &[u8]| {
    let Some((cuts, stream)) = cuts_and_stream(data) else {
        return;
    };
    drive_stream(stream, &cuts);
});
