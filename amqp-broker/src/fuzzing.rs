//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by default; not part of
//! the API). They reach private parts of the broker with plain types only, so the targets do not
//! depend on how those parts are written.

use bytes::BytesMut;

use crate::codec;

/// What decoding a byte stream produced: each frame (its debug text), and the reply code and
/// text of the refusal that stopped decoding, if one did.
pub type Decoded = (Vec<String>, Option<(u16, String)>);

/// Decodes `bytes` as a connection reads them: fed `chunk` bytes at a time (at least 1), every
/// whole frame decoded after each read, until the bytes run out or a frame is refused.
///
/// The same bytes must decode the same way whatever the chunk size: a frame split across reads
/// is still one frame, and a refusal happens at the same frame.
pub fn decode_in_chunks(bytes: &[u8], chunk: usize, frame_max: u32) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec::decode(&mut buf, frame_max) {
                Ok(Some(frame)) => frames.push(format!("{frame:?}")),
                Ok(None) => break,
                Err(e) => return (frames, Some((e.code, e.text))),
            }
        }
    }
    (frames, None)
}
