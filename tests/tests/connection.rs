//! Connection and channel lifecycle: handshake, authentication, server properties, close in both
//! directions, and the isolation of a channel error from other channels and connections.

mod common;

use common::{Errors, assert_code, code, fresh_queue, get_eventually, open, publish, within};
use lapin::options::{BasicConsumeOptions, ChannelFlowOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPClass, connection::AMQPMethod};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use tests::{TestBroker, conformance, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect_with_guest(b: TestBroker) {
    let conn = within("connect", b.connect()).await;
    assert!(conn.status().connected());
    assert_eq!(conn.status().username(), "guest");
    conn.close(200, "bye".into()).await.expect("close");
}

async fn wrong_password_is_refused(b: TestBroker) {
    let mut uri: AMQPUri = b.url().parse().expect("url parses");
    uri.authority.userinfo.password = "definitely-wrong".into();
    let res = within(
        "connect",
        Connection::connect_uri(uri, ConnectionProperties::default()),
    )
    .await;
    // The server advertises `authentication_failure_close`, so lapin gets a connection.close
    // with ACCESS_REFUSED rather than a bare socket close.
    let err = res.expect_err("a wrong password must be refused");
    assert_eq!(
        common::reply_code(&err),
        Some(code::ACCESS_REFUSED),
        "{err}"
    );
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
}

async fn unknown_user_is_refused(b: TestBroker) {
    let mut uri: AMQPUri = b.url().parse().expect("url parses");
    uri.authority.userinfo.username = unique("nobody");
    let res = within(
        "connect",
        Connection::connect_uri(uri, ConnectionProperties::default()),
    )
    .await;
    let err = res.expect_err("an unknown user must be refused");
    assert_eq!(
        common::reply_code(&err),
        Some(code::ACCESS_REFUSED),
        "{err}"
    );
}

/// Reads one frame: (type, channel, payload). Checks the frame-end octet.
async fn read_frame(sock: &mut TcpStream) -> (u8, u16, Vec<u8>) {
    let mut header = [0u8; 7];
    sock.read_exact(&mut header).await.expect("frame header");
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    sock.read_exact(&mut payload).await.expect("frame payload");
    assert_eq!(payload.pop(), Some(0xCE), "frame-end octet");
    (
        header[0],
        u16::from_be_bytes([header[1], header[2]]),
        payload,
    )
}

/// lapin does not expose the server properties, so read connection.start off a raw socket.
async fn connection_start(b: &TestBroker) -> lapin::protocol::connection::Start {
    within("connection.start", async {
        let mut sock = TcpStream::connect(b.addr()).await.expect("tcp connect");
        sock.write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .expect("protocol header");
        let (kind, channel, payload) = read_frame(&mut sock).await;
        assert_eq!((kind, channel), (1, 0), "a method frame on channel 0");
        match lapin::protocol::parse_class(&payload[..]) {
            Ok((_, AMQPClass::Connection(AMQPMethod::Start(start)))) => start,
            other => panic!("expected connection.start, got {other:?}"),
        }
    })
    .await
}

async fn server_properties_and_capabilities(b: TestBroker) {
    let start = connection_start(&b).await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let props = start.server_properties.inner();
    for key in ["product", "version"] {
        assert!(
            matches!(props.get(key), Some(AMQPValue::LongString(s)) if !s.as_bytes().is_empty()),
            "server property {key}: {:?}",
            props.get(key)
        );
    }
    let Some(AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
        panic!("capabilities table missing: {props:?}");
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "authentication_failure_close",
        "direct_reply_to",
        "connection.blocked",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap}"
        );
    }
    let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).to_string();
    assert!(
        mechanisms.split_whitespace().any(|m| m == "PLAIN"),
        "mechanisms: {mechanisms}"
    );
    let locales = String::from_utf8_lossy(start.locales.as_bytes()).to_string();
    assert!(
        locales.split_whitespace().any(|l| l == "en_US"),
        "locales: {locales}"
    );
}

/// Encodes connection.start-ok with PLAIN guest/guest and an empty client-properties table.
fn start_ok_frame() -> Vec<u8> {
    let mut payload = vec![0, 10, 0, 11]; // connection.start-ok
    payload.extend_from_slice(&0u32.to_be_bytes()); // client-properties: empty table
    payload.push(5);
    payload.extend_from_slice(b"PLAIN");
    let response = b"\0guest\0guest";
    payload.extend_from_slice(&(response.len() as u32).to_be_bytes());
    payload.extend_from_slice(response);
    payload.push(5);
    payload.extend_from_slice(b"en_US");
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

/// The server's connection.tune proposes RabbitMQ's defaults: 2047 channels, 128 KiB frames,
/// a 60 s heartbeat; lapin accepts them.
async fn tune_proposes_default_limits(b: TestBroker) {
    let tune = within("connection.tune", async {
        let mut sock = TcpStream::connect(b.addr()).await.expect("tcp connect");
        sock.write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .expect("protocol header");
        let _start = read_frame(&mut sock).await;
        sock.write_all(&start_ok_frame()).await.expect("start-ok");
        let (kind, channel, payload) = read_frame(&mut sock).await;
        assert_eq!((kind, channel), (1, 0));
        match lapin::protocol::parse_class(&payload[..]) {
            Ok((_, AMQPClass::Connection(AMQPMethod::Tune(tune)))) => tune,
            other => panic!("expected connection.tune, got {other:?}"),
        }
    })
    .await;
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (2047, 131_072, 60)
    );

    let conn = within("connect", b.connect()).await;
    let c = conn.configuration();
    assert_eq!(
        (c.channel_max(), c.frame_max(), c.heartbeat()),
        (2047, 131_072, 60)
    );
}

/// A client speaking another protocol gets the server's protocol header back, then the socket is
/// closed (RabbitMQ resets it, so either EOF or a reset counts).
async fn bad_protocol_header_gets_supported_header(b: TestBroker) {
    within("protocol header reply", async {
        let mut sock = TcpStream::connect(b.addr()).await.expect("tcp connect");
        sock.write_all(b"AMQP\x00\x00\x08\x00")
            .await
            .expect("write header");
        let mut reply = [0u8; 8];
        sock.read_exact(&mut reply)
            .await
            .expect("protocol header back");
        assert_eq!(&reply, b"AMQP\x00\x00\x09\x01");
        let mut rest = [0u8; 1];
        let after = sock.read(&mut rest).await;
        assert!(
            matches!(after, Ok(0) | Err(_)),
            "socket must be closed, got {after:?}"
        );
    })
    .await;
}

async fn client_closes_connection(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    within("connection.close", conn.close(200, "bye".into()))
        .await
        .expect("close-ok");
    assert!(conn.status().closed());
    assert!(
        ch.queue_declare(
            unique("q").into(),
            Default::default(),
            FieldTable::default()
        )
        .await
        .is_err()
    );
}

/// A hard error (duplicate consumer tag → 530 NOT_ALLOWED) makes the server close the connection:
/// every channel on it is gone, other connections are untouched.
async fn server_closes_connection_on_hard_error(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let other = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    let q = fresh_queue(&ch, "conn.hard").await;
    let _c = common::consume(&ch, &q, "dup", BasicConsumeOptions::default()).await;
    let res = within(
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "dup".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::NOT_ALLOWED);
    within("connection to close", async {
        while conn.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        other
            .queue_declare(
                unique("q").into(),
                Default::default(),
                FieldTable::default()
            )
            .await
            .is_err()
    );

    let (_conn2, ch2) = open(&b).await;
    let q2 = fresh_queue(&ch2, "conn.after").await;
    publish(&ch2, "", &q2, b"still fine").await;
    assert_eq!(get_eventually(&ch2, &q2).await, b"still fine");
}

async fn many_channels_on_one_connection(b: TestBroker) {
    let conn = within("connect", b.connect()).await;
    let mut channels = Vec::new();
    for _ in 0..50 {
        channels.push(
            within("channel.open", conn.create_channel())
                .await
                .expect("channel.open"),
        );
    }
    let q = fresh_queue(&channels[0], "conn.many").await;
    for (i, ch) in channels.iter().enumerate() {
        publish(ch, "", &q, format!("{i}").as_bytes()).await;
    }
    // Each channel sees the queue, and after a round trip on each channel all 50 messages are in.
    for ch in &channels {
        let ok = within(
            "passive declare",
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("passive declare");
        assert_eq!(ok.name().as_str(), q);
    }
    let last = within(
        "passive declare",
        channels[0].queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare");
    assert_eq!(last.message_count(), 50);
    // Channels can be closed independently.
    for ch in channels.iter().skip(25) {
        within("channel.close", ch.close(200, "done".into()))
            .await
            .expect("channel.close");
    }
    assert_eq!(common::drain(&channels[0], &q).await.len(), 50);
}

async fn client_closes_channel(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    within("channel.close", ch.close(200, "bye".into()))
        .await
        .expect("close-ok");
    assert!(!ch.status().connected());
    assert!(
        ch.queue_declare(
            unique("q").into(),
            Default::default(),
            FieldTable::default()
        )
        .await
        .is_err()
    );
    // The connection itself is fine and a new channel works.
    let ch2 = within("channel.open", conn.create_channel())
        .await
        .expect("channel.open");
    fresh_queue(&ch2, "conn.after-close").await;
    assert!(conn.status().connected());
}

/// A soft error closes only the channel it happened on.
async fn channel_error_is_isolated(b: TestBroker) {
    let (conn, bad) = open(&b).await;
    let good = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    let (_conn2, elsewhere) = open(&b).await;
    let q = common::shared_queue(&good, "conn.iso").await;

    let mut errors = Errors::watch(&conn);
    let res = within(
        "passive declare",
        bad.queue_declare(
            unique("missing").into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::NOT_FOUND);
    assert_eq!(errors.next_code().await, code::NOT_FOUND);
    assert!(
        bad.queue_declare(
            unique("q").into(),
            Default::default(),
            FieldTable::default()
        )
        .await
        .is_err()
    );

    assert!(conn.status().connected());
    publish(&good, "", &q, b"one").await;
    assert_eq!(get_eventually(&good, &q).await, b"one");
    publish(&elsewhere, "", &q, b"two").await;
    assert_eq!(get_eventually(&elsewhere, &q).await, b"two");
    // A fresh channel on the same connection works too.
    let again = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    fresh_queue(&again, "conn.iso2").await;
    common::delete_queue(&good, &q).await;
}

async fn channel_flow_active_is_acknowledged(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let active = within(
        "channel.flow",
        ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("flow-ok");
    assert!(active, "flow-ok echoes active=true");
    // The channel keeps working.
    let q = fresh_queue(&ch, "conn.flow").await;
    publish(&ch, "", &q, b"flowing").await;
    assert_eq!(get_eventually(&ch, &q).await, b"flowing");
}

/// RabbitMQ does not implement client-requested flow stop: channel.flow active=false is a
/// connection error, 540 NOT_IMPLEMENTED.
async fn channel_flow_inactive_is_540(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let mut errors = Errors::watch(&conn);
    let res = within(
        "channel.flow",
        ch.channel_flow(ChannelFlowOptions { active: false }),
    )
    .await;
    assert_code(res, code::NOT_IMPLEMENTED);
    assert_eq!(errors.next_code().await, code::NOT_IMPLEMENTED);
    within("connection to close", async {
        while conn.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A client that goes away (its socket closed, no `connection.close`) while the broker is
/// still writing deliveries to it: every one comes back to the queue, those the broker had
/// queued for the connection but not yet written included. Several rounds, since how many are
/// in flight at the close depends on timing.
async fn deliveries_in_flight_to_a_dropped_connection_are_requeued(b: TestBroker) {
    const MESSAGES: u32 = 2000;
    let (observer, ch) = open(&b).await;
    let queue = common::shared_queue(&ch, "in-flight").await;
    for i in 0..MESSAGES {
        publish(&ch, "", &queue, format!("m{i}").as_bytes()).await;
    }
    for round in 1..=3 {
        within("all messages ready", async {
            while common::ready(&b, &queue).await != MESSAGES {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        let (mut client, _) = tests::raw::RawClient::handshake(&b.addr()).await;
        client.open_channel(1).await;
        let consume = lapin::protocol::basic::Consume {
            queue: queue.as_str().into(),
            consumer_tag: format!("in-flight-{round}").into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: true,
            arguments: FieldTable::default(),
        };
        client
            .send_method(
                1,
                AMQPClass::Basic(lapin::protocol::basic::AMQPMethod::Consume(consume)),
            )
            .await;
        // Gone without a word, with the deliveries on their way.
        drop(client);
    }
    within("every message back in the queue", async {
        while common::ready(&b, &queue).await != MESSAGES {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    common::delete_queue(&ch, &queue).await;
    tests::close_quietly(&observer, "done").await;
}

conformance!(
    channel_flow_active_is_acknowledged,
    channel_flow_inactive_is_540,
    connect_with_guest,
    wrong_password_is_refused,
    unknown_user_is_refused,
    server_properties_and_capabilities,
    tune_proposes_default_limits,
    bad_protocol_header_gets_supported_header,
    client_closes_connection,
    server_closes_connection_on_hard_error,
    many_channels_on_one_connection,
    client_closes_channel,
    channel_error_is_isolated,
    deliveries_in_flight_to_a_dropped_connection_are_requeued,
);
