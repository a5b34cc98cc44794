//! Every example, run end to end and its outcome checked: `NAME::bundled` on a fresh embedded
//! broker, `NAME::rabbitmq` against the RabbitMQ named by `AMQP_TEST_RABBITMQ_URL` (skipped when
//! it is unset), as the `tests` crate's `conformance!` does.
//!
//! Each example file is compiled in here as a module; its `run(app)` selects its own listeners
//! (their ids are unique across the examples), so all of them share this one test binary.

use std::collections::{BTreeMap, BTreeSet};

use amqp_core::App;

#[allow(dead_code)]
#[path = "../examples/hello.rs"]
mod hello_example;
#[allow(dead_code)]
#[path = "../examples/idempotent_payment.rs"]
mod idempotent_payment_example;
#[allow(dead_code)]
#[path = "../examples/pub_sub.rs"]
mod pub_sub_example;
#[allow(dead_code)]
#[path = "../examples/rate_limited.rs"]
mod rate_limited_example;
#[allow(dead_code)]
#[path = "../examples/routing.rs"]
mod routing_example;
#[allow(dead_code)]
#[path = "../examples/rpc.rs"]
mod rpc_example;
#[allow(dead_code)]
#[path = "../examples/topics.rs"]
mod topics_example;
#[allow(dead_code)]
#[path = "../examples/work_queues.rs"]
mod work_queues_example;

const RABBITMQ_URL_VAR: &str = "AMQP_TEST_RABBITMQ_URL";

/// Declares `NAME::bundled` and `NAME::rabbitmq` for `async fn NAME(app: App)`.
macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bundled() {
                super::$name(amqp_core::App::new().embedded()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq() {
                match std::env::var(super::RABBITMQ_URL_VAR).ok().filter(|u| !u.is_empty()) {
                    Some(url) => super::$name(amqp_core::App::new().url(url)).await,
                    None => eprintln!("skipped: set {} to run this against RabbitMQ", super::RABBITMQ_URL_VAR),
                }
            }
        }
    )+};
}

on_both!(hello, work_queues, pub_sub, routing, topics, rpc);
on_both!(
    idempotent_payment_memory,
    idempotent_payment_redis,
    rate_limited
);

async fn hello(app: App) {
    let report = hello_example::run(app).await.expect("hello runs");
    let modes = BTreeMap::from([
        ("auto", (2, true)),   // failed, requeued, printed on redelivery
        ("manual", (2, true)), // nacked with requeue, printed and acked on redelivery
        ("none", (1, false)),  // failed once, never seen again
    ]);
    assert_eq!(report.modes, modes, "{report}");
}

async fn work_queues(app: App) {
    let report = work_queues_example::run(app)
        .await
        .expect("work_queues runs");
    assert_eq!(report.fast + report.slow, work_queues_example::TASKS);
    assert!(report.slow >= 1, "both workers took tasks: {report}");
    assert!(
        report.fast > 2 * report.slow,
        "the fast one did more: {report}"
    );
}

async fn pub_sub(app: App) {
    let report = pub_sub_example::run(app).await.expect("pub_sub runs");
    let lines = |ns: &[&str]| ns.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        report.screen,
        lines(&[
            "1: service started",
            "2: user ann logged in",
            "3: user bob logged in"
        ])
    );
    assert_eq!(
        report.archive,
        lines(&["2: user ann logged in", "3: user bob logged in"])
    );
}

async fn routing(app: App) {
    let report = routing_example::run(app).await.expect("routing runs");
    let expected = BTreeMap::from([
        (
            "logs.direct.console".to_string(),
            vec!["info".to_string(), "warning".into(), "error".into()],
        ),
        ("logs.direct.errors".to_string(), vec!["error".to_string()]),
    ]);
    assert_eq!(report.queues, expected, "{report}");
}

async fn topics(app: App) {
    let report = topics_example::run(app).await.expect("topics runs");
    let reached = |queues: &[&str]| -> BTreeSet<String> {
        queues.iter().map(|q| format!("logs.topic.{q}")).collect()
    };
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("kern.critical", reached(&["kernel", "critical"])),
        ("kern.info", reached(&["kernel"])),
        ("auth.critical", reached(&["critical", "auth"])),
        ("auth", reached(&["auth"])), // `#` matches zero words
        ("auth.login.failed", reached(&["auth"])), // … or several
        ("kern.disk.full", reached(&[])), // `*` matches exactly one
        ("cron.warning", reached(&[])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(report.reached, expected, "{report}");
}

async fn rpc(app: App) {
    use rpc_example::{Outcome, Quote};
    let report = rpc_example::run(app).await.expect("rpc runs");
    let coffee = Quote {
        item: "coffee".into(),
        total_cents: 700,
    };
    assert_eq!(
        report.calls,
        vec![
            ("2 x coffee".to_string(), Outcome::Answered(Ok(coffee))),
            (
                "1 x caviar".to_string(),
                Outcome::Answered(Err("no price for 'caviar'".into()))
            ),
            ("1 x wedding cake".to_string(), Outcome::TimedOut),
        ]
    );
}

/// Fails the test instead of letting it hang when `run` takes longer than `secs`.
async fn within<T>(secs: u64, run: impl std::future::Future<Output = T>) -> T {
    let limit = std::time::Duration::from_secs(secs);
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("the example did not finish within {secs} s"))
}

/// The payment example's queues have fixed names: its runs against one RabbitMQ take turns.
static PAYMENTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn idempotent_payment(app: App, redis_url: Option<&str>) {
    let _turn = PAYMENTS.lock().await;
    let report = within(30, idempotent_payment_example::run(app, redis_url))
        .await
        .expect("idempotent_payment runs");
    let ids: Vec<_> = report.notices.iter().map(|w| w.id.clone()).collect();
    assert_eq!(
        report.books.debited, ids,
        "each debited once, in order: {report}"
    );
    assert_eq!(report.books.texts, 3, "one text per withdrawal: {report}");
    assert_eq!(report.books.withdrawn, 120 + 60 + 300, "{report}");
    assert_eq!(report.left_in_queue, 0, "every copy acknowledged: {report}");
}

async fn idempotent_payment_memory(app: App) {
    idempotent_payment(app, None).await;
}

/// Redis at `REDIS_URL`, or the local one CI runs; one that does not answer fails the test.
async fn idempotent_payment_redis(app: App) {
    let url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    idempotent_payment(app, Some(&url)).await;
}

async fn rate_limited(app: App) {
    let report = within(90, rate_limited_example::run(app))
        .await
        .expect("rate_limited runs");
    let (published, processed) = (report.published_in, report.processed_in);
    assert!(
        processed >= std::time::Duration::from_secs(9),
        "1,000 orders at 100/s take about 10 s: {report}"
    );
    assert!(
        published * 4 < processed,
        "the publisher was not held back: {report}"
    );
    let rate = report.steady_rate();
    assert!(
        (60.0..=140.0).contains(&rate),
        "about 100/s in the steady part: {report}"
    );
    assert!(
        report.steady().iter().all(|&n| n <= 140),
        "no second went much over the limit: {report}"
    );
}
