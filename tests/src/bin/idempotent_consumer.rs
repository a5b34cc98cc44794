//! A consumer process for the idempotency crash tests (`tests/tests/patterns_idempotent_kill.rs`):
//! an idempotent listener (records in Redis) whose side effect is `INCR <effects>:<message id>` in
//! Redis, observable after the process is gone. The test kills it (SIGKILL) at chosen points.
//!
//! ```text
//! idempotent_consumer AMQP_URL QUEUE REDIS_URL EFFECTS_PREFIX LEASE_MS MODE
//! MODE: normal   apply the side effect, return Ok: "done" in Redis, then the ack
//!       hang     apply the side effect, then never return: killed before "done" and the ack
//!       no-ack   manual acks that never come: "done" in Redis, never the ack
//! stdout: "ready", then "effect <message id> <count after INCR>" per side effect, and
//!         "stopped" after SIGTERM
//! ```

use std::time::Duration;

use amqp_core::idempotent::{Idempotency, RedisStore};
use amqp_core::types::AMQPValue;
use amqp_core::{AckMode, ConnectionFactory, Listener, ListenerError, Metadata, Queue};
use tests::process::{arg, wait_for_sigterm};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = arg(&mut args, "AMQP_URL")?;
    let queue = arg(&mut args, "QUEUE")?;
    let redis_url = arg(&mut args, "REDIS_URL")?;
    let effects = arg(&mut args, "EFFECTS_PREFIX")?;
    let lease = Duration::from_millis(arg(&mut args, "LEASE_MS")?.parse()?);
    let mode = arg(&mut args, "MODE")?;
    let (ack_mode, hang) = match mode.as_str() {
        "normal" => (AckMode::Auto, false),
        "hang" => (AckMode::Auto, true),
        "no-ack" => (AckMode::Manual, false),
        other => return Err(format!("MODE is normal, hang or no-ack, not {other}").into()),
    };

    let redis = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let store = RedisStore::connect(&redis_url).await?;
    let conn = ConnectionFactory::new(&url)
        .connection_name(format!("idempotent_consumer.{}", std::process::id()))
        .connect()
        .await?;
    conn.declare(Queue::transient(&queue).argument("x-expires", AMQPValue::LongLongInt(60_000)))
        .await?;
    let listener = Listener::on(&queue)
        .ack_mode(ack_mode)
        .idempotent(Idempotency::new(store).lease(lease))
        .handler_with_metadata(move |_body: String, meta: Metadata| {
            let mut redis = redis.clone();
            let key = format!("{effects}:{}", meta.message_id().unwrap_or("-"));
            async move {
                let count: i64 = redis::cmd("INCR")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .map_err(ListenerError::requeue)?;
                println!("effect {} {count}", meta.message_id().unwrap_or("-"));
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok::<_, ListenerError>(())
            }
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
