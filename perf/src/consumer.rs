//! A consumer: one connection, one channel, one `basic.consume`; records each delivery's latency
//! from its send-time stamp and acks as configured.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use crate::clock;
use crate::counters::Counters;
use crate::histogram::Histogram;
use crate::options::RunOptions;

/// How often an idle consumer looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// A consumer's channel, subscribed; returned before the producers start so none of their
/// messages is missed.
#[derive(Debug)]
pub struct Subscribed {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
}

/// Opens the channel, sets the prefetch and subscribes to `queue`.
pub async fn subscribe(
    connection: Connection,
    queue: &str,
    tag: &str,
    options: &RunOptions,
) -> anyhow::Result<Subscribed> {
    let channel = connection.create_channel().await?;
    if options.prefetch > 0 {
        channel
            .basic_qos(options.prefetch, BasicQosOptions::default())
            .await
            .context("basic.qos")?;
    }
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: options.auto_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    Ok(Subscribed {
        connection,
        channel,
        consumer,
    })
}

/// Consumes until `counters.stop`; returns the latencies seen.
pub async fn run(
    subscribed: Subscribed,
    options: RunOptions,
    counters: Arc<Counters>,
) -> anyhow::Result<Histogram> {
    let Subscribed {
        connection,
        channel,
        mut consumer,
    } = subscribed;
    let mut latencies = Histogram::default();
    let ack_every = options.multi_ack_every.max(1);
    let mut unacked: u64 = 0;
    let mut last_tag = None;
    while !counters.stopped() {
        let delivery = match tokio::time::timeout(STOP_POLL, consumer.next()).await {
            Err(_) => continue,
            Ok(None) => anyhow::bail!("the broker cancelled the consumer"),
            Ok(Some(delivery)) => delivery.context("delivery")?,
        };
        if let Some(nanos) = clock::latency_nanos(&delivery.data) {
            latencies.record(nanos);
        }
        Counters::add(&counters.consumed, 1);
        if options.auto_ack {
            continue;
        }
        unacked += 1;
        last_tag = Some(delivery.delivery_tag);
        if unacked >= ack_every {
            ack(&channel, delivery.delivery_tag, ack_every > 1).await?;
            unacked = 0;
            last_tag = None;
        }
    }
    if let Some(tag) = last_tag {
        ack(&channel, tag, true).await?;
    }
    channel.close(200, "done".into()).await.ok();
    connection.close(200, "done".into()).await.ok();
    Ok(latencies)
}

async fn ack(channel: &Channel, tag: u64, multiple: bool) -> anyhow::Result<()> {
    channel
        .basic_ack(tag, BasicAckOptions { multiple })
        .await
        .context("basic.ack")
}
