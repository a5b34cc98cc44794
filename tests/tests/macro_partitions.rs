//! `partitions = N` on `#[rabbit_listener]`, bound to a topic exchange: the app declares the
//! partition queues and their `<key>.<p>` bindings, and `convert_and_send_partitioned` reaches the
//! partition of each key, whose messages are handled in order. (The kill-a-process case is in
//! `patterns_partitions.rs`.) Names are fixed (under `macro.partitions.`); the queues are deleted
//! before and after.

mod common;

use std::collections::BTreeMap;

use amqp_core::testing::TestApp;
use amqp_core::{App, Partitions, rabbit_listener};
use common::within;
use lapin::options::QueueDeleteOptions;
use tests::process::Event;
use tests::{TestBroker, conformance};

const QUEUE: &str = "macro.partitions.accounts";
const EXCHANGE: &str = "macro.partitions";
const KEYS: u32 = 10;
const PER_KEY: u32 = 20;

#[rabbit_listener(
    queue = "macro.partitions.accounts",
    exchange = "macro.partitions",
    exchange_type = "topic",
    key = "account.*",
    durable = false,
    auto_delete = true,
    partitions = 3,
    prefetch = 10
)]
async fn account_event(event: Event) {
    let _ = event;
}

async fn delete_partitions(b: &TestBroker) {
    let (_c, ch) = common::open(b).await;
    for queue in Partitions::new(3).unwrap().queue_names(QUEUE) {
        within(
            "queue.delete",
            ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .ok();
    }
}

async fn partitions_key(b: TestBroker) {
    delete_partitions(&b).await;
    let app = within(
        "the app to start",
        TestApp::start_with(App::new().url(b.url()).listeners(["account_event"])),
    )
    .await
    .expect("start");
    let senders: Vec<_> = (0..KEYS)
        .map(|k| {
            let template = app.template().clone();
            tokio::spawn(async move {
                let key = format!("acct-{k}");
                for seq in 0..PER_KEY {
                    let kind = if seq % 2 == 0 { "deposit" } else { "withdraw" };
                    let event = Event {
                        key: key.clone(),
                        seq,
                    };
                    template
                        .convert_and_send_partitioned(
                            EXCHANGE,
                            &format!("account.{kind}"),
                            3,
                            &key,
                            &event,
                        )
                        .await
                        .expect("partitioned send");
                }
            })
        })
        .collect();
    for s in senders {
        s.await.expect("sender");
    }
    let calls = app
        .calls("account_event", (KEYS * PER_KEY) as usize, common::WAIT)
        .await
        .expect("every event handled");
    let partitions = Partitions::new(3).unwrap();
    let mut per_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for call in &calls {
        let event: Event = call.payload().expect("an event");
        let p = partitions.of(&event.key);
        assert_eq!(call.metadata.queue, Partitions::queue_name(QUEUE, p));
        assert!(call.metadata.routing_key.ends_with(&format!(".{p}")));
        per_key.entry(event.key).or_default().push(event.seq);
    }
    let in_order: Vec<u32> = (0..PER_KEY).collect();
    for (key, seqs) in &per_key {
        assert_eq!(seqs, &in_order, "{key} handled in order");
    }
    assert_eq!(per_key.len(), KEYS as usize);
    app.shutdown().await;
    delete_partitions(&b).await;
}

conformance!(partitions_key);
