//! Compaction: the oldest segment of a log, pinned by a few live messages (one consumer that
//! never acks, a message stuck behind a long queue), is rewritten in place with only what is
//! still needed, so it and the dead segments behind it stop holding disk.
//!
//! # When
//!
//! After a sync, when the oldest segment is closed, at most a quarter of the messages written to
//! it are still live, and the next segment is closed and holds no live message (so the rewrite
//! frees at least that one). A compacted segment (live messages only) is rewritten again each
//! time that frees the segment after it, so a pinned log keeps about three segments. See
//! `QueueLog::reclaim` in [`super::segment`].
//!
//! # What
//!
//! The new file is the magic, then each live message's `M` record as it was, followed by a `D`
//! record when the message was delivered: same order, same seqs, so recovery and read-back (which
//! rely on seq order) see a shorter log of the same messages. It replaces the old one atomically
//! ([`super::io::Storage::replace`]). Its `A` records are gone with the messages they settled,
//! which is why the segment remembers `compacted_below`: a later segment closed before the
//! rewrite holds only `A` records for messages already gone or in segments that are themselves
//! gone, and `D` records the rewrite carried over, so it may be deleted once it has no live
//! message although the oldest segment still exists.
//!
//! A reader whose cursor was in the old file finds offsets that no longer fit; read-back rescans
//! the log from its oldest segment once when it misses a message (see [`super::reader`]).

use super::format::{self, SEGMENT_MAGIC, Scanned, tag};

/// One bit per seq of a segment, from its `first_seq`: which messages were settled or delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bits {
    words: Vec<u64>,
}

impl Bits {
    pub fn set(&mut self, i: u64) {
        let Ok(i) = usize::try_from(i) else { return };
        let word = i / 64;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (i % 64);
    }

    pub fn get(&self, i: u64) -> bool {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.words.get(i / 64).map(|w| w & (1 << (i % 64)) != 0))
            .unwrap_or(false)
    }
}

/// The compacted contents of a segment (see the module docs); `first_seq` is where its bits
/// start. Damaged records are left out (recovery reported them when they were found).
pub(crate) fn rewrite(bytes: &[u8], first_seq: u64, settled: &Bits, delivered: &Bits) -> Vec<u8> {
    let mut out = SEGMENT_MAGIC.to_vec();
    let records = format::scan(bytes, SEGMENT_MAGIC.len().min(bytes.len()));
    for found in records {
        let Scanned::Record {
            offset,
            tag,
            payload,
        } = found
        else {
            continue;
        };
        // Messages of a queue log, and delayed messages of the delayed log (keyed by due time
        // first, then seq); settled and delivered marks are rewritten from the bits.
        let seq = match tag {
            tag::MESSAGE => format::seq(payload),
            tag::DELAYED => format::delayed_key(payload).map(|(_, seq)| seq),
            _ => continue,
        };
        let Ok(seq) = seq else {
            continue;
        };
        let Some(bit) = seq.checked_sub(first_seq) else {
            continue;
        };
        if settled.get(bit) {
            continue;
        }
        let end = offset + format::FRAME_OVERHEAD_BYTES + payload.len();
        out.extend_from_slice(&bytes[offset..end]);
        if delivered.get(bit) {
            format::put_seq(&mut out, tag::DELIVERED, seq);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use amq_protocol::protocol::BasicProperties;

    use super::*;

    #[test]
    fn only_live_messages_stay_with_their_delivered_marks() {
        let mut seg = SEGMENT_MAGIC.to_vec();
        for seq in 10..14 {
            let body = format!("m{seq}");
            format::put_message(
                &mut seg,
                seq,
                "",
                "q",
                &BasicProperties::default(),
                body.as_bytes(),
            );
        }
        format::put_seq(&mut seg, tag::SETTLED, 10);
        format::put_seq(&mut seg, tag::DELIVERED, 12);
        let mut settled = Bits::default();
        settled.set(0); // 10
        settled.set(2); // 12
        let mut delivered = Bits::default();
        delivered.set(1); // 11
        let out = rewrite(&seg, 10, &settled, &delivered);
        let found: Vec<(u8, u64)> = format::scan(&out, 8)
            .into_iter()
            .map(|s| match s {
                Scanned::Record { tag, payload, .. } => (tag, format::seq(payload).unwrap()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(found, [(b'M', 11), (b'D', 11), (b'M', 13)]);
    }

    #[test]
    fn the_delayed_log_keeps_its_unsettled_delayed_messages() {
        let mut seg = SEGMENT_MAGIC.to_vec();
        for seq in 5..8 {
            let msg = crate::message::Message {
                exchange: "dx".into(),
                routing_key: "k".into(),
                properties: BasicProperties::default(),
                body: bytes::Bytes::from(format!("d{seq}")),
            };
            let payload = format::delayed_payload(1_000 + seq, &["k".into()], seq, &msg);
            format::frame(&mut seg, tag::DELAYED, |b| b.extend_from_slice(&payload));
        }
        format::put_seq(&mut seg, tag::SETTLED, 6);
        let mut settled = Bits::default();
        settled.set(1); // 6
        let out = rewrite(&seg, 5, &settled, &Bits::default());
        let found: Vec<(u8, u64)> = format::scan(&out, 8)
            .into_iter()
            .map(|s| match s {
                Scanned::Record { tag, payload, .. } => {
                    (tag, format::delayed_key(payload).unwrap().1)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(found, [(b'T', 5), (b'T', 7)]);
    }

    #[test]
    fn bits_grow_as_needed() {
        let mut b = Bits::default();
        assert!(!b.get(1000));
        b.set(1000);
        assert!(b.get(1000) && !b.get(999));
    }
}
