//! `#[rabbit_listener(..., retry(...))]` end to end: the app declares `<queue>.dlq`, a job that
//! fails once is handled on its second attempt, one that always fails is tried `max_attempts`
//! times and lands in the dlq with the error in headers. On the bundled broker (delayed
//! exchange) and on RabbitMQ (TTL wait queues).
//!
//! Attribute arguments are literals, so the names are fixed (`macro.e2e.retry*`); the test
//! deletes them before and after, so that a run that died half-way does not disturb the next.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amqp_core::retry::{ATTEMPT_HEADER, EXCEPTION_MESSAGE_HEADER, dead_letter_queue};
use amqp_core::testing::TestApp;
use amqp_core::types::AMQPValue;
use amqp_core::{App, State, rabbit_listener};
use common::{QUIET, WAIT, within};
use lapin::options::QueueDeleteOptions;
use serde::{Deserialize, Serialize};
use tests::{TestBroker, conformance};

const QUEUE: &str = "macro.e2e.retry";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    /// How many attempts fail before one succeeds.
    failures: usize,
}

/// Attempts so far, per job id (ids 1 and 2), per app (the two backends run side by side).
#[derive(Default)]
struct Attempts([AtomicUsize; 3]);

#[rabbit_listener(
    queue = "macro.e2e.retry",
    durable = false,
    id = "retrying",
    retry(max_attempts = 3, initial = "200ms", multiplier = 2.0, max = "1s")
)]
async fn retrying(State(attempts): State<Arc<Attempts>>, job: Job) -> Result<(), std::io::Error> {
    let attempt = attempts.0[job.id as usize].fetch_add(1, Ordering::SeqCst) + 1;
    if attempt <= job.failures {
        return Err(std::io::Error::other(format!("job {} failed", job.id)));
    }
    Ok(())
}

async fn delete(b: &TestBroker) {
    let (_conn, ch) = common::open(b).await;
    let mut queues = vec![QUEUE.to_owned(), dead_letter_queue(QUEUE)];
    queues.extend(["200", "400"].map(|ms| format!("{QUEUE}.retry.{ms}")));
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

async fn retry_attribute_end_to_end(b: TestBroker) {
    delete(&b).await;
    let attempts = Arc::new(Attempts::default());
    let app = App::new()
        .url(b.url())
        .state(attempts.clone())
        .connection_name("macro.e2e.retry")
        .listeners(["retrying"]);
    let app = within("the app to start", TestApp::start_with(app))
        .await
        .expect("the app starts");
    for job in [
        Job { id: 1, failures: 1 },
        Job {
            id: 2,
            failures: 10,
        },
    ] {
        app.template()
            .convert_and_send("", QUEUE, &job)
            .await
            .expect("send");
    }
    let dlq = dead_letter_queue(QUEUE);
    let dead = app
        .template()
        .receive(&dlq, Duration::from_secs(10))
        .await
        .expect("receive")
        .expect("the always-failing job reaches the dlq");
    let job: Job = serde_json::from_slice(&dead.body).expect("a job");
    assert_eq!(job.id, 2);
    let headers = dead.properties.headers().clone().unwrap_or_default();
    assert_eq!(
        headers.inner().get(ATTEMPT_HEADER),
        Some(&AMQPValue::LongLongInt(3))
    );
    assert_eq!(
        headers.inner().get(EXCEPTION_MESSAGE_HEADER),
        Some(&AMQPValue::LongString("job 2 failed".into()))
    );
    let calls = app.calls("retrying", 5, WAIT).await.expect("the calls");
    tokio::time::sleep(QUIET).await;
    assert_eq!(calls.len(), 5, "job 1 twice, job 2 three times");
    assert_eq!(attempts.0[1].load(Ordering::SeqCst), 2);
    assert_eq!(attempts.0[2].load(Ordering::SeqCst), 3);
    let left = app.template().receive(&dlq, QUIET).await.expect("receive");
    assert!(
        left.is_none(),
        "job 1 succeeded on its retry: not in the dlq"
    );
    app.shutdown().await;
    delete(&b).await;
    b.shutdown().await;
}

conformance!(retry_attribute_end_to_end);
