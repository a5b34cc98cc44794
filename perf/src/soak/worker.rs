//! The soak's clients: each worker holds one connection with its channels, reconnecting after
//! every cut, until told to stop. Publishers publish persistent messages with confirms to the
//! durable queues; consumers consume and ack; the slow consumer acks one message at a time,
//! slowly, so its queue's backlog grows for the whole run.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::watch;

use super::ledger::Ledger;
use super::link;
use super::{SLOW_QUEUE, SoakOptions, work_queue};

/// What a worker's connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Consumer,
    /// Channel 0 is the slow consumer; the others consume as [`Role::Consumer`].
    Slow,
}

/// What every worker shares.
#[derive(Debug)]
pub struct Shared {
    pub broker: std::net::SocketAddr,
    pub options: SoakOptions,
    pub ledger: Ledger,
    /// The cut handle of each worker's current connection (by worker index).
    pub cuts: Vec<std::sync::Mutex<Option<link::Cut>>>,
}

/// Runs worker `index` until `stop` turns true.
pub async fn run(index: usize, role: Role, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut attempt = 0u64;
    while !*stop.borrow() {
        let name = format!("soak {role:?} {index}");
        let connection = match link::connect(shared.broker, &name).await {
            Ok((connection, cut)) => {
                *shared.cuts[index].lock().expect("cut slot") = Some(cut);
                connection
            }
            Err(_) => {
                Ledger::add(&shared.ledger.connect_failures, 1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if attempt > 0 {
            Ledger::add(&shared.ledger.reconnects, 1);
        }
        attempt += 1;
        tokio::select! {
            // An error here is a cut (or the broker closing us): reconnect.
            _ = session(index, role, &connection, &shared) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        shared.cuts[index].lock().expect("cut slot").take();
        if *stop.borrow() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                connection.close(200, "soak over".into()),
            )
            .await;
            break;
        }
        drop(connection);
        tokio::time::sleep(Duration::from_millis(100 + (index as u64 * 37) % 400)).await;
    }
}

/// One connection's life: its channels, each running its role until an error.
async fn session(
    index: usize,
    role: Role,
    connection: &Connection,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let channels = shared.options.channels;
    let mut tasks = Vec::with_capacity(channels);
    for slot in 0..channels {
        let channel = connection.create_channel().await?;
        // Workers 2k (publishing) and 2k + 1 (consuming) use the same queues, so that every
        // queue has publishers and consumers.
        let pair_slot = index / 2 * channels + slot;
        let queue = work_queue(pair_slot, shared.options.queues);
        let shared = shared.clone();
        tasks.push(async move {
            match role {
                Role::Publisher => publish(&channel, pair_slot, &shared).await,
                Role::Slow if slot == 0 => consume(&channel, SLOW_QUEUE, 1, &shared, true).await,
                Role::Consumer | Role::Slow => {
                    consume(&channel, &queue, shared.options.prefetch, &shared, false).await
                }
            }
        });
    }
    futures::future::try_join_all(tasks).await?;
    Ok(())
}

/// Publishes persistent messages at the configured rate, one confirm outstanding; every
/// `slow_every`-th goes to the slow queue. A message counts as confirmed when its ack arrives.
async fn publish(channel: &Channel, slot: usize, shared: &Shared) -> anyhow::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = work_queue(slot, shared.options.queues);
    let body = vec![b's'; shared.options.body_bytes];
    let period = Duration::from_secs_f64(1.0 / shared.options.rate);
    // Publishers start spread over one period, not all at once.
    let offset = period.mul_f64((slot % 97) as f64 / 97.0);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let id = shared.ledger.next_id();
        let target = if id % shared.options.slow_every == 0 {
            SLOW_QUEUE
        } else {
            queue.as_str()
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.to_string().into());
        let confirmation = channel
            .basic_publish(
                "".into(),
                target.into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?
            .await?;
        if confirmation.is_ack() {
            shared.ledger.confirmed(id);
        } else {
            Ledger::add(&shared.ledger.nacked, 1);
        }
    }
}

/// Consumes `queue` and acks each delivery (after `slow_ack_ms` when `slow`).
async fn consume(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
    shared: &Shared,
    slow: bool,
) -> anyhow::Result<()> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        if slow {
            tokio::time::sleep(Duration::from_millis(shared.options.slow_ack_ms)).await;
        }
        shared.ledger.seen(&delivery.properties);
        delivery.ack(BasicAckOptions::default()).await?;
    }
    anyhow::bail!("the consumer of {queue} was cancelled")
}
