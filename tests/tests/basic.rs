//! The basic class: QoS, consumers, publishing, get, acknowledgements, redelivery, and the
//! integrity of bodies and properties.

mod common;

use std::time::Duration;

use common::{
    Errors, QUIET, assert_code, assert_no_delivery, code, consume, fresh_queue, get, get_body,
    next, open, publish, publish_with, within,
};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tests::{TestBroker, conformance, unique};

/// Publishes `n` messages "0".."n-1" and waits until the broker has confirmed them all.
async fn fill(conn: &Connection, queue: &str, n: usize) {
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for i in 0..n {
        publish(&ch, "", queue, format!("{i}").as_bytes()).await;
    }
    let returned = within("confirms", ch.wait_for_confirms())
        .await
        .expect("confirms");
    assert!(returned.is_empty());
    ch.close(200, "filled".into()).await.expect("close");
}

/// Everything `consumer` receives until it has been quiet for [`QUIET`].
async fn collect(consumer: &mut Consumer) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(QUIET, consumer.next()).await {
        out.push(item.expect("delivery"));
    }
    out
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).expect("utf8 body")
}

async fn message_count(ch: &Channel, queue: &str) -> u32 {
    within(
        "passive declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare")
    .message_count()
}

async fn ack(d: &Delivery, multiple: bool) {
    within("basic.ack", d.ack(BasicAckOptions { multiple }))
        .await
        .expect("basic.ack");
}

async fn prefetch_limits_each_consumer(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q1 = fresh_queue(&ch, "basic.qos1").await;
    let q2 = fresh_queue(&ch, "basic.qos2").await;
    fill(&conn, &q1, 5).await;
    fill(&conn, &q2, 5).await;
    within(
        "basic.qos",
        ch.basic_qos(2, BasicQosOptions { global: false }),
    )
    .await
    .expect("qos");
    let mut c1 = consume(&ch, &q1, "", BasicConsumeOptions::default()).await;
    let mut c2 = consume(&ch, &q2, "", BasicConsumeOptions::default()).await;
    let got1 = collect(&mut c1).await;
    let got2 = collect(&mut c2).await;
    assert_eq!(
        (got1.len(), got2.len()),
        (2, 2),
        "prefetch 2 applies to each consumer"
    );
    // Acking one lets exactly one more through.
    ack(&got1[0], false).await;
    let more = collect(&mut c1).await;
    assert_eq!(more.len(), 1);
    assert_eq!(body(&more[0]), "2", "deliveries are in queue order");
    assert_no_delivery(&mut c2).await;
    // Acking several with `multiple` frees that many slots.
    ack(&got2[1], true).await;
    assert_eq!(collect(&mut c2).await.len(), 2);
}

async fn prefetch_global_is_shared_by_the_channel(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q1 = fresh_queue(&ch, "basic.gqos1").await;
    let q2 = fresh_queue(&ch, "basic.gqos2").await;
    fill(&conn, &q1, 5).await;
    fill(&conn, &q2, 5).await;
    within(
        "basic.qos",
        ch.basic_qos(3, BasicQosOptions { global: true }),
    )
    .await
    .expect("qos");
    let mut c1 = consume(&ch, &q1, "", BasicConsumeOptions::default()).await;
    let mut c2 = consume(&ch, &q2, "", BasicConsumeOptions::default()).await;
    let got1 = collect(&mut c1).await;
    let got2 = collect(&mut c2).await;
    assert_eq!(
        got1.len() + got2.len(),
        3,
        "a global prefetch of 3 is shared across the channel's consumers"
    );
    // Acking everything lets the rest through, still at most 3 at a time.
    let last = got1
        .iter()
        .chain(&got2)
        .map(|d| d.delivery_tag)
        .max()
        .expect("some");
    within(
        "basic.ack",
        ch.basic_ack(last, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack");
    let again = collect(&mut c1).await.len() + collect(&mut c2).await.len();
    assert_eq!(again, 3);
}

/// Prefetch 0 means no limit.
async fn prefetch_zero_is_unlimited(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.qos0").await;
    fill(&conn, &q, 20).await;
    ch.basic_qos(0, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
    assert_eq!(collect(&mut c).await.len(), 20);
}

async fn consumer_tags(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.tags").await;
    let generated = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
    assert!(
        generated.tag().as_str().starts_with("amq.ctag-"),
        "server-generated tag: {}",
        generated.tag()
    );
    let other = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
    assert_ne!(other.tag(), generated.tag());
    let explicit = consume(&ch, &q, "my-tag", BasicConsumeOptions::default()).await;
    assert_eq!(explicit.tag().as_str(), "my-tag");
    // The same explicit tag is fine on another channel.
    let ch2 = _conn.create_channel().await.expect("channel");
    let again = consume(&ch2, &q, "my-tag", BasicConsumeOptions::default()).await;
    assert_eq!(again.tag().as_str(), "my-tag");
}

async fn duplicate_consumer_tag_is_530(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.dup").await;
    let q2 = fresh_queue(&ch, "basic.dup2").await;
    let _c = consume(&ch, &q, "taken", BasicConsumeOptions::default()).await;
    let mut errors = Errors::watch(&conn);
    let res = within(
        "basic.consume",
        ch.basic_consume(
            q2.as_str().into(),
            "taken".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::NOT_ALLOWED);
    assert_eq!(errors.next_code().await, code::NOT_ALLOWED);
}

async fn consume_from_missing_queue_is_404(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let res = within(
        "basic.consume",
        ch.basic_consume(
            unique("q.missing").into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::NOT_FOUND);
}

async fn exclusive_consumer_conflicts_are_403(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.excl").await;
    let _c = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
    let ch2 = conn.create_channel().await.expect("channel");
    let res = within(
        "basic.consume",
        ch2.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::ACCESS_REFUSED);

    let q2 = fresh_queue(&ch, "basic.excl2").await;
    let _e = consume(
        &ch,
        &q2,
        "",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let ch3 = conn.create_channel().await.expect("channel");
    let res = within(
        "basic.consume",
        ch3.basic_consume(
            q2.as_str().into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::ACCESS_REFUSED);
}

async fn cancel_stops_deliveries(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.cancel").await;
    let mut c = consume(
        &ch,
        &q,
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    publish(&ch, "", &q, b"before").await;
    assert_eq!(next(&mut c).await.data, b"before");
    within(
        "basic.cancel",
        ch.basic_cancel(c.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    assert!(
        within("stream end", c.next()).await.is_none(),
        "the consumer stream ends after cancel"
    );
    fill(&conn, &q, 1).await;
    assert_eq!(
        message_count(&ch, &q).await,
        1,
        "a message published after cancel stays in the queue"
    );
}

async fn cancel_unknown_tag_is_ok(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    within(
        "basic.cancel",
        ch.basic_cancel("never-consumed".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel of an unknown tag");
    assert!(ch.status().connected());
}

async fn mandatory_unroutable_is_returned_312(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let key = unique("nowhere");
    let props = BasicProperties::default().with_message_id("m1".into());
    let confirm = within(
        "publish",
        ch.basic_publish(
            "amq.direct".into(),
            key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"bounce",
            props,
        ),
    )
    .await
    .expect("publish");
    let confirmation = within("confirm", confirm).await.expect("confirm");
    assert!(
        confirmation.is_ack(),
        "an unroutable message is still acked"
    );
    let returned = confirmation.take_message().expect("a basic.return");
    assert_eq!(returned.reply_code, code::NO_ROUTE);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(returned.delivery.routing_key.as_str(), key);
    assert_eq!(returned.delivery.data, b"bounce");
    assert_eq!(
        returned
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m1")
    );

    // Routable mandatory and unroutable non-mandatory messages are not returned.
    let q = fresh_queue(&ch, "basic.mand").await;
    let c = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"ok",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    let conf = within("confirm", c).await.expect("confirm");
    assert!(conf.is_ack());
    assert!(conf.take_message().is_none());
    let c = ch
        .basic_publish(
            "amq.direct".into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            b"dropped",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    let conf = within("confirm", c).await.expect("confirm");
    assert!(conf.is_ack());
    assert!(conf.take_message().is_none());
}

async fn get_and_get_empty(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.get").await;
    assert!(get(&ch, &q).await.is_none(), "get-empty on an empty queue");
    fill(&conn, &q, 3).await;
    let m = within(
        "basic.get",
        ch.basic_get(q.as_str().into(), BasicGetOptions::default()),
    )
    .await
    .expect("get")
    .expect("get-ok");
    assert_eq!(m.delivery.data, b"0");
    assert_eq!(
        m.message_count, 2,
        "get-ok carries the count of messages left"
    );
    assert!(!m.delivery.redelivered);
    assert_eq!(m.delivery.exchange.as_str(), "");
    assert_eq!(m.delivery.routing_key.as_str(), q);
    ack(&m.delivery, false).await;
    assert_eq!(get_body(&ch, &q).await.as_deref(), Some(&b"1"[..]));
    assert_eq!(get_body(&ch, &q).await.as_deref(), Some(&b"2"[..]));
    assert!(get(&ch, &q).await.is_none());
}

async fn get_from_missing_queue_is_404(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    assert_code(
        within(
            "basic.get",
            ch.basic_get(unique("q.missing").into(), BasicGetOptions::default()),
        )
        .await,
        code::NOT_FOUND,
    );
}

/// Delivery tags start at 1 on each channel and count up across gets and consumers.
async fn delivery_tags_are_per_channel(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.dtag").await;
    fill(&conn, &q, 4).await;
    let a = conn.create_channel().await.expect("channel");
    let bch = conn.create_channel().await.expect("channel");
    assert_eq!(get(&a, &q).await.expect("msg").delivery_tag, 1);
    assert_eq!(get(&bch, &q).await.expect("msg").delivery_tag, 1);
    assert_eq!(get(&a, &q).await.expect("msg").delivery_tag, 2);
    let mut c = consume(&a, &q, "", BasicConsumeOptions::default()).await;
    assert_eq!(next(&mut c).await.delivery_tag, 3);
}

async fn ack_multiple(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.ackm").await;
    fill(&conn, &q, 4).await;
    let cch = conn.create_channel().await.expect("channel");
    let mut c = consume(&cch, &q, "", BasicConsumeOptions::default()).await;
    let got: Vec<Delivery> = vec![
        next(&mut c).await,
        next(&mut c).await,
        next(&mut c).await,
        next(&mut c).await,
    ];
    ack(&got[2], true).await; // acks 1..=3
    cch.close(200, "bye".into()).await.expect("close"); // requeues 4 only
    assert_eq!(get_body(&ch, &q).await.as_deref(), Some(&b"3"[..]));
    assert!(get(&ch, &q).await.is_none());
}

async fn ack_removes_message(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.ack").await;
    fill(&conn, &q, 1).await;
    let cch = conn.create_channel().await.expect("channel");
    let d = get(&cch, &q).await.expect("msg");
    ack(&d, false).await;
    cch.close(200, "bye".into()).await.expect("close");
    assert!(get(&ch, &q).await.is_none());
}

async fn nack_multiple_with_requeue(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.nack").await;
    fill(&conn, &q, 3).await;
    let mut c = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
    let first: Vec<Delivery> = vec![next(&mut c).await, next(&mut c).await, next(&mut c).await];
    assert!(first.iter().all(|d| !d.redelivered));
    within(
        "basic.nack",
        first[2].nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        }),
    )
    .await
    .expect("nack");
    let again: Vec<Delivery> = vec![next(&mut c).await, next(&mut c).await, next(&mut c).await];
    assert!(
        again.iter().all(|d| d.redelivered),
        "requeued messages come back redelivered"
    );
    let mut bodies: Vec<String> = again.iter().map(body).collect();
    bodies.sort();
    assert_eq!(bodies, ["0", "1", "2"]);
    assert_eq!(
        body(&again[0]),
        "0",
        "requeued messages keep their queue position"
    );
}

async fn nack_without_requeue_drops(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.nackdrop").await;
    fill(&conn, &q, 2).await;
    let a = get(&ch, &q).await.expect("msg");
    let _b2 = get(&ch, &q).await.expect("msg");
    within(
        "basic.nack",
        ch.basic_nack(
            _b2.delivery_tag,
            BasicNackOptions {
                multiple: true,
                requeue: false,
            },
        ),
    )
    .await
    .expect("nack");
    drop(a);
    assert!(get(&ch, &q).await.is_none());
    ch.close(200, "bye".into()).await.expect("close");
    let ch2 = conn.create_channel().await.expect("channel");
    assert!(
        get(&ch2, &q).await.is_none(),
        "nothing left unacked to requeue"
    );
}

async fn reject_with_requeue_redelivers(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.reject").await;
    fill(&conn, &q, 1).await;
    let d = get(&ch, &q).await.expect("msg");
    assert!(!d.redelivered);
    within(
        "basic.reject",
        d.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let again = get(&ch, &q).await.expect("requeued");
    assert!(again.redelivered);
    assert_eq!(again.data, b"0");
}

async fn reject_without_requeue_drops(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.rejectdrop").await;
    fill(&conn, &q, 1).await;
    let d = get(&ch, &q).await.expect("msg");
    within(
        "basic.reject",
        d.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("reject");
    assert!(get(&ch, &q).await.is_none());
    assert_eq!(message_count(&ch, &q).await, 0);
}

async fn recover_requeues_unacked(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.recover").await;
    fill(&conn, &q, 2).await;
    let mut c = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
    let first = [next(&mut c).await, next(&mut c).await];
    ack(&first[0], false).await;
    within(
        "basic.recover",
        ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .expect("recover");
    let again = next(&mut c).await;
    assert_eq!(again.data, b"1");
    assert!(again.redelivered);
    assert_no_delivery(&mut c).await;
}

async fn round_robin_between_consumers(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.rr").await;
    let ch1 = conn.create_channel().await.expect("channel");
    let ch2 = conn.create_channel().await.expect("channel");
    let mut c1 = consume(
        &ch1,
        &q,
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    let mut c2 = consume(
        &ch2,
        &q,
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    fill(&conn, &q, 10).await;
    let got1: Vec<String> = collect(&mut c1).await.iter().map(body).collect();
    let got2: Vec<String> = collect(&mut c2).await.iter().map(body).collect();
    assert_eq!(
        (got1.len(), got2.len()),
        (5, 5),
        "round robin: {got1:?} / {got2:?}"
    );
    let odd_even = |v: &[String]| {
        v.iter()
            .map(|s| s.parse::<u32>().expect("number") % 2)
            .collect::<Vec<_>>()
    };
    let (p1, p2) = (odd_even(&got1), odd_even(&got2));
    assert!(
        p1.iter().all(|&p| p == p1[0]) && p2.iter().all(|&p| p == p2[0]) && p1[0] != p2[0],
        "alternating: {got1:?} / {got2:?}"
    );
}

async fn unacked_requeued_when_channel_closes(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.reqch").await;
    fill(&conn, &q, 2).await;
    let cch = conn.create_channel().await.expect("channel");
    let mut c = consume(&cch, &q, "", BasicConsumeOptions::default()).await;
    let _d = [next(&mut c).await, next(&mut c).await];
    assert_eq!(message_count(&ch, &q).await, 0);
    cch.close(200, "bye".into()).await.expect("close");
    let a = get(&ch, &q).await.expect("requeued");
    let b2 = get(&ch, &q).await.expect("requeued");
    assert_eq!(
        (a.data.as_slice(), b2.data.as_slice()),
        (&b"0"[..], &b"1"[..])
    );
    assert!(a.redelivered && b2.redelivered);
}

async fn unacked_requeued_when_connection_closes(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = common::shared_queue(&ch, "basic.reqconn").await;
    fill(&conn, &q, 1).await;
    let (other, och) = open(&b).await;
    let d = get(&och, &q).await.expect("msg");
    assert!(!d.redelivered);
    other.close(200, "bye".into()).await.expect("close");
    let again = within("requeue", async {
        loop {
            if let Some(d) = get(&ch, &q).await {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(again.redelivered);
    assert_eq!(again.data, b"0");
    ack(&again, false).await;
    common::delete_queue(&ch, &q).await;
}

async fn queue_delete_cancels_consumers(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.delcancel").await;
    let cch = conn.create_channel().await.expect("channel");
    let mut c = consume(&cch, &q, "", BasicConsumeOptions::default()).await;
    within(
        "queue.delete",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    let end = within("basic.cancel from the server", c.next()).await;
    assert!(
        end.is_none(),
        "consumer stream ends on server-sent basic.cancel, got {end:?}"
    );
    assert!(
        cch.status().connected(),
        "the consumer's channel stays open"
    );
}

async fn ack_unknown_delivery_tag_is_406(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let mut errors = Errors::watch(&conn);
    let _ = ch.basic_ack(42, BasicAckOptions::default()).await;
    assert_eq!(errors.next_code().await, code::PRECONDITION_FAILED);
    within("channel to close", async {
        while ch.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(conn.status().connected());
}

async fn double_ack_is_406(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.dblack").await;
    fill(&conn, &q, 1).await;
    let d = get(&ch, &q).await.expect("msg");
    let mut errors = Errors::watch(&conn);
    ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
        .await
        .expect("first ack");
    let _ = ch
        .basic_ack(d.delivery_tag, BasicAckOptions::default())
        .await;
    assert_eq!(errors.next_code().await, code::PRECONDITION_FAILED);
}

async fn no_ack_consumer_removes_messages(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.noack").await;
    fill(&conn, &q, 3).await;
    let cch = conn.create_channel().await.expect("channel");
    let mut c = consume(
        &cch,
        &q,
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(collect(&mut c).await.len(), 3);
    cch.close(200, "bye".into()).await.expect("close");
    assert_eq!(
        message_count(&ch, &q).await,
        0,
        "no-ack deliveries are not requeued"
    );
}

async fn roundtrip(b: &TestBroker, body: &[u8], props: BasicProperties) -> Delivery {
    let (_conn, ch) = open(b).await;
    let q = fresh_queue(&ch, "basic.rt").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    publish_with(&ch, "", &q, body, props).await;
    within("confirms", ch.wait_for_confirms())
        .await
        .expect("confirms");
    let d = get(&ch, &q).await.expect("msg");
    let mut c = consume(
        &ch,
        &q,
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    within(
        "basic.reject",
        d.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("requeue");
    // Also compare what a consumer receives with what basic.get returned.
    let consumed = next(&mut c).await;
    assert_eq!(consumed.data, d.data);
    assert_eq!(consumed.properties, d.properties);
    d
}

async fn large_bodies_roundtrip(b: TestBroker) {
    for size in [131_072 - 8, 131_072, 1 << 20, 5 << 20] {
        let data: Vec<u8> = (0..size)
            .map(|i: usize| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
            .collect();
        let d = roundtrip(&b, &data, BasicProperties::default()).await;
        assert_eq!(d.data.len(), size);
        assert!(d.data == data, "body of {size} bytes differs");
    }
}

async fn empty_body_roundtrip(b: TestBroker) {
    let d = roundtrip(
        &b,
        b"",
        BasicProperties::default().with_content_type("text/plain".into()),
    )
    .await;
    assert!(d.data.is_empty());
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
}

async fn properties_roundtrip(b: TestBroker) {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("deep".into()));
    let mut headers = FieldTable::default();
    let values: Vec<(&str, AMQPValue)> = vec![
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-5)),
        ("u8", AMQPValue::ShortShortUInt(200)),
        ("i16", AMQPValue::ShortInt(-300)),
        ("u16", AMQPValue::ShortUInt(60_000)),
        ("i32", AMQPValue::LongInt(-70_000)),
        ("u32", AMQPValue::LongUInt(4_000_000_000)),
        ("i64", AMQPValue::LongLongInt(-(1 << 40))),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.25)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
        ),
        ("string", AMQPValue::LongString("héllo".into())),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                AMQPValue::LongString("two".into()),
            ])),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        ("bytes", AMQPValue::ByteArray(vec![0u8, 1, 254, 255].into())),
        ("void", AMQPValue::Void),
    ];
    for (k, v) in values {
        headers.insert(ShortString::from(k), v);
    }
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("reply-queue".into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("conformance".into())
        .with_cluster_id("cluster".into());
    let d = roundtrip(&b, b"{}", props.clone()).await;
    assert_eq!(d.properties, props);
}

async fn no_properties_roundtrip(b: TestBroker) {
    let d = roundtrip(&b, b"plain", BasicProperties::default()).await;
    assert_eq!(d.properties, BasicProperties::default());
}

/// RabbitMQ validates user-id against the connection's user.
async fn wrong_user_id_is_406(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.userid").await;
    let mut errors = Errors::watch(&conn);
    publish_with(
        &ch,
        "",
        &q,
        b"x",
        BasicProperties::default().with_user_id("mallory".into()),
    )
    .await;
    assert_eq!(errors.next_code().await, code::PRECONDITION_FAILED);
}

async fn fifo_order(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "basic.fifo").await;
    fill(&conn, &q, 50).await;
    let mut c = consume(
        &ch,
        &q,
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    let got: Vec<String> = collect(&mut c).await.iter().map(body).collect();
    let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}

conformance!(
    prefetch_limits_each_consumer,
    prefetch_global_is_shared_by_the_channel,
    prefetch_zero_is_unlimited,
    consumer_tags,
    duplicate_consumer_tag_is_530,
    consume_from_missing_queue_is_404,
    exclusive_consumer_conflicts_are_403,
    cancel_stops_deliveries,
    cancel_unknown_tag_is_ok,
    mandatory_unroutable_is_returned_312,
    get_and_get_empty,
    get_from_missing_queue_is_404,
    delivery_tags_are_per_channel,
    ack_multiple,
    ack_removes_message,
    nack_multiple_with_requeue,
    nack_without_requeue_drops,
    reject_with_requeue_redelivers,
    reject_without_requeue_drops,
    recover_requeues_unacked,
    round_robin_between_consumers,
    unacked_requeued_when_channel_closes,
    unacked_requeued_when_connection_closes,
    queue_delete_cancels_consumers,
    ack_unknown_delivery_tag_is_406,
    double_ack_is_406,
    no_ack_consumer_removes_messages,
    large_bodies_roundtrip,
    empty_body_roundtrip,
    properties_roundtrip,
    no_properties_roundtrip,
    wrong_user_id_is_406,
    fifo_order,
);
