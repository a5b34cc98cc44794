//! Publisher confirms and transactions.

mod common;

use common::{assert_code, code, fresh_queue, get, get_body, open, publish, within};
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use tests::{TestBroker, conformance};

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

async fn select_confirms(ch: &Channel) {
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
}

async fn select_tx(ch: &Channel) {
    within("tx.select", ch.tx_select())
        .await
        .expect("tx.select");
}

async fn publish_is_acked(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "confirm.one").await;
    select_confirms(&ch).await;
    assert!(ch.status().confirm());
    let pending = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = within("confirm", pending).await.expect("confirmation");
    assert!(
        matches!(confirmation, Confirmation::Ack(None)),
        "{confirmation:?}"
    );
    assert_eq!(
        message_count(&ch, &q).await,
        1,
        "an acked message is in the queue"
    );
}

/// Messages to no queue at all are acked too (there is nothing to wait for).
async fn unroutable_publish_is_acked(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    select_confirms(&ch).await;
    let pending = within(
        "basic.publish",
        ch.basic_publish(
            "amq.fanout".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"nobody",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    // amq.fanout may have bindings from other tests, so only the ack is checked.
    assert!(
        within("confirm", pending)
            .await
            .expect("confirmation")
            .is_ack()
    );
    let pending = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            tests::unique("nowhere").into(),
            BasicPublishOptions::default(),
            b"nobody",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    assert!(matches!(
        within("confirm", pending).await.expect("confirmation"),
        Confirmation::Ack(None)
    ));
}

async fn many_publishes_in_flight_are_all_confirmed(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "confirm.many").await;
    select_confirms(&ch).await;
    let mut pending = Vec::new();
    for i in 0..1000 {
        pending.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    for (i, p) in pending.into_iter().enumerate() {
        let c = within("confirm", p).await.expect("confirmation");
        assert!(c.is_ack(), "message {i}: {c:?}");
    }
    assert!(
        within("wait_for_confirms", ch.wait_for_confirms())
            .await
            .expect("confirms")
            .is_empty()
    );
    assert_eq!(message_count(&ch, &q).await, 1000);
}

async fn confirm_select_is_idempotent(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    select_confirms(&ch).await;
    select_confirms(&ch).await;
    let q = fresh_queue(&ch, "confirm.twice").await;
    publish(&ch, "", &q, b"x").await;
    assert!(
        within("confirms", ch.wait_for_confirms())
            .await
            .expect("confirms")
            .is_empty()
    );
}

async fn confirm_select_on_tx_channel_is_406(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    select_tx(&ch).await;
    assert_code(
        within(
            "confirm.select",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await,
        code::PRECONDITION_FAILED,
    );
}

async fn tx_select_on_confirm_channel_is_406(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    select_confirms(&ch).await;
    assert_code(
        within("tx.select", ch.tx_select()).await,
        code::PRECONDITION_FAILED,
    );
}

async fn tx_commit_makes_publishes_visible(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "tx.commit").await;
    let observer = conn.create_channel().await.expect("channel");
    select_tx(&ch).await;
    publish(&ch, "", &q, b"one").await;
    publish(&ch, "", &q, b"two").await;
    assert_eq!(
        message_count(&ch, &q).await,
        0,
        "uncommitted publishes are not in the queue"
    );
    assert_eq!(message_count(&observer, &q).await, 0);
    assert!(get(&observer, &q).await.is_none());
    within("tx.commit", ch.tx_commit())
        .await
        .expect("tx.commit");
    assert_eq!(message_count(&observer, &q).await, 2);
    assert_eq!(get_body(&observer, &q).await.as_deref(), Some(&b"one"[..]));
    assert_eq!(get_body(&observer, &q).await.as_deref(), Some(&b"two"[..]));
    // The channel stays transactional: the next publish waits for the next commit.
    publish(&ch, "", &q, b"three").await;
    assert_eq!(message_count(&observer, &q).await, 0);
    within("tx.commit", ch.tx_commit())
        .await
        .expect("tx.commit");
    assert_eq!(
        get_body(&observer, &q).await.as_deref(),
        Some(&b"three"[..])
    );
}

async fn tx_rollback_discards_publishes(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "tx.rollback").await;
    select_tx(&ch).await;
    publish(&ch, "", &q, b"discarded").await;
    within("tx.rollback", ch.tx_rollback())
        .await
        .expect("tx.rollback");
    assert_eq!(message_count(&ch, &q).await, 0);
    within("tx.commit", ch.tx_commit())
        .await
        .expect("an empty commit");
    assert_eq!(
        message_count(&ch, &q).await,
        0,
        "a rolled-back publish is gone for good"
    );
    publish(&ch, "", &q, b"kept").await;
    within("tx.commit", ch.tx_commit())
        .await
        .expect("tx.commit");
    assert_eq!(get_body(&ch, &q).await.as_deref(), Some(&b"kept"[..]));
}

/// Acks inside a transaction take effect on commit; a rollback forgets them (the message stays
/// unacked and is requeued when the channel closes).
async fn tx_acks_apply_on_commit(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "tx.ack").await;
    publish(&ch, "", &q, b"a").await;
    publish(&ch, "", &q, b"b").await;
    let txc = conn.create_channel().await.expect("channel");
    select_tx(&txc).await;
    let a = common::get_eventually_delivery(&txc, &q).await;
    let bd = common::get_eventually_delivery(&txc, &q).await;
    within("ack", a.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    within("tx.rollback", txc.tx_rollback())
        .await
        .expect("rollback");
    within("ack", bd.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    within("tx.commit", txc.tx_commit()).await.expect("commit");
    within("channel.close", txc.close(200, "bye".into()))
        .await
        .expect("close");
    // "a" was acked only in the rolled-back transaction, so it comes back; "b" is gone.
    let back = get(&ch, &q).await.expect("a requeued");
    assert_eq!(back.data, b"a");
    assert!(back.redelivered);
    assert!(get(&ch, &q).await.is_none());
}

async fn tx_commit_without_select_is_406(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    assert_code(
        within("tx.commit", ch.tx_commit()).await,
        code::PRECONDITION_FAILED,
    );
}

async fn tx_rollback_without_select_is_406(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    assert_code(
        within("tx.rollback", ch.tx_rollback()).await,
        code::PRECONDITION_FAILED,
    );
}

conformance!(
    publish_is_acked,
    unroutable_publish_is_acked,
    many_publishes_in_flight_are_all_confirmed,
    confirm_select_is_idempotent,
    confirm_select_on_tx_channel_is_406,
    tx_select_on_confirm_channel_is_406,
    tx_commit_makes_publishes_visible,
    tx_rollback_discards_publishes,
    tx_acks_apply_on_commit,
    tx_commit_without_select_is_406,
    tx_rollback_without_select_is_406,
);
