//! The frame decoder on arbitrary bytes: it must never panic, and the same bytes must decode to
//! the same frames and the same refusal whether they arrive in one read or in small pieces.
//!
//! Input: one octet choosing the piece size (1 to 16) and the frame_max (4096 or 131072), then
//! the byte stream.
#![no_main]

use amqp_broker::fuzzing::decode_in_chunks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(choice & 0x0f) + 1;
    let frame_max = if choice & 0x80 == 0 { 4096 } else { 131_072 };
    let whole = decode_in_chunks(bytes, bytes.len(), frame_max);
    let pieces = decode_in_chunks(bytes, piece, frame_max);
    assert_eq!(whole, pieces, "piece size {piece}, frame_max {frame_max}");
});
