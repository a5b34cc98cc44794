//! Crash scenarios for persistent delayed messages, on [`MemStorage`] (a crash keeps only synced
//! bytes): a confirmed delayed message is never lost, whichever sync the crash hits while it is
//! routed when due (the queue's record is synced before the delayed log's `A` record).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;

use super::io::MemStorage;
use super::{Store, StoreOptions};
use crate::exchange::Destination;
use crate::message::Message;
use crate::vhost::{Delay, ExchangeFlags, QueueFlags, Vhost};

const CONN: u64 = 1;

fn open(mem: &MemStorage) -> (Arc<Vhost>, Arc<Store>) {
    let options = StoreOptions {
        segment_bytes: 1 << 20,
        queue_memory_budget_bytes: crate::DEFAULT_QUEUE_MEMORY_BUDGET_BYTES,
    };
    let (store, recovered) =
        Store::open(Arc::new(mem.clone()), &PathBuf::from("/data"), options).unwrap();
    let vhost = Vhost::new("/", Some(store.clone()));
    vhost.restore(recovered);
    (vhost, store)
}

/// A durable delayed exchange `dx` (routing as `direct`) with the durable queue `q` bound by `k`.
fn topology(v: &Vhost) {
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("direct".into()),
    );
    let durable = ExchangeFlags {
        durable: true,
        auto_delete: false,
        internal: false,
    };
    v.declare_exchange(&"dx".into(), "x-delayed-message", false, durable, &args)
        .unwrap();
    let flags = QueueFlags {
        durable: true,
        exclusive: false,
        auto_delete: false,
    };
    v.declare_queue(&"q".into(), false, flags, &FieldTable::default(), CONN)
        .unwrap();
    let none = FieldTable::default();
    v.set_binding(
        true,
        &"dx".into(),
        Destination::Queue("q".into()),
        &"k".into(),
        &none,
        CONN,
    )
    .unwrap();
}

fn sync(store: &Store) -> Result<(), Arc<str>> {
    let (tx, rx) = std::sync::mpsc::channel();
    store.after_sync(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv().unwrap()
}

/// Messages ready in `q` once `at_least` are there (or after a second).
async fn ready(v: &Vhost, at_least: usize) -> usize {
    let q = v.queue(&"q".into(), CONN).unwrap();
    for _ in 0..100 {
        if q.counts().messages as usize >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    q.counts().messages as usize
}

#[tokio::test]
async fn a_crash_at_any_sync_while_a_delayed_message_is_routed_never_loses_it() {
    for n in 1..=4 {
        let mem = MemStorage::new();
        {
            let (v, store) = open(&mem);
            topology(&v);
            let msg = Message {
                exchange: "dx".into(),
                routing_key: "k".into(),
                properties: BasicProperties::default().with_delivery_mode(2),
                body: Bytes::from_static(b"later"),
            };
            let delay = Delay {
                delay: Duration::from_millis(50),
                durable: true,
            };
            assert_eq!(v.schedule_delayed(&["k".into()], &msg, delay), Ok(true));
            sync(&store).expect("the confirm: the delayed message is on disk");
            mem.crash_at_sync(n);
            assert_eq!(ready(&v, 1).await, 1, "routed when due");
            let _ = sync(&store);
        }
        let (v, _store) = open(&mem.restart());
        assert!(
            ready(&v, 1).await >= 1,
            "crash at sync {n}: the delayed message was lost"
        );
    }
}

#[tokio::test]
async fn a_delayed_message_routed_before_a_restart_is_not_routed_again_after_it() {
    let mem = MemStorage::new();
    {
        let (v, store) = open(&mem);
        topology(&v);
        let msg = Message {
            exchange: "dx".into(),
            routing_key: "k".into(),
            properties: BasicProperties::default().with_delivery_mode(2),
            body: Bytes::from_static(b"once"),
        };
        let delay = Delay {
            delay: Duration::from_millis(20),
            durable: true,
        };
        assert_eq!(v.schedule_delayed(&["k".into()], &msg, delay), Ok(true));
        sync(&store).unwrap();
        assert_eq!(ready(&v, 1).await, 1, "routed when due");
        // The routing (queue record) and the settled `A` record of the delayed log.
        sync(&store).unwrap();
        sync(&store).unwrap();
    }
    let (v, _store) = open(&mem.restart());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ready(&v, 2).await,
        1,
        "the message routed before the restart is in the queue once, not routed again"
    );
}
