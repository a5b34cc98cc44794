//! A producer: one connection, one channel, publishing stamped bodies to the queue through the
//! default exchange as fast as allowed (by the rate, and by the confirm window).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, PublisherConfirm};
use tokio::time::Instant;

use crate::clock;
use crate::counters::Counters;
use crate::options::RunOptions;

/// How long the end of a run waits for confirms still outstanding.
const CONFIRM_DRAIN: Duration = Duration::from_secs(10);

/// Publishes until `counters.stop`, then waits for outstanding confirms.
pub async fn run(
    connection: Connection,
    queue: String,
    options: RunOptions,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let window = options.confirm_window;
    if window > 0 {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
    }
    let properties = if options.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let mut body = vec![0u8; options.size];
    let mut pending: VecDeque<PublisherConfirm> = VecDeque::with_capacity(window);
    let started = Instant::now();
    let mut sent: u64 = 0;
    while !counters.stopped() {
        if let Some(rate) = options.rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due).await;
            if counters.stopped() {
                break;
            }
        }
        clock::stamp(&mut body);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await
            .context("basic.publish")?;
        sent += 1;
        Counters::add(&counters.published, 1);
        if window == 0 {
            // Resolves at once (no confirm was asked for); awaiting it keeps lapin from holding it.
            confirm.await?;
            continue;
        }
        pending.push_back(confirm);
        while pending.len() >= window {
            let oldest = pending.pop_front().expect("a full window is not empty");
            count(oldest.await?, &counters);
        }
    }
    let drain = async {
        for confirm in pending {
            count(confirm.await?, &counters);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CONFIRM_DRAIN, drain)
        .await
        .context("confirms still outstanding 10 s after the run")??;
    channel.close(200, "done".into()).await.ok();
    connection.close(200, "done".into()).await.ok();
    Ok(())
}

fn count(confirmation: Confirmation, counters: &Counters) {
    if confirmation.is_nack() {
        Counters::add(&counters.nacked, 1);
    } else {
        Counters::add(&counters.confirmed, 1);
    }
}
