//! The zero-set-up demo: starts the bundled broker in-process, then publishes and consumes a few
//! messages through lapin over real TCP, as any AMQP client would, and prints what happened.
//!
//! ```text
//! cargo run -p examples --example demo
//! ```

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let broker = amqp_broker::Broker::builder().port(0).start().await?;
    println!("bundled broker listening at {}", broker.amqp_url());

    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // A topic exchange with one queue for every "order.*" event.
    channel
        .exchange_declare(
            "shop".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            "shop".into(),
            "order.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!(
        "declared topic exchange 'shop' and queue '{}' bound to 'order.*'",
        queue.name()
    );

    let events = [
        ("order.created", "order 42 created"),
        ("order.paid", "order 42 paid"),
        ("user.login", "alice logged in"),
    ];
    for (key, text) in events {
        let confirm = channel
            .basic_publish(
                "shop".into(),
                key.into(),
                BasicPublishOptions::default(),
                text.as_bytes(),
                BasicProperties::default(),
            )
            .await?
            .await?;
        println!(
            "published {key:<14} -> confirmed by the broker: {}",
            confirm.is_ack()
        );
    }

    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "demo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .context("no delivery within 5 s")?
            .context("consumer ended")??;
        println!(
            "consumed  {:<14} <- {:?}",
            delivery.routing_key.as_str(),
            String::from_utf8_lossy(&delivery.data)
        );
        delivery.ack(BasicAckOptions::default()).await?;
    }
    println!("'user.login' matched no binding, so it was dropped, as in RabbitMQ");

    conn.close(200, "bye".into()).await?;
    broker.shutdown().await?;
    println!("done");
    Ok(())
}
