//! RabbitMQ's routing extensions: alternate exchanges (`alternate-exchange`) and sender-selected
//! distribution (`CC` and `BCC` headers).

mod common;

use common::{drain, fresh_queue, get_eventually_delivery, open, publish, publish_with, within};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use tests::{TestBroker, conformance, unique};

async fn exchange(ch: &Channel, kind: ExchangeKind, args: FieldTable) -> String {
    let name = unique("xr");
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.as_str().into(),
            kind,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .expect("exchange.declare");
    name
}

async fn bind(ch: &Channel, q: &str, x: &str, key: &str) {
    within(
        "queue.bind",
        ch.queue_bind(
            q.into(),
            x.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
}

/// A message the exchange cannot route goes to its alternate exchange; a routable one does not.
async fn unroutable_messages_go_to_the_alternate_exchange(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let ae = exchange(&ch, ExchangeKind::Fanout, FieldTable::default()).await;
    let unrouted = fresh_queue(&ch, "xr.unrouted").await;
    bind(&ch, &unrouted, &ae, "").await;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(LongString::from(ae.as_str())),
    );
    let x = exchange(&ch, ExchangeKind::Direct, args).await;
    let routed = fresh_queue(&ch, "xr.routed").await;
    bind(&ch, &routed, &x, "known").await;
    publish(&ch, &x, "known", b"to routed").await;
    publish(&ch, &x, "unknown", b"to alternate").await;
    let d = get_eventually_delivery(&ch, &unrouted).await;
    assert_eq!(d.data, b"to alternate");
    assert_eq!(d.exchange.as_str(), x, "the original exchange is reported");
    assert_eq!(drain(&ch, &routed).await, [b"to routed".to_vec()]);
    assert!(drain(&ch, &unrouted).await.is_empty());
}

fn keys(ks: &[&str]) -> AMQPValue {
    let mut a = FieldArray::default();
    for k in ks {
        a.push(AMQPValue::LongString(LongString::from(*k)));
    }
    AMQPValue::FieldArray(a)
}

/// `CC` and `BCC` add routing keys; `BCC` is removed from the delivered message, `CC` kept.
async fn cc_and_bcc_add_routing_keys(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let x = exchange(&ch, ExchangeKind::Direct, FieldTable::default()).await;
    let (main, cc, bcc) = (
        fresh_queue(&ch, "xr.main").await,
        fresh_queue(&ch, "xr.cc").await,
        fresh_queue(&ch, "xr.bcc").await,
    );
    bind(&ch, &main, &x, "main").await;
    bind(&ch, &cc, &x, "cc").await;
    bind(&ch, &bcc, &x, "bcc").await;
    let mut headers = FieldTable::default();
    headers.insert("CC".into(), keys(&["cc"]));
    headers.insert("BCC".into(), keys(&["bcc"]));
    publish_with(
        &ch,
        &x,
        "main",
        b"m",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    for q in [&main, &cc, &bcc] {
        let d = get_eventually_delivery(&ch, q).await;
        assert_eq!(d.routing_key.as_str(), "main", "{q}");
        let h = d.properties.headers().clone().expect("headers");
        assert!(h.inner().contains_key("CC"), "{q}: CC stays");
        assert!(!h.inner().contains_key("BCC"), "{q}: BCC is removed");
    }
}

conformance!(
    unroutable_messages_go_to_the_alternate_exchange,
    cc_and_bcc_add_routing_keys,
);
