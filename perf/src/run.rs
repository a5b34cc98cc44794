//! One load run: declare the queue, open the connections, let producers and consumers go for the
//! duration, stop them, and sum up what they counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::counters::Counters;
use crate::histogram::Histogram;
use crate::options::{Client, RunOptions};
use crate::report::{Progress, Report};
use crate::{clock, consumer, producer, raw};

/// How often the run checks whether it is over (duration, or consume count reached).
const TICK: Duration = Duration::from_millis(5);

/// Opens a connection named after its role (visible in the broker's connection list).
pub async fn connect(uri: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(uri, properties)
        .await
        .with_context(|| format!("cannot connect to {}", redact(uri)))
}

/// `uri` without its password, for messages and reports.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &uri[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

/// The frame size idle connections ask for. lapin gives each connection buffers of 64 frames, so
/// at the usual 128 KiB a thousand idle connections would hold 8 GiB in this tool; the broker's
/// side does not depend on it.
const IDLE_FRAME_MAX: u32 = 4096;

/// How long one idle connection may take to open before the run gives up (a broker out of file
/// descriptors leaves new connections hanging rather than refusing them).
const IDLE_OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// `uri` with a `frame_max` query parameter (replacing none: a URI that sets its own keeps it).
fn with_frame_max(uri: &str, frame_max: u32) -> String {
    if uri.contains("frame_max=") {
        uri.to_owned()
    } else if uri.contains('?') {
        format!("{uri}&frame_max={frame_max}")
    } else {
        format!("{uri}?frame_max={frame_max}")
    }
}

/// Connections held open and idle, one channel each; closed with [`IdleConnections::close`].
#[derive(Debug, Default)]
pub struct IdleConnections {
    held: Vec<(Connection, lapin::Channel)>,
}

impl IdleConnections {
    /// Opens `count` connections (a few at a time, so the broker's accept queue keeps up).
    pub async fn open(uri: &str, count: usize) -> anyhow::Result<Self> {
        let uri = &with_frame_max(uri, IDLE_FRAME_MAX);
        let mut held = Vec::with_capacity(count);
        let mut next = 0;
        while next < count {
            let batch = (count - next).min(50);
            let opened = futures::future::try_join_all((next..next + batch).map(|i| async move {
                let open = async {
                    let connection = connect(uri, &format!("amqp-perf idle {i}")).await?;
                    let channel = connection.create_channel().await?;
                    anyhow::Ok((connection, channel))
                };
                tokio::time::timeout(IDLE_OPEN_TIMEOUT, open)
                    .await
                    .with_context(|| {
                        format!(
                            "idle connection {} of {count} not open after {} s: the broker may \
                             be at its connection or file-descriptor limit",
                            i + 1,
                            IDLE_OPEN_TIMEOUT.as_secs()
                        )
                    })?
            }))
            .await?;
            held.extend(opened);
            next += batch;
        }
        Ok(Self { held })
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Closes them all.
    pub async fn close(self) {
        futures::future::join_all(
            self.held
                .into_iter()
                .map(|(connection, _)| async move { connection.close(200, "done".into()).await }),
        )
        .await;
    }
}

/// A producer's connection, opened before the clock starts.
enum ProducerConnection {
    Lapin(Connection),
    Raw(raw::connection::Connection),
}

/// Runs the load described by `options` and reports what it measured.
pub async fn run(options: &RunOptions) -> anyhow::Result<Report> {
    options.validate()?;
    clock::now_nanos(); // fix the stamp base before anything is sent
    let generated = options.queue.is_none();
    let queue = options.queue.clone().unwrap_or_else(|| {
        format!(
            "amqp-perf-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )
    });
    let setup = connect(&options.uri, "amqp-perf setup").await?;
    let setup_channel = setup.create_channel().await?;
    setup_channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: options.durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot declare queue '{queue}'"))?;

    let idle = IdleConnections::open(&options.uri, options.idle_connections).await?;
    let counters = Arc::new(Counters::default());
    let mut consumers = JoinSet::new();
    for i in 0..options.consumers {
        let name = format!("amqp-perf consumer {i}");
        let tag = format!("amqp-perf-{i}");
        match options.client {
            Client::Lapin => {
                let connection = connect(&options.uri, &name).await?;
                let subscribed = consumer::subscribe(connection, &queue, &tag, options).await?;
                consumers.spawn(consumer::run(subscribed, options.clone(), counters.clone()));
            }
            Client::Raw => {
                let conn =
                    raw::consumer::subscribe(&options.uri, &name, &queue, &tag, options).await?;
                consumers.spawn(raw::consumer::run(conn, options.clone(), counters.clone()));
            }
        }
    }
    let mut producers = JoinSet::new();
    let mut producer_connections = Vec::with_capacity(options.producers);
    for i in 0..options.producers {
        let name = format!("amqp-perf producer {i}");
        producer_connections.push(match options.client {
            Client::Lapin => ProducerConnection::Lapin(connect(&options.uri, &name).await?),
            Client::Raw => ProducerConnection::Raw(
                raw::connection::Connection::open(&options.uri, &name).await?,
            ),
        });
    }

    let started = Instant::now();
    for connection in producer_connections {
        let (queue, options, counters) = (queue.clone(), options.clone(), counters.clone());
        match connection {
            ProducerConnection::Lapin(c) => {
                producers.spawn(producer::run(c, queue, options, counters))
            }
            ProducerConnection::Raw(c) => {
                producers.spawn(raw::producer::run(c, queue, options, counters))
            }
        };
    }
    let duration = Duration::from_secs_f64(options.duration_secs);
    let mut progress = Progress::new(started, options.quiet || options.json);
    let outcome = loop {
        tokio::time::sleep(TICK).await;
        progress.tick(&counters);
        if started.elapsed() >= duration {
            break Ok(());
        }
        if options
            .consume_count
            .is_some_and(|n| Counters::get(&counters.consumed) >= n)
        {
            break Ok(());
        }
        // A task that ended early failed (they run until told to stop): end the run with its error.
        if let Some(ended) = producers.try_join_next() {
            break ended_early(ended.map(|r| r.map(|_| ())));
        }
        if let Some(ended) = consumers.try_join_next() {
            break ended_early(ended.map(|r| r.map(|_| ())));
        }
    };
    let elapsed = started.elapsed();
    counters.stop.store(true, Ordering::Relaxed);
    let published_by_stop = Counters::get(&counters.published);
    let consumed_by_stop = Counters::get(&counters.consumed);
    outcome?;

    while let Some(ended) = producers.join_next().await {
        ended.context("a producer panicked")??;
    }
    let mut latencies = Histogram::default();
    while let Some(ended) = consumers.join_next().await {
        latencies.merge(&ended.context("a consumer panicked")??);
    }
    let idle_count = idle.len();
    idle.close().await;
    if generated {
        setup_channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .ok();
    }
    setup.close(200, "done".into()).await.ok();
    Ok(Report::new(
        options,
        &queue,
        elapsed,
        published_by_stop,
        consumed_by_stop,
        &counters,
        &latencies,
        idle_count,
    ))
}

/// The error to end the run with when a producer or consumer task ended before the stop signal.
fn ended_early(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    ended.context("a producer or consumer panicked")??;
    anyhow::bail!("a producer or consumer ended early")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn a_password_never_shows() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn idle_connections_ask_for_small_frames() {
        use super::with_frame_max;
        assert_eq!(
            with_frame_max("amqp://h/%2f", 4096),
            "amqp://h/%2f?frame_max=4096"
        );
        assert_eq!(
            with_frame_max("amqp://h/%2f?heartbeat=5", 4096),
            "amqp://h/%2f?heartbeat=5&frame_max=4096"
        );
        assert_eq!(
            with_frame_max("amqp://h?frame_max=9000", 4096),
            "amqp://h?frame_max=9000"
        );
    }
}
