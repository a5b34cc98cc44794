//! Named recovery scenarios, through the vhost and queues as the broker uses them. Crash cases
//! run on [`MemStorage`] (a crash keeps only synced bytes); the basic ones also on the real file
//! system.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use bytes::Bytes;

use super::io::{FileStorage, MemStorage, Storage};
use super::{Store, StoreOptions};
use crate::exchange::Destination;
use crate::message::Message;
use crate::queue::{Enqueued, Queue};
use crate::vhost::{ExchangeFlags, QueueFlags, Vhost};

mod paging;

const CONN: u64 = 1;

fn dir() -> PathBuf {
    PathBuf::from("/data")
}

fn open_with(
    storage: Arc<dyn Storage>,
    dir: &Path,
    segment_bytes: u64,
) -> (Arc<Vhost>, Arc<Store>) {
    let budget = crate::config::DEFAULT_QUEUE_MEMORY_BUDGET_BYTES;
    open_with_budget(storage, dir, segment_bytes, budget)
}

fn open_with_budget(
    storage: Arc<dyn Storage>,
    dir: &Path,
    segment_bytes: u64,
    queue_memory_budget_bytes: u64,
) -> (Arc<Vhost>, Arc<Store>) {
    let options = StoreOptions {
        segment_bytes,
        queue_memory_budget_bytes,
    };
    let (store, recovered) = Store::open(storage, dir, options).unwrap();
    let vhost = Vhost::new("/", Some(store.clone()));
    vhost.restore(recovered);
    (vhost, store)
}

fn open(storage: &MemStorage) -> (Arc<Vhost>, Arc<Store>) {
    open_with(Arc::new(storage.clone()), &dir(), 1 << 20)
}

fn queue(v: &Vhost, name: &str, durable: bool, exclusive: bool) -> Arc<Queue> {
    let flags = QueueFlags {
        durable,
        exclusive,
        auto_delete: false,
    };
    v.declare_queue(&name.into(), false, flags, &FieldTable::default(), CONN)
        .unwrap()
        .0
}

fn message(body: &str, persistent: bool) -> Arc<Message> {
    let properties = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    Arc::new(Message {
        exchange: "".into(),
        routing_key: "q".into(),
        properties,
        body: Bytes::from(body.to_owned()),
    })
}

fn publish(q: &Arc<Queue>, bodies: &[&str]) {
    for b in bodies {
        assert_eq!(q.publish(message(b, true)), Enqueued::Accepted);
    }
}

/// Waits for everything sent so far to be synced.
fn sync(store: &Store) -> Result<(), Arc<str>> {
    let (tx, rx) = std::sync::mpsc::channel();
    store.after_sync(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv().unwrap()
}

fn ready(v: &Vhost, name: &str) -> Vec<(String, bool)> {
    v.queue(&name.into(), CONN).unwrap().ready_for_test()
}

fn fresh(bodies: &[&str]) -> Vec<(String, bool)> {
    bodies.iter().map(|b| (b.to_string(), false)).collect()
}

fn clean_restart_on(storage: Arc<dyn Storage>, dir: &Path) {
    {
        let (v, store) = open_with(storage.clone(), dir, 1 << 20);
        let q = queue(&v, "q", true, false);
        publish(&q, &["a", "b", "c"]);
        store.close();
    }
    let (v, _store) = open_with(storage, dir, 1 << 20);
    assert_eq!(ready(&v, "q"), fresh(&["a", "b", "c"]));
}

#[test]
fn clean_restart() {
    clean_restart_on(Arc::new(MemStorage::new()), &dir());
}

#[test]
fn clean_restart_on_the_file_system() {
    let dir = std::env::temp_dir().join(format!("amqp-store-clean-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    clean_restart_on(Arc::new(FileStorage), &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reopen_twice() {
    let mem = MemStorage::new();
    {
        let (v, store) = open(&mem);
        publish(&queue(&v, "q", true, false), &["a"]);
        store.close();
    }
    {
        let (v, store) = open(&mem);
        assert_eq!(ready(&v, "q"), fresh(&["a"]));
        publish(&v.queue(&"q".into(), CONN).unwrap(), &["b"]);
        store.close();
    }
    let (v, _store) = open(&mem);
    assert_eq!(ready(&v, "q"), fresh(&["a", "b"]));
}

fn segment_of(mem: &MemStorage) -> PathBuf {
    mem.paths(".seg").pop().expect("a segment exists")
}

#[test]
fn torn_tail() {
    let mem = MemStorage::new();
    {
        let (v, store) = open(&mem);
        publish(&queue(&v, "q", true, false), &["a", "b", "c"]);
        store.close();
    }
    // Cut the last record in half: a crash in the middle of a write.
    mem.edit(&segment_of(&mem), |bytes| bytes.truncate(bytes.len() - 5));
    for _ in 0..2 {
        let (v, store) = open(&mem);
        assert_eq!(ready(&v, "q"), fresh(&["a", "b"]));
        store.close();
    }
}

#[test]
fn garbage_appended() {
    let mem = MemStorage::new();
    {
        let (v, store) = open(&mem);
        publish(&queue(&v, "q", true, false), &["a", "b"]);
        store.close();
    }
    let seg = segment_of(&mem);
    mem.edit(&seg, |bytes| {
        bytes.extend_from_slice(b"M\xff\xff\x00\x00garbage after the end")
    });
    let (v, store) = open(&mem);
    assert_eq!(ready(&v, "q"), fresh(&["a", "b"]));
    store.close();
    let len = mem.restart().read(&seg).unwrap().len();
    assert!(
        !mem.read(&seg).unwrap().ends_with(b"end"),
        "the tail was cut ({len} bytes)"
    );
}

#[test]
fn flipped_byte() {
    let mem = MemStorage::new();
    {
        let (v, store) = open(&mem);
        publish(&queue(&v, "q", true, false), &["first", "second", "third"]);
        store.close();
    }
    let seg = segment_of(&mem);
    let bytes = mem.read(&seg).unwrap();
    let at = bytes.windows(6).position(|w| w == b"second").unwrap();
    mem.edit(&seg, |b| b[at] ^= 0x01);
    let (store, recovered) = Store::open(
        Arc::new(mem.clone()),
        &dir(),
        StoreOptions {
            segment_bytes: 1 << 20,
            queue_memory_budget_bytes: 1 << 20,
        },
    )
    .unwrap();
    assert_eq!(
        recovered.corrupt.len(),
        1,
        "reported once: {:?}",
        recovered.corrupt
    );
    let (queue, segment, offset) = &recovered.corrupt[0];
    assert_eq!(queue, "q");
    assert!(segment.ends_with(".seg"));
    assert!(
        *offset > 8 && *offset < at,
        "offset {offset} is where the damaged record starts"
    );
    let v = Vhost::new("/", Some(store));
    v.restore(recovered);
    assert_eq!(ready(&v, "q"), fresh(&["first", "third"]));
}

#[test]
fn unacked_before_crash_redelivered() {
    let mem = MemStorage::new();
    {
        let (v, store) = open(&mem);
        let q = queue(&v, "q", true, false);
        publish(&q, &["a", "b", "c"]);
        let (delivered, _) = q.get(false).unwrap();
        assert_eq!(&delivered.msg.body[..], b"a");
        sync(&store).unwrap();
    } // Crash: no close.
    let (v, _store) = open(&mem.restart());
    assert_eq!(
        ready(&v, "q"),
        vec![("a".into(), true), ("b".into(), false), ("c".into(), false)]
    );
}

#[test]
fn acked_before_crash_not_redelivered() {
    let mem = MemStorage::new();
    {
        let (v, store) = open(&mem);
        let q = queue(&v, "q", true, false);
        publish(&q, &["a", "b", "c"]);
        let (a, _) = q.get(false).unwrap();
        q.settle(&a);
        let _ = q.get(true).unwrap(); // "b", no-ack: settled at once.
        sync(&store).unwrap();
    }
    let (v, _store) = open(&mem.restart());
    assert_eq!(ready(&v, "q"), fresh(&["c"]));
}

#[test]
fn non_durable_things_gone() {
    let mem = MemStorage::new();
    {
        let (v, store) = open(&mem);
        let durable = ExchangeFlags {
            durable: true,
            auto_delete: false,
            internal: false,
        };
        let transient = ExchangeFlags {
            durable: false,
            ..durable
        };
        let none = FieldTable::default();
        v.declare_exchange(&"dx".into(), "topic", false, durable, &none)
            .unwrap();
        v.declare_exchange(&"tx".into(), "fanout", false, transient, &none)
            .unwrap();
        let q = queue(&v, "q", true, false);
        queue(&v, "tq", false, false);
        queue(&v, "xq", true, true);
        let bind = |x: &str, q: &str| {
            v.set_binding(
                true,
                &x.into(),
                Destination::Queue(q.into()),
                &"k.*".into(),
                &none,
                CONN,
            )
            .unwrap()
        };
        bind("dx", "q");
        bind("dx", "tq");
        bind("tx", "q");
        assert_eq!(q.publish(message("transient", false)), Enqueued::Accepted);
        publish(&q, &["persistent"]);
        sync(&store).unwrap();
    }
    let (v, _store) = open(&mem.restart());
    assert_eq!(v.queue_count(), 1, "only the durable, non-exclusive queue");
    assert_eq!(ready(&v, "q"), fresh(&["persistent"]));
    let route = v.route(&"dx".into(), &["k.x".into()], None).unwrap();
    let names: Vec<_> = route.queues.iter().map(|q| q.name.to_string()).collect();
    assert_eq!(
        names,
        ["q"],
        "the durable binding survived, the other did not"
    );
    assert!(
        v.route(&"tx".into(), &["k".into()], None).is_err(),
        "transient exchange gone"
    );
}

#[test]
fn crash_at_the_nth_sync_keeps_every_confirmed_message() {
    for n in 1..6 {
        let mem = MemStorage::new();
        let mut confirmed = Vec::new();
        {
            let (v, store) = open(&mem);
            let q = queue(&v, "q", true, false);
            mem.crash_at_sync(n);
            for i in 0..8 {
                let body = format!("m{i}");
                let _ = q.publish(message(&body, true));
                if sync(&store).is_ok() {
                    confirmed.push((body, false));
                }
            }
        }
        assert_eq!(confirmed.len() as u64, n - 1);
        let (v, _store) = open(&mem.restart());
        assert_eq!(ready(&v, "q"), confirmed, "crash at sync {n}");
    }
}

#[test]
fn failed_fsync_refuses_writes() {
    let mem = MemStorage::new();
    let (v, store) = open(&mem);
    let q = queue(&v, "q", true, false);
    mem.fail_sync_at(1);
    publish(&q, &["a"]);
    let failure = sync(&store).unwrap_err();
    assert!(failure.contains("fsync"), "{failure}");
    assert_eq!(q.publish(message("b", true)), Enqueued::StoreFailed);
    assert_eq!(
        q.publish(message("c", false)),
        Enqueued::Accepted,
        "transient is fine"
    );
    assert!(sync(&store).is_err(), "no confirm is ever honest again");
}

#[test]
fn settled_segments_are_deleted() {
    let mem = MemStorage::new();
    let (v, store) = open_with(Arc::new(mem.clone()), &dir(), 4096);
    let q = queue(&v, "q", true, false);
    let body = "x".repeat(1000);
    let mut most = 0;
    for _ in 0..200 {
        publish(&q, &[&body]);
        let (m, _) = q.get(false).unwrap();
        q.settle(&m);
        sync(&store).unwrap();
        most = most.max(mem.paths(".seg").len());
    }
    assert!(
        most <= 3,
        "a queue that keeps up holds at most a few segments, saw {most}"
    );
    drop(v);
    store.close();
    let (v, _store) = open(&mem);
    assert!(ready(&v, "q").is_empty());
}

#[test]
fn deleted_queue_log_is_removed() {
    let mem = MemStorage::new();
    let (v, store) = open(&mem);
    publish(&queue(&v, "q", true, false), &["a"]);
    sync(&store).unwrap();
    assert_eq!(mem.paths(".seg").len(), 1);
    v.delete_queue(&"q".into(), false, false, CONN).unwrap();
    sync(&store).unwrap();
    assert!(mem.paths(".seg").is_empty());
    store.close();
    let (v, _store) = open(&mem);
    assert_eq!(v.queue_count(), 0);
}

/// Recovery time for many queued messages on the real file system (a measurement):
/// `cargo test --release -p amqp-broker --lib recovery_time -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement"]
fn recovery_time_for_queued_messages() {
    let dir = std::env::temp_dir().join(format!("amqp-store-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let n = 1_000_000;
    let body = "x".repeat(1024);
    {
        let (v, store) = open_with(Arc::new(FileStorage), &dir, 64 << 20);
        let q = queue(&v, "q", true, false);
        for _ in 0..n {
            publish(&q, &[&body]);
        }
        store.close();
    }
    let started = std::time::Instant::now();
    let (v, _store) = open_with(Arc::new(FileStorage), &dir, 64 << 20);
    let took = started.elapsed();
    assert_eq!(v.queue(&"q".into(), CONN).unwrap().counts().messages, n);
    eprintln!("recovered {n} messages of 1 KiB in {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_old_unacked_message_no_longer_pins_the_log() {
    let mem = MemStorage::new();
    let (v, store) = open_with(Arc::new(mem.clone()), &dir(), 4096);
    let q = queue(&v, "q", true, false);
    publish(&q, &["old"]);
    let (_old, _) = q.get(false).unwrap(); // Delivered, never acked.
    let body = "x".repeat(1000);
    let mut most = 0;
    for _ in 0..200 {
        publish(&q, &[&body]);
        let (m, _) = q.get(false).unwrap();
        q.settle(&m);
        sync(&store).unwrap();
        most = most.max(mem.paths(".seg").len());
    }
    assert!(
        most <= 4,
        "compaction frees what one old message pinned (200 KiB in 4 KiB segments), saw {most} segments"
    );
    // After a crash the old message is all that is left, and it was delivered before.
    let (v, _store) = open(&mem.restart());
    assert_eq!(ready(&v, "q"), vec![("old".to_owned(), true)]);
}
