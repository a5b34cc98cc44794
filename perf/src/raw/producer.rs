//! A raw producer: publishes encoded into one buffer and written together, confirms read between
//! writes without waiting.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, confirm};
use anyhow::Context as _;
use tokio::time::Instant;

use super::connection::{CHANNEL, Connection};
use super::wire::{Incoming, PublishTemplate};
use crate::clock;
use crate::counters::Counters;
use crate::options::RunOptions;

/// Bytes of publishes gathered before one write: large enough that a write carries hundreds of
/// small messages, small enough that the broker starts on them early.
const WRITE_BYTES: usize = 64 * 1024;
/// How long the end of a run waits for confirms still outstanding.
const CONFIRM_DRAIN: Duration = Duration::from_secs(10);
/// How often a producer waiting for confirms looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Publish sequence numbers not yet confirmed, in ascending order.
#[derive(Debug, Default)]
struct Unconfirmed {
    tags: VecDeque<u64>,
    /// The sequence number of the next publish (the first is 1).
    next: u64,
}

impl Unconfirmed {
    fn published(&mut self, count: u64) {
        for _ in 0..count {
            self.next += 1;
            self.tags.push_back(self.next);
        }
    }

    /// Removes what a confirm covers; returns how many publishes it confirmed.
    fn confirm(&mut self, tag: u64, multiple: bool) -> u64 {
        if multiple {
            let covered = self.tags.partition_point(|&t| t <= tag);
            self.tags.drain(..covered);
            covered as u64
        } else {
            match self.tags.binary_search(&tag) {
                Ok(at) => {
                    self.tags.remove(at);
                    1
                }
                Err(_) => 0,
            }
        }
    }

    fn len(&self) -> usize {
        self.tags.len()
    }
}

/// Publishes until `counters.stop`, then waits for outstanding confirms and closes.
pub async fn run(
    mut conn: Connection,
    queue: String,
    options: RunOptions,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let window = options.confirm_window;
    if window > 0 {
        conn.method(
            CHANNEL,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        );
        conn.flush().await?;
        conn.expect("confirm.select-ok", |m| match m {
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => Some(()),
            _ => None,
        })
        .await?;
    }
    let template = PublishTemplate::new(
        CHANNEL,
        &queue,
        options.persistent,
        options.size,
        conn.frame_max,
    )?;
    let mut body = vec![0u8; options.size];
    let mut unconfirmed = Unconfirmed::default();
    let started = Instant::now();
    let mut sent: u64 = 0;
    while !counters.stopped() {
        let mut allowed = u64::MAX;
        if window > 0 {
            allowed = (window - unconfirmed.len().min(window)) as u64;
        }
        if let Some(rate) = options.rate {
            let due = (started.elapsed().as_secs_f64() * rate) as u64 + 1;
            if due <= sent {
                // Not yet: sleep until the next one is due, taking confirms meanwhile.
                let next = started + Duration::from_secs_f64(sent as f64 / rate);
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    read = conn.read() => {
                        read?;
                        take_confirms(&mut conn, &mut unconfirmed, &counters)?;
                    }
                }
                continue;
            }
            allowed = allowed.min(due - sent);
        }
        if allowed == 0 {
            // The confirm window is full.
            if let Ok(read) = tokio::time::timeout(STOP_POLL, conn.read()).await {
                read?;
                take_confirms(&mut conn, &mut unconfirmed, &counters)?;
            }
            continue;
        }
        let mut batch = 0;
        while batch < allowed && conn.out.len() < WRITE_BYTES {
            clock::stamp(&mut body);
            template.append(&mut conn.out, &body);
            batch += 1;
        }
        conn.flush().await?;
        sent += batch;
        Counters::add(&counters.published, batch);
        if window > 0 {
            unconfirmed.published(batch);
        }
        conn.read_ready()?;
        take_confirms(&mut conn, &mut unconfirmed, &counters)?;
    }
    let drain = async {
        while unconfirmed.len() > 0 {
            conn.read().await?;
            take_confirms(&mut conn, &mut unconfirmed, &counters)?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CONFIRM_DRAIN, drain)
        .await
        .context("confirms still outstanding 10 s after the run")??;
    conn.close().await
}

/// Counts the confirms among the frames read so far (a producer receives nothing else it needs).
fn take_confirms(
    conn: &mut Connection,
    unconfirmed: &mut Unconfirmed,
    counters: &Counters,
) -> anyhow::Result<()> {
    let (mut acked, mut nacked) = (0, 0);
    while let Some(frame) = conn.next_frame()? {
        if let Incoming::Confirm {
            delivery_tag,
            multiple,
            ack,
        } = frame
        {
            let n = unconfirmed.confirm(delivery_tag, multiple);
            if ack {
                acked += n;
            } else {
                nacked += n;
            }
        }
    }
    Counters::add(&counters.confirmed, acked);
    Counters::add(&counters.nacked, nacked);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Unconfirmed;

    #[test]
    fn confirms_single_and_multiple_remove_what_they_cover() {
        let mut u = Unconfirmed::default();
        u.published(10);
        assert_eq!(u.confirm(3, false), 1);
        assert_eq!(u.confirm(3, false), 0, "a repeated confirm counts once");
        assert_eq!(u.confirm(5, true), 4, "1, 2, 4, 5");
        assert_eq!(u.len(), 5);
        assert_eq!(u.confirm(10, true), 5);
        assert_eq!(u.len(), 0);
        u.published(1);
        assert_eq!(u.confirm(11, false), 1);
    }
}
