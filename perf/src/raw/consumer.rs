//! A raw consumer: deliveries parsed straight from the read buffer, acks for everything read in
//! one go written together.

use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::FieldTable;

use super::connection::{CHANNEL, Connection};
use super::wire::{self, Incoming};
use crate::clock;
use crate::counters::Counters;
use crate::histogram::Histogram;
use crate::options::RunOptions;

/// How often an idle consumer looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Opens the connection, sets the prefetch and subscribes to `queue`; returned before the
/// producers start so none of their messages is missed.
pub async fn subscribe(
    uri: &str,
    name: &str,
    queue: &str,
    tag: &str,
    options: &RunOptions,
) -> anyhow::Result<Connection> {
    let mut conn = Connection::open(uri, name).await?;
    if options.prefetch > 0 {
        conn.method(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: options.prefetch,
                global: false,
            })),
        );
    }
    conn.method(
        CHANNEL,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack: options.auto_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    conn.flush().await?;
    if options.prefetch > 0 {
        conn.expect("basic.qos-ok", |m| match m {
            AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) => Some(()),
            _ => None,
        })
        .await?;
    }
    conn.expect("basic.consume-ok", |m| match m {
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => Some(()),
        _ => None,
    })
    .await?;
    Ok(conn)
}

/// Where a consumer is within the frames of a delivery.
#[derive(Debug, Default)]
struct Delivery {
    /// The tag of the delivery being received.
    tag: u64,
    /// Body bytes still to come; `None` between deliveries (next: `basic.deliver`) and after the
    /// method (next: the content header).
    remaining: Option<u64>,
    /// Whether its first body frame (the one with the stamp) has been seen.
    stamped: bool,
}

/// Consumes until `counters.stop`; returns the latencies seen.
pub async fn run(
    mut conn: Connection,
    options: RunOptions,
    counters: Arc<Counters>,
) -> anyhow::Result<Histogram> {
    let mut latencies = Histogram::default();
    let ack_every = options.multi_ack_every.max(1);
    let mut unacked: u64 = 0;
    let mut last_completed = None;
    let mut current = Delivery::default();
    while !counters.stopped() {
        match tokio::time::timeout(STOP_POLL, conn.read()).await {
            Err(_) => continue,
            Ok(read) => read?,
        }
        let mut completed = 0;
        while let Some(frame) = conn.next_frame()? {
            let done = match frame {
                Incoming::Deliver { delivery_tag } => {
                    current = Delivery {
                        tag: delivery_tag,
                        remaining: None,
                        stamped: false,
                    };
                    false
                }
                Incoming::Header { body_size } => {
                    current.remaining = Some(body_size);
                    body_size == 0
                }
                Incoming::Body { len, stamp } => {
                    if !current.stamped {
                        current.stamped = true;
                        if let Some(sent) = stamp {
                            latencies.record(clock::now_nanos().saturating_sub(sent));
                        }
                    }
                    let left = current.remaining.unwrap_or(0).saturating_sub(len as u64);
                    current.remaining = Some(left);
                    left == 0
                }
                Incoming::Method(_, method)
                    if matches!(*method, AMQPClass::Basic(basic::AMQPMethod::Cancel(_))) =>
                {
                    anyhow::bail!("the broker cancelled the consumer");
                }
                Incoming::Heartbeat | Incoming::Confirm { .. } | Incoming::Method(..) => false,
            };
            if !done {
                continue;
            }
            completed += 1;
            if options.auto_ack {
                continue;
            }
            last_completed = Some(current.tag);
            unacked += 1;
            if ack_every == 1 {
                wire::ack(&mut conn.out, CHANNEL, current.tag, false);
                unacked = 0;
            }
        }
        Counters::add(&counters.consumed, completed);
        // Multi-acks for everything read in one go: one ack covers all the deliveries that
        // crossed the threshold.
        if let (true, Some(tag)) = (unacked >= ack_every, last_completed) {
            wire::ack(&mut conn.out, CHANNEL, tag, true);
            unacked = 0;
        }
        conn.flush().await?;
    }
    if let (true, Some(tag)) = (unacked > 0, last_completed) {
        wire::ack(&mut conn.out, CHANNEL, tag, true);
    }
    conn.close().await?;
    Ok(latencies)
}
