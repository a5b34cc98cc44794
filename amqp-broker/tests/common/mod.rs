//! Helpers for the broker's integration tests: running the `amqp-broker` binary, an embedded
//! broker with the management API, and the lapin declarations several tests make (each file that
//! uses them has `mod common;`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use amqp_broker::Broker;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer, ExchangeKind, Queue};

/// The `amqp-broker` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_amqp-broker");

/// The binary set to serve AMQP on `port`, the management API on a port of its own choosing, and
/// to keep its data in `dir`; the caller adds flags, picks stdio, then spawns or runs it.
pub fn broker_command(port: u16, dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "--port",
            &port.to_string(),
            "--management-port",
            "0",
            "--data-dir",
        ])
        .arg(dir);
    command
}

/// Asks the broker process to shut down in order, as a service manager would (`kill -TERM`).
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// An embedded broker on ephemeral ports with the management API (HTTP) on.
pub async fn management_broker() -> Broker {
    Broker::builder()
        .port(0)
        .management_port(0)
        .start()
        .await
        .expect("broker starts")
}

/// A port free at the moment (the broker binary is told it with `--port`).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The broker process's exit status; kills it and fails the test if it runs past `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("broker did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Declares queue `name` (server-named when empty) with `options` and no arguments.
pub async fn declare_queue(ch: &Channel, name: &str, options: QueueDeclareOptions) -> Queue {
    ch.queue_declare(name.into(), options, FieldTable::default())
        .await
        .expect("queue.declare")
}

/// Declares the durable queue `name` (no arguments); the broker's answer says how many messages
/// it already holds.
pub async fn durable_queue(ch: &Channel, name: &str) -> Queue {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_queue(ch, name, options).await
}

/// The options of an exclusive queue: private to its connection and deleted when that closes.
pub fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// A consumer on `queue` tagged `tag` that takes its deliveries without acknowledging them.
pub async fn consume_no_ack(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    ch.basic_consume(queue.into(), tag.into(), options, FieldTable::default())
        .await
        .expect("basic.consume")
}

/// Queue arguments that dead-letter through the default exchange to the queue `dlq`.
pub fn dead_letter_args(dlq: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dlq.into()),
    );
    args
}

/// Declares the delayed exchange `exchange` (routing as `direct`; durable or not) and the durable
/// queue `queue` bound to it with key `k`.
pub async fn delayed_topology(ch: &Channel, exchange: &str, durable_exchange: bool, queue: &str) {
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("direct".into()),
    );
    let options = ExchangeDeclareOptions {
        durable: durable_exchange,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        options,
        args,
    )
    .await
    .expect("exchange.declare");
    durable_queue(ch, queue).await;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

/// The address this machine reaches others from (not loopback), if it has one: for the
/// loopback-only users' tests.
pub fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // A UDP connect sends nothing: it only picks the route and so the source address.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
