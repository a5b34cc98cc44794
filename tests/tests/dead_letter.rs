//! Dead-lettering of rejected messages: `x-dead-letter-exchange`, `x-dead-letter-routing-key`,
//! and the `x-death` history in the headers.

mod common;

use common::{fresh_queue, get, get_eventually, open, publish, within};
use lapin::options::{
    BasicNackOptions, BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use tests::{TestBroker, conformance, unique};

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn as_text(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A direct exchange with one exclusive queue bound by `key`; returns (exchange, queue).
async fn dead_letter_target(ch: &Channel, key: &str) -> (String, String) {
    let dlx = unique("dlx");
    within(
        "exchange.declare",
        ch.exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
    let dlq = fresh_queue(ch, "dlq").await;
    within(
        "queue.bind",
        ch.queue_bind(
            dlq.as_str().into(),
            dlx.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
    (dlx, dlq)
}

async fn queue_named(ch: &Channel, q: &str, args: FieldTable) {
    let opts = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    within("queue.declare", ch.queue_declare(q.into(), opts, args))
        .await
        .expect("queue.declare");
}

/// A message rejected without requeue goes to the dead-letter exchange with its own routing key
/// and an `x-death` entry; one rejected with requeue does not.
async fn rejected_messages_are_dead_lettered(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    // Published through the default exchange, the routing key is the source queue's name, which
    // the dead-letter queue is bound with.
    let q = unique("dl.source");
    let (dlx, dlq) = dead_letter_target(&ch, &q).await;
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), text(&dlx));
    queue_named(&ch, &q, args).await;
    publish(&ch, "", &q, b"requeued").await;
    let d = get(&ch, &q).await.expect("a message");
    within(
        "reject",
        d.acker.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let d = get(&ch, &q).await.expect("the requeued message is back");
    assert!(d.redelivered);
    within(
        "reject",
        d.acker.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("reject");

    let body = get_eventually(&ch, &dlq).await;
    assert_eq!(body, b"requeued");
    assert!(get(&ch, &q).await.is_none(), "the source queue is empty");
}

/// `x-dead-letter-routing-key` replaces the routing key; the `x-death` entry records the queue,
/// the reason, the original exchange and routing key, and a count that grows when the message
/// dies in the same queue again.
async fn dead_letter_routing_key_and_x_death(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let (dlx, dlq) = dead_letter_target(&ch, "dead").await;
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), text(&dlx));
    args.insert("x-dead-letter-routing-key".into(), text("dead"));
    let q = unique("dl.source");
    queue_named(&ch, &q, args).await;
    publish(&ch, "", &q, b"m").await;
    let d = get(&ch, &q).await.expect("a message");
    within(
        "nack",
        d.acker.nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        }),
    )
    .await
    .expect("nack");

    let dead = get_eventually_delivery(&ch, &dlq).await;
    assert_eq!(dead.exchange.as_str(), dlx);
    assert_eq!(dead.routing_key.as_str(), "dead");
    let headers = dead.properties.headers().clone().expect("headers");
    let h = headers.inner();
    assert_eq!(
        as_text(h.get("x-first-death-reason")).as_deref(),
        Some("rejected")
    );
    assert_eq!(
        as_text(h.get("x-first-death-queue")).as_deref(),
        Some(q.as_str())
    );
    assert_eq!(
        as_text(h.get("x-first-death-exchange")).as_deref(),
        Some("")
    );
    let Some(AMQPValue::FieldArray(deaths)) = h.get("x-death") else {
        panic!("x-death: {h:?}")
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("{deaths:?}")
    };
    let d = death.inner();
    assert_eq!(as_text(d.get("queue")).as_deref(), Some(q.as_str()));
    assert_eq!(as_text(d.get("reason")).as_deref(), Some("rejected"));
    assert_eq!(as_text(d.get("exchange")).as_deref(), Some(""));
    assert!(
        matches!(d.get("count"), Some(AMQPValue::LongLongInt(1))),
        "count: {:?}",
        d.get("count")
    );
    let Some(AMQPValue::FieldArray(keys)) = d.get("routing-keys") else {
        panic!("routing-keys: {d:?}")
    };
    assert_eq!(
        keys.as_slice()
            .iter()
            .map(|k| as_text(Some(k)))
            .collect::<Vec<_>>(),
        [Some(q.clone())]
    );

    // Send it back into the source queue and reject it again: the same entry counts 2.
    let back = lapin::BasicProperties::default().with_headers(headers.clone());
    common::publish_with(&ch, "", &q, b"m", back).await;
    let d = get_eventually_delivery(&ch, &q).await;
    within(
        "reject",
        d.acker.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("reject");
    let again = get_eventually_delivery(&ch, &dlq).await;
    let h = again.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else {
        panic!()
    };
    assert_eq!(deaths.as_slice().len(), 1, "one entry per queue and reason");
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!()
    };
    assert!(
        matches!(death.inner().get("count"), Some(AMQPValue::LongLongInt(2))),
        "{death:?}"
    );
}

async fn get_eventually_delivery(ch: &Channel, q: &str) -> lapin::message::Delivery {
    within("a message", async {
        loop {
            if let Some(d) = get(ch, q).await {
                break d;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Without a dead-letter exchange, a rejected message is simply gone.
async fn rejected_without_dead_letter_exchange_is_dropped(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "dl.none").await;
    publish(&ch, "", &q, b"gone").await;
    let d = get_eventually_delivery(&ch, &q).await;
    within(
        "reject",
        d.acker.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("reject");
    assert!(get(&ch, &q).await.is_none());
}

conformance!(
    rejected_messages_are_dead_lettered,
    dead_letter_routing_key_and_x_death,
    rejected_without_dead_letter_exchange_is_dropped,
);

/// A dead-letter routing key without a dead-letter exchange is refused (406), as RabbitMQ does.
async fn dead_letter_routing_key_needs_an_exchange(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-routing-key".into(), text("dead"));
    let res = within(
        "queue.declare",
        ch.queue_declare(
            unique("dl.nodlx").as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await;
    common::assert_code(res, 406);
}

conformance!(dead_letter_routing_key_needs_an_exchange);

/// A queue with `x-max-length` (`drop-head`) dead-letters the messages it drops, with reason
/// `maxlen`.
async fn dropped_heads_are_dead_lettered(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let dlq = fresh_queue(&ch, "dl.maxlen.target").await;
    let q = unique("dl.maxlen");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(&dlq));
    queue_named(&ch, &q, args).await;
    publish(&ch, "", &q, b"first").await;
    publish(&ch, "", &q, b"second").await;
    let dead = get_eventually_delivery(&ch, &dlq).await;
    assert_eq!(dead.data, b"first");
    let h = dead.properties.headers().clone().expect("headers");
    assert_eq!(
        as_text(h.inner().get("x-first-death-reason")).as_deref(),
        Some("maxlen")
    );
    assert_eq!(
        get(&ch, &q).await.expect("the newest stays").data,
        b"second"
    );
}

/// `reject-publish-dlx`: the refused message is nacked to a confirming publisher and
/// dead-lettered (reason `maxlen`, as RabbitMQ writes it).
async fn reject_publish_dlx_dead_letters_the_refused(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    within(
        "confirm.select",
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let dlq = fresh_queue(&ch, "dl.rpdlx.target").await;
    let q = unique("dl.rpdlx");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert("x-overflow".into(), text("reject-publish-dlx"));
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(&dlq));
    queue_named(&ch, &q, args).await;
    for (body, ack) in [(&b"kept"[..], true), (&b"refused"[..], false)] {
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                Default::default(),
                body,
                Default::default(),
            ),
        )
        .await
        .expect("publish");
        let c = within("confirm", confirm).await.expect("confirm");
        assert_eq!(c.is_ack(), ack, "{}", String::from_utf8_lossy(body));
    }
    let dead = get_eventually_delivery(&ch, &dlq).await;
    assert_eq!(dead.data, b"refused");
    let h = dead.properties.headers().clone().expect("headers");
    assert_eq!(
        as_text(h.inner().get("x-first-death-reason")).as_deref(),
        Some("maxlen")
    );
    assert_eq!(get(&ch, &q).await.expect("kept").data, b"kept");
}

/// A rejected message may come back to its queue through the dead-letter exchange (a rejection
/// breaks a cycle): it is not dropped.
async fn a_rejection_cycle_is_allowed(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = unique("dl.rejectcycle");
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), text(""));
    queue_named(&ch, &q, args).await;
    publish(&ch, "", &q, b"again").await;
    let d = get_eventually_delivery(&ch, &q).await;
    within(
        "reject",
        d.acker.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("reject");
    let back = get_eventually_delivery(&ch, &q).await;
    assert_eq!(back.data, b"again");
    assert!(!back.redelivered, "a new message, not a redelivery");
}

conformance!(
    dropped_heads_are_dead_lettered,
    reject_publish_dlx_dead_letters_the_refused,
    a_rejection_cycle_is_allowed,
);
