//! Wire-level conformance: the handshake and what the server does with bad input.
//!
//! Each test talks raw AMQP over a socket ([`tests::raw`]), checks the exact answer RabbitMQ
//! gives (reply code, the method it blames, whether it sends connection.close or just drops the
//! socket), and ends by proving the server still serves a fresh connection.

use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel, connection, queue};
use tests::raw::{self, FRAME_END, FRAME_HEARTBEAT, PROTOCOL_HEADER, RawClient, Read, WAIT};
use tests::{TestBroker, conformance, unique};

/// basic.publish to the default exchange with a routing key no queue has.
fn publish() -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: unique("wire.nowhere").into(),
        mandatory: false,
        immediate: false,
    }))
}

/// A basic content header for a body of `body_size` bytes.
fn content_header(channel: u16, body_size: u64) -> AMQPFrame {
    AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size,
            properties: BasicProperties::default(),
        },
    )
}

/// queue.declare of a server-named exclusive queue.
fn queue_declare() -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "".into(),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: true,
        nowait: false,
        arguments: Default::default(),
    }))
}

// RabbitMQ answers a non-AMQP greeting with its own protocol header, then closes the socket.
async fn garbage_instead_of_protocol_header(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.send_bytes(b"HTTP/1.1 GET\r\n\r\n").await;
    assert_eq!(c.read_to_eof().await, PROTOCOL_HEADER);
    raw::assert_serves(&b.addr()).await;
}

// RabbitMQ answers a header for another AMQP version (0-10, 1.0, 1.0 SASL, 0-9-0) with the
// 0-9-1 header, then closes the socket.
async fn wrong_protocol_version(b: TestBroker) {
    for header in [
        b"AMQP\x01\x01\x00\x0a",
        b"AMQP\x00\x01\x00\x00",
        b"AMQP\x03\x01\x00\x00",
        b"AMQP\x00\x00\x09\x00",
    ] {
        let mut c = RawClient::connect(&b.addr()).await;
        c.send_bytes(header).await;
        assert_eq!(
            c.read_to_eof().await,
            PROTOCOL_HEADER,
            "answer to {header:02x?}"
        );
    }
    raw::assert_serves(&b.addr()).await;
}

// Another method where start-ok belongs (channel.open, tune-ok): RabbitMQ sends nothing and
// closes the socket (after its ~3 s handshake-error delay).
async fn method_instead_of_start_ok(b: TestBroker) {
    let addr = b.addr();
    let wrong = [
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 0,
            })),
        ),
    ];
    let checks = wrong.into_iter().map(|frame| {
        let addr = addr.clone();
        async move {
            let mut c = RawClient::connect(&addr).await;
            c.start().await;
            c.send_frame(&frame).await;
            c.expect_eof().await;
        }
    });
    futures::future::join_all(checks).await;
    raw::assert_serves(&addr).await;
}

// connection.open for a vhost that does not exist: connection.close 530 NOT_ALLOWED (10, 40),
// text "NOT_ALLOWED - vhost NAME not found".
async fn open_unknown_vhost(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response("guest", "guest"), true)
        .await;
    let tune = c.expect_tune().await;
    c.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    let vhost = unique("wire.nohost");
    let open = connection::Open {
        virtual_host: vhost.as_str().into(),
    };
    c.send_method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))
        .await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (530, 10, 40), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        format!("NOT_ALLOWED - vhost {vhost} not found")
    );
    raw::assert_serves(&b.addr()).await;
}

// RabbitMQ offers PLAIN and AMQPLAIN in connection.start, version 0-9.
async fn handshake_plain(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    let start = c.start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = start.mechanisms.to_string();
    let mechanisms: Vec<&str> = mechanisms.split(' ').collect();
    assert!(mechanisms.contains(&"PLAIN"), "mechanisms {mechanisms:?}");
    assert!(
        mechanisms.contains(&"AMQPLAIN"),
        "mechanisms {mechanisms:?}"
    );
    assert!(start.locales.to_string().split(' ').any(|l| l == "en_US"));
    c.start_ok("PLAIN", raw::plain_response("guest", "guest"), true)
        .await;
    let tune = c.expect_tune().await;
    c.tune_ok(tune.channel_max, tune.frame_max, tune.heartbeat)
        .await;
    c.open_vhost("/").await;
    c.open_channel(1).await;
    c.close().await;
    raw::assert_serves(&b.addr()).await;
}

// RabbitMQ accepts AMQPLAIN: a LOGIN/PASSWORD field table without its length prefix.
async fn handshake_amqplain(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("AMQPLAIN", raw::amqplain_response("guest", "guest"), true)
        .await;
    let tune = c.expect_tune().await;
    c.tune_ok(tune.channel_max, tune.frame_max, tune.heartbeat)
        .await;
    c.open_vhost("/").await;
    c.close().await;
    raw::assert_serves(&b.addr()).await;
}

// With authentication_failure_close RabbitMQ sends connection.close 403 ACCESS_REFUSED (0, 0).
async fn wrong_password_with_capability(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response("guest", "wrong"), true)
        .await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (403, 0, 0), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    assert!(
        reason.reply_text.starts_with("ACCESS_REFUSED - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// Without the capability RabbitMQ sends nothing and closes the socket (after ~3 s).
async fn wrong_password_without_capability(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response("guest", "wrong"), false)
        .await;
    c.expect_eof().await;
    raw::assert_serves(&b.addr()).await;
}

// The same wrong password through AMQPLAIN: connection.close 403.
async fn wrong_password_amqplain(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("AMQPLAIN", raw::amqplain_response("guest", "wrong"), true)
        .await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (403, 0, 0), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. For details see the broker logfile."
    );
    assert!(
        reason.reply_text.starts_with("ACCESS_REFUSED - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// An unknown mechanism, even with authentication_failure_close: RabbitMQ sends nothing and
// closes the socket (after its ~3 s handshake-error delay).
async fn unknown_mechanism(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("NOPE", raw::plain_response("guest", "guest"), true)
        .await;
    c.expect_eof().await;
    raw::assert_serves(&b.addr()).await;
}

// RabbitMQ proposes channel_max 2047, frame_max 131072, heartbeat 60 by default; here we
// require sane values, and that the client may answer with lower ones.
async fn tune_negotiates_lower_values(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response("guest", "guest"), true)
        .await;
    let tune = c.expect_tune().await;
    assert!(tune.frame_max >= 4096 || tune.frame_max == 0, "{tune:?}");
    assert!(tune.channel_max >= 16 || tune.channel_max == 0, "{tune:?}");
    c.tune_ok(16, 4096, 0).await;
    c.open_vhost("/").await;
    c.open_channel(16).await;
    c.close_channel(16).await;
    c.close().await;
    raw::assert_serves(&b.addr()).await;
}

/// Connects with the given tune-ok values and no heartbeat; the server's channel_max and
/// frame_max where `None`.
async fn connect_tuned(addr: &str, channel_max: Option<u16>, frame_max: Option<u32>) -> RawClient {
    let mut c = RawClient::connect(addr).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response("guest", "guest"), true)
        .await;
    let tune = c.expect_tune().await;
    c.tune_ok(
        channel_max.unwrap_or(tune.channel_max),
        frame_max.unwrap_or(tune.frame_max),
        0,
    )
    .await;
    c
}

// tune-ok with frame_max below 4096, above the server's, or channel_max above the server's
// (0 means "no limit", so above it too): RabbitMQ sends nothing and closes the socket (after its
// ~3 s handshake-error delay).
async fn tune_ok_out_of_range(b: TestBroker) {
    let addr = b.addr();
    let (server_channel_max, server_frame_max) = {
        let mut c = RawClient::connect(&addr).await;
        c.start().await;
        c.start_ok("PLAIN", raw::plain_response("guest", "guest"), true)
            .await;
        let tune = c.expect_tune().await;
        (tune.channel_max, tune.frame_max)
    };
    let mut cases = vec![
        (None, Some(4095)),
        (None, Some(server_frame_max.saturating_add(1))),
    ];
    if server_channel_max != 0 {
        cases.push((Some(server_channel_max + 1), None));
        cases.push((Some(0), None));
    }
    if server_frame_max != 0 {
        cases.push((None, Some(0)));
    }
    let checks = cases.into_iter().map(|(channel_max, frame_max)| {
        let addr = addr.clone();
        async move {
            let mut c = connect_tuned(&addr, channel_max, frame_max).await;
            c.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: "/".into(),
                })),
            )
            .await;
            c.expect_eof().await;
        }
    });
    futures::future::join_all(checks).await;
    raw::assert_serves(&addr).await;
}

// channel_max limits how many channels are open, not their ids: with channel_max 16, channel 17
// opens; a 17th open channel gets connection.close 530 NOT_ALLOWED (0, 0), text
// "NOT_ALLOWED - number of channels opened (16) has reached the negotiated channel_max (16)".
async fn channel_max_limits_open_channels(b: TestBroker) {
    let mut c = connect_tuned(&b.addr(), Some(16), None).await;
    c.open_vhost("/").await;
    c.open_channel(17).await;
    for channel in 1..=15 {
        c.open_channel(channel).await;
    }
    c.send_channel_open(100).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (530, 0, 0), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "NOT_ALLOWED - number of channels opened (16) has reached the negotiated channel_max (16)"
    );
    raw::assert_serves(&b.addr()).await;
}

// With frame_max 4096 negotiated, RabbitMQ accepts frame payloads up to 4096 octets (it allows
// 8 octets of slack over frame_max for the frame header and end); one more octet gets
// connection.close 501 FRAME_ERROR (0, 0), text
// "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}".
async fn frame_larger_than_frame_max(b: TestBroker) {
    let mut c = connect_tuned(&b.addr(), None, Some(4096)).await;
    c.open_vhost("/").await;
    c.open_channel(1).await;
    c.send_method(1, publish()).await;
    c.send_frame(&content_header(1, 4096 + 4097)).await;
    c.send_frame(&AMQPFrame::Body(1, vec![b'x'; 4096])).await;
    // Still alive: a round trip on another channel.
    c.open_channel(2).await;
    c.send_frame(&AMQPFrame::Body(1, vec![b'x'; 4097])).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (501, 0, 0), "{reason:?}");
    assert!(
        reason.reply_text.starts_with("FRAME_ERROR - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// Unknown class or method ids. RabbitMQ 3.10 sends nothing and closes the socket at once; the
// bundled broker deliberately answers with connection.close 540 NOT_IMPLEMENTED naming the
// method, which tells the client what went wrong. Either way the connection ends and the server
// keeps serving others.
async fn expect_unknown_method_refused(c: &mut RawClient, ids: (u16, u16)) {
    loop {
        match c.read_within(WAIT).await {
            Read::Eof => return,
            Read::Frame(AMQPFrame::Heartbeat) => continue,
            Read::Frame(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(close)),
            )) => {
                assert_eq!(
                    (close.reply_code, close.class_id, close.method_id),
                    (540, ids.0, ids.1)
                );
                assert!(
                    close.reply_text.as_str().starts_with("NOT_IMPLEMENTED - "),
                    "{close:?}"
                );
                c.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                )
                .await;
                c.expect_eof().await;
                return;
            }
            other => panic!("expected a close or the socket closing, got {other:?}"),
        }
    }
}

// An unknown method id in a known class (basic 60/999).
async fn unknown_method_id(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.send_bytes(&raw::raw_method(1, 60, 999, &[])).await;
    expect_unknown_method_refused(&mut c, (60, 999)).await;
    raw::assert_serves(&b.addr()).await;
}

// An unknown method id on channel 0 (connection 10/99).
async fn unknown_connection_method_id(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.send_bytes(&raw::raw_method(0, 10, 99, &[])).await;
    expect_unknown_method_refused(&mut c, (10, 99)).await;
    raw::assert_serves(&b.addr()).await;
}

// An unknown class id (999/10).
async fn unknown_class_id(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.send_bytes(&raw::raw_method(1, 999, 10, &[])).await;
    expect_unknown_method_refused(&mut c, (999, 10)).await;
    raw::assert_serves(&b.addr()).await;
}

// queue.declare on a channel never opened: connection.close 504 CHANNEL_ERROR blaming it (50, 10).
async fn method_on_unopened_channel(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.send_method(5, queue_declare()).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (504, 50, 10), "{reason:?}");
    assert_eq!(reason.reply_text, "CHANNEL_ERROR - expected 'channel.open'");
    assert!(
        reason.reply_text.starts_with("CHANNEL_ERROR - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// queue.declare on a channel after its close/close-ok: the same 504 as never opened.
async fn method_on_closed_channel(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(3).await;
    c.close_channel(3).await;
    c.send_method(3, queue_declare()).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (504, 50, 10), "{reason:?}");
    assert_eq!(reason.reply_text, "CHANNEL_ERROR - expected 'channel.open'");
    assert!(
        reason.reply_text.starts_with("CHANNEL_ERROR - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// A content header with no basic.publish before it: connection.close 505 UNEXPECTED_FRAME (0, 0).
async fn content_header_without_publish(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.send_frame(&content_header(1, 3)).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (505, 0, 0), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    );
    assert!(
        reason.reply_text.starts_with("UNEXPECTED_FRAME - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// A body frame longer than the header announced: RabbitMQ says nothing yet (the remaining size
// goes negative and it keeps waiting for body frames); the next method on that channel gets
// connection.close 505 UNEXPECTED_FRAME blaming basic.publish (60, 40).
async fn body_longer_than_header(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.send_method(1, publish()).await;
    c.send_frame(&content_header(1, 3)).await;
    c.send_frame(&AMQPFrame::Body(1, b"abcdef".to_vec())).await;
    let close = channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    c.send_method(1, AMQPClass::Channel(channel::AMQPMethod::Close(close)))
        .await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (505, 60, 40), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
    );
    raw::assert_serves(&b.addr()).await;
}

// basic.publish followed by a body with no content header: connection.close 505 (60, 40).
async fn body_without_content_header(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.send_method(1, publish()).await;
    c.send_frame(&AMQPFrame::Body(1, b"abc".to_vec())).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (505, 60, 40), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
    );
    assert!(
        reason.reply_text.starts_with("UNEXPECTED_FRAME - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// Half a frame and then a dropped socket: RabbitMQ forgets the connection and serves others.
async fn abrupt_disconnect_mid_frame(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    let frame = raw::encode(&AMQPFrame::Method(1, queue_declare()));
    c.send_bytes(&frame[..frame.len() / 2]).await;
    drop(c);
    // Also mid-handshake: half a protocol header.
    let mut c = RawClient::connect(&b.addr()).await;
    c.send_bytes(&PROTOCOL_HEADER[..4]).await;
    drop(c);
    raw::assert_serves(&b.addr()).await;
}

// A frame whose last octet is not 0xCE: connection.close 501 FRAME_ERROR (0, 0), text
// "FRAME_ERROR - type 1, all octets = <<...>>: {invalid_frame_end_marker, 0}".
async fn missing_frame_end(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    let mut frame = raw::encode(&AMQPFrame::Method(1, queue_declare()));
    *frame.last_mut().expect("frame has an end") = 0x00;
    c.send_bytes(&frame).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (501, 0, 0), "{reason:?}");
    assert!(
        reason.reply_text.starts_with("FRAME_ERROR - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// With heartbeat=1 RabbitMQ sends a heartbeat every ~0.5 s and closes a silent client's socket,
// without connection.close, ~3 s after the handshake.
async fn heartbeat_timeout(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response("guest", "guest"), true)
        .await;
    let tune = c.expect_tune().await;
    c.tune_ok(tune.channel_max, tune.frame_max, 1).await;
    c.open_vhost("/").await;
    let started = Instant::now();
    let mut heartbeats = 0;
    loop {
        match c.read_within(Duration::from_secs(10)).await {
            Read::Frame(AMQPFrame::Heartbeat) => heartbeats += 1,
            Read::Eof => break,
            other => panic!("expected heartbeats then EOF, got {other:?}"),
        }
    }
    let silent = started.elapsed();
    eprintln!("heartbeats {heartbeats}, closed after {silent:?}");
    assert!(heartbeats >= 1, "no heartbeat before the close");
    assert!(
        silent >= Duration::from_millis(1500),
        "closed too early: {silent:?}"
    );
    assert!(
        silent <= Duration::from_secs(6),
        "closed too late: {silent:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// A client that keeps sending heartbeats at the negotiated rate stays connected.
async fn heartbeat_keeps_alive(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response("guest", "guest"), true)
        .await;
    let tune = c.expect_tune().await;
    c.tune_ok(tune.channel_max, tune.frame_max, 1).await;
    c.open_vhost("/").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        c.send_frame(&AMQPFrame::Heartbeat).await;
        match c.read_within(Duration::from_millis(500)).await {
            Read::Frame(AMQPFrame::Heartbeat) | Read::TimedOut => {}
            other => panic!("expected heartbeats, got {other:?}"),
        }
    }
    c.open_channel(1).await;
    c.close().await;
    raw::assert_serves(&b.addr()).await;
}

// connection.close from the client: RabbitMQ answers close-ok, then waits for the client to close
// the socket (up to 30 s, or the heartbeat interval when shorter) and closes its side.
async fn client_close(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.close().await;
    raw::assert_serves(&b.addr()).await;
}

// After a server-initiated connection.close, the client's close-ok is followed by EOF.
async fn server_close_answered_with_close_ok(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.send_method(7, queue_declare()).await;
    let reason = c.recv_connection_close().await;
    assert_eq!(reason.reply_code, 504, "{reason:?}");
    c.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
    .await;
    c.expect_eof().await;
    raw::assert_serves(&b.addr()).await;
}

// channel.open on a channel already open: connection.close 504 CHANNEL_ERROR (20, 10).
async fn channel_open_twice(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.send_channel_open(1).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (504, 20, 10), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "CHANNEL_ERROR - second 'channel.open' seen"
    );
    assert!(
        reason.reply_text.starts_with("CHANNEL_ERROR - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// A second protocol header after the handshake: RabbitMQ reads it as a frame of type 65 ('A')
// whose size field ("P\0\0\x09") exceeds frame_max: connection.close 501 FRAME_ERROR (0, 0), text
// "FRAME_ERROR - type 65, all octets = <<>>: {frame_too_large,1342177289,131064}".
async fn second_protocol_header(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.send_bytes(PROTOCOL_HEADER).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (501, 0, 0), "{reason:?}");
    assert!(
        reason.reply_text.starts_with("FRAME_ERROR - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// queue.declare on channel 0: connection.close 504 CHANNEL_ERROR (50, 10), text
// "CHANNEL_ERROR - unexpected method in connection state running".
async fn non_connection_method_on_channel_zero(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.send_method(0, queue_declare()).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (504, 50, 10), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "CHANNEL_ERROR - unexpected method in connection state running"
    );
    assert!(
        reason.reply_text.starts_with("CHANNEL_ERROR - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// A heartbeat frame on an open channel other than 0: connection.close 505 UNEXPECTED_FRAME (0, 0),
// text "UNEXPECTED_FRAME - type 8, all octets = <<>>".
async fn heartbeat_on_nonzero_channel(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.send_bytes(&raw::raw_frame(FRAME_HEARTBEAT, 1, &[], FRAME_END))
        .await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (505, 0, 0), "{reason:?}");
    assert!(
        reason.reply_text.starts_with("UNEXPECTED_FRAME - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// An unknown frame type (9): connection.close 501 FRAME_ERROR (0, 0), text
// "FRAME_ERROR - type 9, all octets = <<>>: unknown_frame".
async fn unknown_frame_type(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.send_bytes(&raw::raw_frame(9, 0, &[], FRAME_END)).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (501, 0, 0), "{reason:?}");
    assert!(
        reason.reply_text.starts_with("FRAME_ERROR - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// A method frame whose arguments are cut short (queue.declare with none): connection.close
// 501 FRAME_ERROR blaming the method (50, 10), text "FRAME_ERROR - cannot decode <<>>".
async fn truncated_method_arguments(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.send_bytes(&raw::raw_method(1, 50, 10, &[])).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (501, 50, 10), "{reason:?}");
    assert!(
        reason.reply_text.starts_with("FRAME_ERROR - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// channel.open after tune-ok but before connection.open: connection.close 505 UNEXPECTED_FRAME
// (0, 0), text "UNEXPECTED_FRAME - type 1, all octets = <<...>>".
async fn channel_open_before_connection_open(b: TestBroker) {
    let mut c = RawClient::connect(&b.addr()).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response("guest", "guest"), true)
        .await;
    let tune = c.expect_tune().await;
    c.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    c.send_channel_open(1).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (505, 0, 0), "{reason:?}");
    assert!(
        reason.reply_text.starts_with("UNEXPECTED_FRAME - "),
        "{reason:?}"
    );
    raw::assert_serves(&b.addr()).await;
}

// A body frame of exactly the announced size after the header is accepted; an empty body
// (body_size 0) needs no body frame at all.
async fn publish_boundaries_accepted(b: TestBroker) {
    let (mut c, _) = RawClient::handshake(&b.addr()).await;
    c.open_channel(1).await;
    c.send_method(1, publish()).await;
    c.send_frame(&content_header(1, 0)).await;
    c.send_method(1, publish()).await;
    c.send_frame(&content_header(1, 6)).await;
    c.send_frame(&AMQPFrame::Body(1, b"abc".to_vec())).await;
    c.send_frame(&AMQPFrame::Body(1, b"def".to_vec())).await;
    c.close_channel(1).await;
    c.close().await;
    raw::assert_serves(&b.addr()).await;
}

conformance!(
    garbage_instead_of_protocol_header,
    wrong_protocol_version,
    method_instead_of_start_ok,
    open_unknown_vhost,
    channel_max_limits_open_channels,
    handshake_plain,
    handshake_amqplain,
    wrong_password_with_capability,
    wrong_password_without_capability,
    wrong_password_amqplain,
    unknown_mechanism,
    tune_negotiates_lower_values,
    tune_ok_out_of_range,
    frame_larger_than_frame_max,
    unknown_method_id,
    unknown_connection_method_id,
    unknown_class_id,
    method_on_unopened_channel,
    method_on_closed_channel,
    content_header_without_publish,
    body_longer_than_header,
    body_without_content_header,
    abrupt_disconnect_mid_frame,
    missing_frame_end,
    heartbeat_timeout,
    heartbeat_keeps_alive,
    client_close,
    server_close_answered_with_close_ok,
    channel_open_twice,
    second_protocol_header,
    non_connection_method_on_channel_zero,
    heartbeat_on_nonzero_channel,
    unknown_frame_type,
    truncated_method_arguments,
    channel_open_before_connection_open,
    publish_boundaries_accepted,
);
