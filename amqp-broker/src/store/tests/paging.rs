//! Bodies beyond a queue's memory budget live on disk only: order, properties and redelivery
//! survive paging, the budget holds, recovery loads no bodies, damage is skipped, not trusted.

use amq_protocol::types::{AMQPValue, LongString};

use super::*;

/// Small enough that 20,000 messages cannot fit: paging is what keeps the queue under it.
const TINY_BUDGET_BYTES: u64 = 64 * 1024;

fn open_tiny(storage: &MemStorage, budget: u64) -> (Arc<Vhost>, Arc<Store>) {
    open_with_budget(Arc::new(storage.clone()), &dir(), 1 << 20, budget)
}

/// A persistent message whose body and `n` header both say `n`.
fn numbered(n: usize, priority: Option<u8>) -> Arc<Message> {
    let mut headers = FieldTable::default();
    headers.insert(
        "n".into(),
        AMQPValue::LongString(LongString::from(n.to_string())),
    );
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("text/plain".into())
        .with_headers(headers);
    if let Some(p) = priority {
        properties = properties.with_priority(p);
    }
    Arc::new(Message {
        exchange: "ex".into(),
        routing_key: "rk".into(),
        properties,
        body: Bytes::from(format!("{n:08}")),
    })
}

fn header_n(m: &Message) -> String {
    match m
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("n"))
    {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header n missing: {other:?}"),
    }
}

#[test]
fn twenty_thousand_messages_stay_within_a_tiny_budget_and_come_back_in_order() {
    let mem = MemStorage::new();
    let (v, store) = open_tiny(&mem, TINY_BUDGET_BYTES);
    let q = queue(&v, "q", true, false);
    let n = 20_000;
    for i in 0..n {
        assert_eq!(q.publish(numbered(i, None)), Enqueued::Accepted);
        assert!(q.resident_bytes_for_test() <= TINY_BUDGET_BYTES);
    }
    sync(&store).unwrap();
    // Every 100th delivery is requeued once: it comes back first, marked redelivered.
    let mut i = 0;
    while i < n {
        let (m, _) = q.get(false).expect("a message");
        assert_eq!(m.msg.body, format!("{i:08}").as_bytes(), "order at {i}");
        assert_eq!(header_n(&m.msg), i.to_string());
        assert_eq!(
            (m.msg.exchange.as_str(), m.msg.routing_key.as_str()),
            ("ex", "rk")
        );
        assert_eq!(
            m.msg.properties.content_type().as_ref().unwrap().as_str(),
            "text/plain"
        );
        if i % 100 == 50 && !m.redelivered {
            q.requeue(vec![m], true);
            continue;
        }
        assert_eq!(m.redelivered, i % 100 == 50, "redelivered flag at {i}");
        q.settle(&m);
        assert!(q.resident_bytes_for_test() <= TINY_BUDGET_BYTES);
        i += 1;
    }
    assert!(q.get(false).is_none());
}

#[test]
fn recovery_loads_no_bodies_and_reads_them_back_in_order() {
    let mem = MemStorage::new();
    {
        let (v, store) = open_tiny(&mem, TINY_BUDGET_BYTES);
        let q = queue(&v, "q", true, false);
        for i in 0..3000 {
            q.publish(numbered(i, None));
        }
        let (first, _) = q.get(false).unwrap(); // Delivered, never acked: redelivered later.
        assert_eq!(first.msg.body, "00000000".as_bytes());
        store.close();
    }
    let (v, _store) = open_tiny(&mem, TINY_BUDGET_BYTES);
    let q = v.queue(&"q".into(), CONN).unwrap();
    assert_eq!(q.counts().messages, 3000);
    assert_eq!(q.resident_bytes_for_test(), 0, "no body is loaded at start");
    for i in 0..3000 {
        let (m, left) = q.get(true).unwrap();
        assert_eq!(m.msg.body, format!("{i:08}").as_bytes());
        assert_eq!(header_n(&m.msg), i.to_string());
        assert_eq!(m.redelivered, i == 0);
        assert_eq!(left as usize, 2999 - i);
    }
}

#[test]
fn a_message_read_back_right_after_its_publish_is_found() {
    // Budget 0: every message is paged out at once and read back before the writer thread
    // may have written it; the reader must flush and find it.
    let mem = MemStorage::new();
    let (v, _store) = open_tiny(&mem, 0);
    let q = queue(&v, "q", true, false);
    for i in 0..500 {
        q.publish(numbered(i, None));
        let (m, _) = q.get(true).expect("read back");
        assert_eq!(m.msg.body, format!("{i:08}").as_bytes());
    }
}

#[test]
fn transient_messages_behind_paged_ones_keep_their_place() {
    let mem = MemStorage::new();
    let (v, _store) = open_tiny(&mem, 0);
    let q = queue(&v, "q", true, false);
    publish(&q, &["p1"]);
    q.publish(message("t1", false));
    publish(&q, &["p2"]);
    assert_eq!(ready(&v, "q"), fresh(&["p1", "t1", "p2"]));
    let got: Vec<_> = (0..3)
        .map(|_| q.get(true).unwrap().0.msg.body.clone())
        .collect();
    assert_eq!(got, ["p1", "t1", "p2"].map(Bytes::from));
}

#[test]
fn priorities_are_served_from_paged_lanes() {
    let mem = MemStorage::new();
    let (v, _store) = open_tiny(&mem, 0);
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(5));
    let flags = QueueFlags {
        durable: true,
        exclusive: false,
        auto_delete: false,
    };
    let q = v
        .declare_queue(&"pq".into(), false, flags, &args, CONN)
        .unwrap()
        .0;
    for (i, p) in [1, 5, 1, 5, 3].into_iter().enumerate() {
        q.publish(numbered(i, Some(p)));
    }
    let order: Vec<_> = (0..5)
        .map(|_| header_n(&q.get(true).unwrap().0.msg))
        .collect();
    assert_eq!(order, ["1", "3", "4", "0", "2"]);
}

#[test]
fn purge_settles_paged_messages() {
    let mem = MemStorage::new();
    {
        let (v, store) = open_tiny(&mem, 0);
        let q = queue(&v, "q", true, false);
        publish(&q, &["a", "b", "c"]);
        assert_eq!(q.purge(), 3);
        store.close();
    }
    let (v, _store) = open_tiny(&mem, 0);
    assert!(ready(&v, "q").is_empty());
}

#[test]
fn a_damaged_paged_record_is_skipped_not_trusted() {
    let mem = MemStorage::new();
    let (v, store) = open_tiny(&mem, 0);
    let q = queue(&v, "q", true, false);
    publish(&q, &["aaaa", "bbbb", "cccc"]);
    sync(&store).unwrap();
    let seg = segment_of(&mem);
    mem.edit(&seg, |bytes| {
        let at = bytes.windows(4).position(|w| w == b"bbbb").unwrap();
        bytes[at] = b'X';
    });
    let first = q.get(true).unwrap().0;
    assert_eq!(first.msg.body, "aaaa".as_bytes());
    let second = q.get(true).unwrap().0;
    assert_eq!(
        second.msg.body,
        "cccc".as_bytes(),
        "the damaged one is skipped"
    );
    assert!(q.get(true).is_none());
}

#[test]
fn a_reader_whose_segment_was_rewritten_under_it_still_finds_every_message() {
    let mem = MemStorage::new();
    let (v, store) = open_tiny(&mem, 0);
    let q = queue(&v, "q", true, false);
    for i in 0..10 {
        q.publish(numbered(i, None));
    }
    let mut settled = crate::store::compact::Bits::default();
    for i in 0..5 {
        let (m, _) = q.get(false).unwrap();
        assert_eq!(header_n(&m.msg), i.to_string());
        q.settle(&m);
        settled.set(i as u64);
    }
    sync(&store).unwrap();
    // What compaction does: the file shrinks, so the reader's offset no longer fits.
    let seg = segment_of(&mem);
    let delivered = crate::store::compact::Bits::default();
    mem.edit(&seg, |b| {
        *b = crate::store::compact::rewrite(b, 0, &settled, &delivered)
    });
    for i in 5..10 {
        let (m, _) = q.get(true).expect("found after a rescan");
        assert_eq!(header_n(&m.msg), i.to_string());
    }
}
