//! Helpers for the broker's integration tests, above all those that run the `amqp-broker` binary
//! (each such file has `mod common;`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

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
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("queue.declare");
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
