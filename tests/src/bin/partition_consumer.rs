//! A consumer process for the ordered-partitions tests (`tests/tests/patterns_partitions.rs`):
//! consumes the partitions of a queue and prints one line per handled message, so that the test
//! can kill it (SIGKILL) mid-stream and read what it did.
//!
//! ```text
//! partition_consumer AMQP_URL QUEUE PARTITIONS PREFETCH HOLD_MS
//! stdout: "ready" once every partition is subscribed, then per message
//!         "handled <partition queue> <key> <seq> <redelivered 0|1>", and "stopped" after SIGTERM
//! ```
//!
//! The line is the handler's side effect: it is written (and flushed) before the handler returns,
//! then the handler holds on for HOLD_MS before the ack, so that a kill often lands between a
//! side effect and its ack. It declares the partition queues itself (transient, deleted by the broker
//! a minute after their last use).

use amqp_core::types::AMQPValue;
use amqp_core::{ConnectionFactory, Listener, ListenerError, Metadata, Partitions, Queue};
use tests::process::{Event, arg, wait_for_sigterm};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = arg(&mut args, "AMQP_URL")?;
    let queue = arg(&mut args, "QUEUE")?;
    let partitions: u16 = arg(&mut args, "PARTITIONS")?.parse()?;
    let prefetch: u16 = arg(&mut args, "PREFETCH")?.parse()?;
    let hold = std::time::Duration::from_millis(arg(&mut args, "HOLD_MS")?.parse()?);

    let conn = ConnectionFactory::new(&url)
        .connection_name(format!("partition_consumer.{}", std::process::id()))
        .connect()
        .await?;
    let base = Queue::transient(&queue).argument("x-expires", AMQPValue::LongLongInt(60_000));
    conn.declare(Partitions::new(partitions)?.queues(&base))
        .await?;
    let listener = Listener::on(&queue)
        .partitions(partitions)
        .prefetch(prefetch)
        .handler_with_metadata(move |event: Event, meta: Metadata| async move {
            println!(
                "handled {} {} {} {}",
                meta.queue,
                event.key,
                event.seq,
                u8::from(meta.redelivered)
            );
            tokio::time::sleep(hold).await;
            Ok::<_, ListenerError>(())
        })
        .start(&conn)
        .await?;
    println!("ready");
    wait_for_sigterm().await;
    listener.shutdown().await;
    conn.close().await;
    println!("stopped");
    Ok(())
}
