//! The embedding contract with a data directory: what a broker stored, the next broker on the
//! same directory has (durable definitions, persistent messages with their properties), and what
//! was not durable is gone.

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

async fn open(broker: &amqp_broker::Broker) -> (Connection, Channel) {
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

fn declare(durable: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable,
        ..Default::default()
    }
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_restart_on_the_same_data_dir_recovers_what_was_durable() {
    let dir = std::env::temp_dir().join(format!("amqp-durability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut headers = FieldTable::default();
    headers.insert("trace".into(), AMQPValue::LongString("t-1".into()));
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("text/plain".into())
        .with_headers(headers);
    {
        let broker = amqp_broker::Broker::builder()
            .port(0)
            .data_dir(&dir)
            .start()
            .await
            .unwrap();
        let (_conn, ch) = open(&broker).await;
        let durable_x = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            "orders".into(),
            ExchangeKind::Topic,
            durable_x,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
        ch.queue_declare("orders.all".into(), declare(true), args)
            .await
            .unwrap();
        ch.queue_declare("scratch".into(), declare(false), FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            "orders.all".into(),
            "orders".into(),
            "order.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        for (key, body, p) in [
            ("order.created", "kept", props.clone()),
            ("order.created", "transient", BasicProperties::default()),
        ] {
            ch.basic_publish(
                "orders".into(),
                key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                p,
            )
            .await
            .unwrap();
        }
        // A transaction's commit-ok comes after the sync.
        ch.tx_select().await.unwrap();
        ch.basic_publish(
            "".into(),
            "orders.all".into(),
            BasicPublishOptions::default(),
            b"in tx",
            props.clone(),
        )
        .await
        .unwrap();
        ch.tx_commit().await.unwrap();
        broker.shutdown().await.unwrap();
    }
    let broker = amqp_broker::Broker::builder()
        .port(0)
        .data_dir(&dir)
        .start()
        .await
        .unwrap();
    let (_conn, ch) = open(&broker).await;
    assert_eq!(broker.queue_count(), 1, "the transient queue is gone");
    let first = get(&ch, "orders.all")
        .await
        .expect("the persistent message");
    assert_eq!(first.delivery.data, b"kept");
    assert_eq!(first.delivery.routing_key.as_str(), "order.created");
    assert_eq!(first.delivery.properties, props);
    let second = get(&ch, "orders.all").await.expect("the committed message");
    assert_eq!(second.delivery.data, b"in tx");
    assert!(
        get(&ch, "orders.all").await.is_none(),
        "the transient message is gone"
    );
    // The binding and the exchange came back.
    ch.basic_publish(
        "orders".into(),
        "order.paid".into(),
        BasicPublishOptions::default(),
        b"routed",
        props,
    )
    .await
    .unwrap();
    let routed = get(&ch, "orders.all")
        .await
        .expect("routed through the recovered binding");
    assert_eq!(routed.delivery.data, b"routed");
    // Redeclaring with the stored arguments is equivalent.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
    ch.queue_declare("orders.all".into(), declare(true), args)
        .await
        .unwrap();
    broker.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A long durable queue over a tiny memory budget: consumers get every message in order with
/// its properties and headers, before a restart (bodies read back from the log) and after it
/// (recovery loaded only the index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_longer_than_its_memory_budget_delivers_in_order_across_a_restart() {
    use futures::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};

    let dir = std::env::temp_dir().join(format!("amqp-paging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let n = 20_000u32;
    let start = || {
        amqp_broker::Broker::builder()
            .port(0)
            .data_dir(&dir)
            .queue_memory_budget_bytes(64 * 1024)
            .start()
    };
    let props = |i: u32| {
        let mut headers = FieldTable::default();
        headers.insert("n".into(), AMQPValue::LongUInt(i));
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("m-{i}").into())
            .with_headers(headers)
    };
    // Consumes `count` messages, checking they are `from..` in order, acking each.
    async fn consume(ch: &Channel, from: u32, count: u32) {
        ch.basic_qos(300, BasicQosOptions::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume(
                "long".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        for i in from..from + count {
            let d = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
                .await
                .expect("a delivery")
                .unwrap()
                .unwrap();
            assert_eq!(d.data, format!("body {i} {}", "x".repeat(200)).into_bytes());
            let p = &d.properties;
            assert_eq!(p.message_id().as_ref().unwrap().as_str(), format!("m-{i}"));
            let n = p.headers().as_ref().unwrap().inner().get("n").cloned();
            assert_eq!(n, Some(AMQPValue::LongUInt(i)));
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    {
        let broker = start().await.unwrap();
        let (_conn, ch) = open(&broker).await;
        ch.queue_declare("long".into(), declare(true), FieldTable::default())
            .await
            .unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let mut confirms = Vec::new();
        for i in 0..n {
            let body = format!("body {i} {}", "x".repeat(200));
            let c = ch
                .basic_publish(
                    "".into(),
                    "long".into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props(i),
                )
                .await
                .unwrap();
            confirms.push(c);
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
        consume(&ch, 0, n / 2).await;
        ch.close(200, "half".into()).await.unwrap();
        broker.shutdown().await.unwrap();
    }
    let broker = start().await.unwrap();
    let (_conn, ch) = open(&broker).await;
    let left = ch
        .queue_declare("long".into(), declare(true), FieldTable::default())
        .await
        .unwrap()
        .message_count();
    assert_eq!(left, n / 2);
    consume(&ch, n / 2, n / 2).await;
    assert!(get(&ch, "long").await.is_none());
    broker.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
