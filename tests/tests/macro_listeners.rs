//! `#[rabbit_listener]` end to end: listeners declared only by the attribute receive what
//! `Template` publishes through direct, fanout, topic and headers exchanges; `Ok` acks, `Err`
//! dead-letters, a return value reaches `reply_to`; the extractors, manual acks and queue
//! arguments work. On the bundled broker and on RabbitMQ.
//!
//! Attribute arguments are literals, so the names here are fixed (all under `macro.e2e.`); each
//! test runs only its own listeners (`App::listeners`), and deletes what it declared before and
//! after, so that a run that died half-way does not disturb the next one on a shared RabbitMQ.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use amqp_core::testing::TestApp;
use amqp_core::types::{AMQPValue, BasicProperties, FieldTable};
use amqp_core::{
    Acker, App, ListenerError, Message, Metadata, Queue, State, Template, rabbit_listener,
};
use common::{QUIET, WAIT, code, within};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use serde::{Deserialize, Serialize};
use tests::{TestBroker, conformance};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Note {
    text: String,
}

fn note(text: &str) -> Note {
    Note { text: text.into() }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    fail: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Number(i64);

// ---- the listeners ----

#[rabbit_listener(
    queue = "macro.e2e.direct",
    exchange = "macro.e2e.direct",
    key = "greet",
    durable = false,
    auto_delete = true
)]
async fn on_direct(note: Note) {
    let _ = note;
}

#[rabbit_listener(
    queue = "macro.e2e.fanout.a",
    exchange = "macro.e2e.fanout",
    exchange_type = "fanout",
    durable = false,
    auto_delete = true
)]
async fn on_fanout_a(note: Note) -> Result<(), ListenerError> {
    let _ = note;
    Ok(())
}

#[rabbit_listener(
    queue = "macro.e2e.fanout.b",
    exchange = "macro.e2e.fanout",
    exchange_type = "fanout",
    durable = false,
    auto_delete = true
)]
async fn on_fanout_b(note: Note) -> Result<(), ListenerError> {
    let _ = note;
    Ok(())
}

#[rabbit_listener(
    queue = "macro.e2e.topic",
    exchange = "macro.e2e.topic",
    exchange_type = "topic",
    key = ["order.*.created", "order.#.deleted"],
    durable = false,
    auto_delete = true
)]
async fn on_topic(meta: Metadata, note: Note) -> Result<(), ListenerError> {
    assert!(meta.routing_key.starts_with("order."));
    let _ = note;
    Ok(())
}

#[rabbit_listener(
    queue = "macro.e2e.headers",
    exchange = "macro.e2e.headers",
    exchange_type = "headers",
    headers(kind = "audit", "region" = "eu"),
    x_match = "all",
    durable = false,
    auto_delete = true
)]
async fn on_headers(note: Note) -> Result<(), ListenerError> {
    let _ = note;
    Ok(())
}

/// Fails the jobs that say so; its queue dead-letters to `macro.e2e.dlx`.
#[rabbit_listener(
    queue = "macro.e2e.work",
    durable = false,
    dead_letter_exchange = "macro.e2e.dlx"
)]
async fn work(job: Job) -> Result<(), ListenerError> {
    if job.fail {
        Err(ListenerError::reject(format!("job {} failed", job.id)))
    } else {
        Ok(())
    }
}

/// The dead-letter queue behind `work`, declared (with its exchange) by its own listener.
#[rabbit_listener(
    queue = "macro.e2e.dlq",
    exchange = "macro.e2e.dlx",
    exchange_type = "fanout",
    durable = false,
    auto_delete = true
)]
async fn dead_letters(job: Job) -> Result<(), ListenerError> {
    let _ = job;
    Ok(())
}

#[rabbit_listener(queue = "macro.e2e.rpc", durable = false, auto_delete = true)]
async fn double(n: Number) -> Result<Number, ListenerError> {
    Ok(Number(n.0 * 2))
}

/// Shared state for `extractors`.
struct Counter(AtomicUsize);

/// What `extractors` forwards, to show what its extractors gave it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Seen {
    routing_key: String,
    redelivered: bool,
    count: usize,
    text: String,
}

#[rabbit_listener(queue = "macro.e2e.extract", durable = false, auto_delete = true)]
async fn extractors(
    meta: Metadata,
    State(counter): State<Counter>,
    template: Template,
    note: Note,
) -> Result<(), ListenerError> {
    let seen = Seen {
        routing_key: meta.routing_key.clone(),
        redelivered: meta.redelivered,
        count: counter.0.fetch_add(1, Ordering::SeqCst) + 1,
        text: note.text,
    };
    template
        .convert_and_send("", "macro.e2e.extract.out", &seen)
        .await?;
    Ok(())
}

#[rabbit_listener(
    queue = "macro.e2e.manual",
    durable = false,
    ack = "manual",
    prefetch = 1,
    concurrency = 2
)]
async fn manual(acker: Acker, job: Job) -> Result<(), ListenerError> {
    let _ = job;
    acker.ack().await?;
    Ok(())
}

#[rabbit_listener(
    queue = "macro.e2e.args",
    durable = false,
    auto_delete = true,
    dead_letter_exchange = "macro.e2e.args.dlx",
    max_length = 5,
    arguments("x-overflow" = "reject-publish")
)]
async fn with_arguments(note: Note) {
    let _ = note;
}

// ---- helpers ----

/// A recording app on `b` that runs only `listeners`.
async fn start<const N: usize>(b: &TestBroker, listeners: [&str; N]) -> TestApp {
    let app = App::new()
        .url(b.url())
        .connection_name("macro.e2e")
        .listeners(listeners);
    within("the app to start", TestApp::start_with(app))
        .await
        .expect("the app starts")
}

/// Deletes queues and exchanges, each on its own channel (one that does not exist is fine).
async fn delete(b: &TestBroker, queues: &[&str], exchanges: &[&str]) {
    let conn = within("connect", b.connect()).await;
    for queue in queues {
        let ch = within("channel.open", conn.create_channel())
            .await
            .expect("channel.open");
        let _ = within(
            "queue.delete",
            ch.queue_delete((*queue).into(), QueueDeleteOptions::default()),
        )
        .await;
    }
    for exchange in exchanges {
        let ch = within("channel.open", conn.create_channel())
            .await
            .expect("channel.open");
        let _ = within(
            "exchange.delete",
            ch.exchange_delete((*exchange).into(), ExchangeDeleteOptions::default()),
        )
        .await;
    }
    tests::close_quietly(&conn, "done").await;
}

/// The notes a listener received, in a set (deliveries may come in any order).
async fn notes(app: &TestApp, listener: &str, n: usize) -> BTreeSet<Note> {
    let calls = app.calls(listener, n, WAIT).await.expect("the calls");
    calls
        .iter()
        .map(|c| c.payload::<Note>().expect("a note"))
        .collect()
}

/// A JSON note with headers, as `Template::send` takes it.
fn note_with_headers(text: &str, headers: &[(&str, &str)]) -> Message {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    Message::new(serde_json::to_vec(&note(text)).expect("json")).with_properties(
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(table),
    )
}

// ---- the tests ----

async fn direct_exchange(b: TestBroker) {
    delete(&b, &["macro.e2e.direct"], &["macro.e2e.direct"]).await;
    let app = start(&b, ["on_direct"]).await;
    let t = app.template();
    t.convert_and_send("macro.e2e.direct", "greet", &note("hello"))
        .await
        .expect("send");
    t.convert_and_send("macro.e2e.direct", "other", &note("unrouted"))
        .await
        .expect("send");
    assert_eq!(
        notes(&app, "on_direct", 1).await,
        BTreeSet::from([note("hello")])
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(app.calls("on_direct", 0, WAIT).await.unwrap().len(), 1);
    app.shutdown().await;
    delete(&b, &["macro.e2e.direct"], &["macro.e2e.direct"]).await;
    b.shutdown().await;
}

async fn fanout_exchange(b: TestBroker) {
    let queues = ["macro.e2e.fanout.a", "macro.e2e.fanout.b"];
    delete(&b, &queues, &["macro.e2e.fanout"]).await;
    let app = start(&b, ["on_fanout_a", "on_fanout_b"]).await;
    app.template()
        .convert_and_send("macro.e2e.fanout", "ignored", &note("to all"))
        .await
        .expect("send");
    for listener in ["on_fanout_a", "on_fanout_b"] {
        assert_eq!(
            notes(&app, listener, 1).await,
            BTreeSet::from([note("to all")])
        );
    }
    app.shutdown().await;
    delete(&b, &queues, &["macro.e2e.fanout"]).await;
    b.shutdown().await;
}

async fn topic_exchange(b: TestBroker) {
    delete(&b, &["macro.e2e.topic"], &["macro.e2e.topic"]).await;
    let app = start(&b, ["on_topic"]).await;
    for (key, text) in [
        ("order.eu.created", "created"),
        ("order.eu.paid", "paid"),
        ("order.eu.late.deleted", "deleted"),
    ] {
        app.template()
            .convert_and_send("macro.e2e.topic", key, &note(text))
            .await
            .expect("send");
    }
    assert_eq!(
        notes(&app, "on_topic", 2).await,
        BTreeSet::from([note("created"), note("deleted")])
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(app.calls("on_topic", 0, WAIT).await.unwrap().len(), 2);
    app.shutdown().await;
    delete(&b, &["macro.e2e.topic"], &["macro.e2e.topic"]).await;
    b.shutdown().await;
}

async fn headers_exchange(b: TestBroker) {
    delete(&b, &["macro.e2e.headers"], &["macro.e2e.headers"]).await;
    let app = start(&b, ["on_headers"]).await;
    for message in [
        note_with_headers("both", &[("kind", "audit"), ("region", "eu")]),
        note_with_headers("other region", &[("kind", "audit"), ("region", "us")]),
        note_with_headers("kind only", &[("kind", "audit")]),
    ] {
        app.template()
            .send("macro.e2e.headers", "", message)
            .await
            .expect("send");
    }
    assert_eq!(
        notes(&app, "on_headers", 1).await,
        BTreeSet::from([note("both")])
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(app.calls("on_headers", 0, WAIT).await.unwrap().len(), 1);
    app.shutdown().await;
    delete(&b, &["macro.e2e.headers"], &["macro.e2e.headers"]).await;
    b.shutdown().await;
}

async fn ok_acks_and_err_dead_letters(b: TestBroker) {
    let queues = ["macro.e2e.work", "macro.e2e.dlq"];
    delete(&b, &queues, &["macro.e2e.dlx"]).await;
    let app = start(&b, ["work", "dead_letters"]).await;
    for job in [Job { id: 1, fail: false }, Job { id: 2, fail: true }] {
        app.template()
            .convert_and_send("", "macro.e2e.work", &job)
            .await
            .expect("send");
    }
    let calls = app.calls("work", 2, WAIT).await.expect("work was called");
    assert_eq!(calls.len(), 2);
    let dead = app
        .calls("dead_letters", 1, WAIT)
        .await
        .expect("the failed job was dead-lettered");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload::<Job>().unwrap(), Job { id: 2, fail: true });
    assert_eq!(dead[0].metadata.exchange, "macro.e2e.dlx");
    assert!(dead[0].metadata.header("x-death").is_some());
    app.shutdown().await;
    // Acknowledged, not requeued: with the consumers gone nothing comes back.
    assert_eq!(common::ready(&b, "macro.e2e.work").await, 0);
    delete(&b, &queues, &["macro.e2e.dlx"]).await;
    b.shutdown().await;
}

async fn return_value_reaches_reply_to(b: TestBroker) {
    delete(&b, &["macro.e2e.rpc"], &[]).await;
    let app = start(&b, ["double"]).await;
    let reply: Number = app
        .template()
        .convert_send_and_receive("", "macro.e2e.rpc", &Number(21), WAIT)
        .await
        .expect("a reply");
    assert_eq!(reply, Number(42));
    let calls = app
        .calls("double", 1, WAIT)
        .await
        .expect("double was called");
    assert_eq!(calls[0].reply::<Number>(), Some(Number(42)));
    app.shutdown().await;
    delete(&b, &["macro.e2e.rpc"], &[]).await;
    b.shutdown().await;
}

async fn extractors_metadata_state_template(b: TestBroker) {
    let queues = ["macro.e2e.extract", "macro.e2e.extract.out"];
    delete(&b, &queues, &[]).await;
    let app = App::new()
        .url(b.url())
        .listeners(["extractors"])
        .state(Counter(AtomicUsize::new(10)));
    let app = within("the app to start", TestApp::start_with(app))
        .await
        .expect("the app starts");
    app.app()
        .connection()
        .declare(Queue::transient("macro.e2e.extract.out").auto_delete())
        .await
        .expect("declare");
    app.template()
        .convert_and_send("", "macro.e2e.extract", &note("hi"))
        .await
        .expect("send");
    let out = app
        .messages("macro.e2e.extract.out", 1, WAIT)
        .await
        .expect("the forwarded message");
    let seen: Seen = serde_json::from_slice(&out[0].body).expect("json");
    assert_eq!(
        seen,
        Seen {
            routing_key: "macro.e2e.extract".into(),
            redelivered: false,
            count: 11,
            text: "hi".into(),
        }
    );
    app.shutdown().await;
    delete(&b, &queues, &[]).await;
    b.shutdown().await;
}

async fn manual_ack_with_acker(b: TestBroker) {
    delete(&b, &["macro.e2e.manual"], &[]).await;
    let app = start(&b, ["manual"]).await;
    for id in 0..4 {
        app.template()
            .convert_and_send("", "macro.e2e.manual", &Job { id, fail: false })
            .await
            .expect("send");
    }
    // With prefetch 1 per consumer, four calls only happen if the handler's acks went through.
    let calls = app
        .calls("manual", 4, WAIT)
        .await
        .expect("manual was called");
    assert_eq!(calls.len(), 4);
    app.shutdown().await;
    assert_eq!(common::ready(&b, "macro.e2e.manual").await, 0);
    delete(&b, &["macro.e2e.manual"], &[]).await;
    b.shutdown().await;
}

async fn queue_arguments_are_declared(b: TestBroker) {
    delete(&b, &["macro.e2e.args"], &[]).await;
    let app = start(&b, ["with_arguments"]).await;
    let declare = |max_length: i64| {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("macro.e2e.args.dlx".into()),
        );
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(max_length));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        let b = &b;
        async move {
            let (_conn, ch) = common::open(b).await;
            let options = QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            };
            within(
                "queue.declare",
                ch.queue_declare("macro.e2e.args".into(), options, args),
            )
            .await
        }
    };
    // The same arguments are equivalent; a different x-max-length is not.
    declare(5).await.expect("an equivalent declare");
    common::assert_code(declare(6).await, code::PRECONDITION_FAILED);
    app.shutdown().await;
    delete(&b, &["macro.e2e.args"], &[]).await;
    b.shutdown().await;
}

conformance!(
    direct_exchange,
    fanout_exchange,
    topic_exchange,
    headers_exchange,
    ok_acks_and_err_dead_letters,
    return_value_reaches_reply_to,
    extractors_metadata_state_template,
    manual_ack_with_acker,
    queue_arguments_are_declared,
);

/// The attribute leaves the function as it was: tests call it directly.
#[tokio::test]
async fn listeners_stay_plain_functions() {
    assert_eq!(double(Number(4)).await.unwrap(), Number(8));
    assert!(work(Job { id: 3, fail: true }).await.is_err());
}

/// What the attribute registered, as the app sees it.
#[test]
fn definitions_say_what_the_attribute_said() {
    let all = amqp_core::ListenerDefinition::all();
    let find = |name: &str| {
        all.iter()
            .find(|d| d.id == format!("macro_listeners::{name}"))
            .unwrap_or_else(|| panic!("{name} is registered"))
    };
    let topic = find("on_topic");
    assert_eq!(topic.queue, "macro.e2e.topic");
    assert_eq!(topic.exchange, Some("macro.e2e.topic"));
    assert_eq!(topic.exchange_type, "topic");
    assert_eq!(topic.keys, ["order.*.created", "order.#.deleted"]);
    assert!(!topic.durable && topic.auto_delete && !topic.exclusive);
    assert!(topic.location.starts_with(file!()));

    let direct = find("on_direct");
    assert_eq!(direct.exchange_type, "direct", "the default type");

    let manual = find("manual");
    assert_eq!(manual.ack, amqp_core::AckMode::Manual);
    assert_eq!(manual.prefetch, Some(1));
    assert_eq!(manual.concurrency, Some(2));

    use amqp_core::__private::ArgValue;
    let headers = find("on_headers");
    assert_eq!(
        headers.binding_arguments,
        [
            ("x-match", ArgValue::Str("all")),
            ("kind", ArgValue::Str("audit")),
            ("region", ArgValue::Str("eu")),
        ]
    );
    let args = find("with_arguments");
    assert_eq!(
        args.queue_arguments,
        [
            (
                "x-dead-letter-exchange",
                ArgValue::Str("macro.e2e.args.dlx")
            ),
            ("x-max-length", ArgValue::Int(5)),
            ("x-overflow", ArgValue::Str("reject-publish")),
        ]
    );
    assert_eq!(
        find("work").queue_arguments,
        [("x-dead-letter-exchange", ArgValue::Str("macro.e2e.dlx"))]
    );
}
