//! Settings of the bundled broker itself (users, tuning, forced closes, shutdown): these have no
//! RabbitMQ counterpart to compare with, so they run on the bundled broker only.

mod common;

use std::time::Duration;

use common::{open, within};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, Event};
use tests::{TestBroker, unique};

fn url_for(b: &TestBroker, user: &str, password: &str) -> String {
    format!("amqp://{user}:{password}@{}/%2f", b.addr())
}

async fn connects(url: &str) -> bool {
    within(
        "connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .is_ok()
}

#[tokio::test]
async fn configured_users_replace_guest() {
    let builder = amqp_broker::Broker::builder()
        .user("app", "s3cret")
        .user("ops", "pw");
    let b = TestBroker::bundled_with(builder).await;
    assert!(
        b.url().starts_with("amqp://app:s3cret@"),
        "amqp_url names the first user"
    );
    assert!(connects(&url_for(&b, "app", "s3cret")).await);
    assert!(connects(&url_for(&b, "ops", "pw")).await);
    assert!(
        !connects(&url_for(&b, "guest", "guest")).await,
        "guest is gone"
    );
    assert!(!connects(&url_for(&b, "app", "wrong")).await);
}

#[tokio::test]
async fn tune_offers_the_configured_limits() {
    let builder = amqp_broker::Broker::builder()
        .frame_max_bytes(8192)
        .heartbeat_secs(7);
    let b = TestBroker::bundled_with(builder).await;
    let conn = b.connect().await;
    let tuned = conn.configuration();
    assert_eq!(tuned.frame_max(), 8192);
    assert_eq!(tuned.heartbeat(), 7);
    // A body much larger than frame_max still round-trips (split into frames of at most 8192).
    let ch = within("channel.open", conn.create_channel()).await.unwrap();
    let q = common::fresh_queue(&ch, "settings.frames").await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    common::publish(&ch, "", &q, &body).await;
    assert_eq!(common::get_eventually(&ch, &q).await, body);
}

/// `close_all_connections` closes every client connection with 320 CONNECTION_FORCED and keeps
/// accepting new ones (what the framework's recovery tests rely on).
#[tokio::test]
async fn close_all_connections_forces_clients_off_and_keeps_serving() {
    let b = TestBroker::bundled().await;
    let (conn, _ch) = open(&b).await;
    let mut events = conn.events_listener();
    b.broker().expect("bundled").close_all_connections();
    let code = within("the forced close", async {
        loop {
            match events.next().await {
                Some(Event::Error(e)) => break common::reply_code(&e),
                Some(_) => continue,
                None => break None,
            }
        }
    })
    .await;
    assert_eq!(code, Some(320));
    let (_conn2, ch2) = open(&b).await;
    common::fresh_queue(&ch2, "settings.after-kick").await;
}

/// Shutdown closes connections in order (the client sees 320) and returns.
#[tokio::test]
async fn shutdown_closes_connections_and_returns() {
    let b = TestBroker::bundled().await;
    let (conn, ch) = open(&b).await;
    let q = unique("settings.shutdown");
    let opts = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    within(
        "queue.declare",
        ch.queue_declare(q.as_str().into(), opts, FieldTable::default()),
    )
    .await
    .unwrap();
    let mut consumer = within(
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let addr = b.addr();
    tokio::time::timeout(Duration::from_secs(10), b.shutdown())
        .await
        .expect("shutdown returns");
    // The consumer ends and the port no longer accepts.
    let end = within("the consumer to end", async {
        while let Some(Ok(_)) = consumer.next().await {}
    });
    end.await;
    assert!(!conn.status().connected());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
