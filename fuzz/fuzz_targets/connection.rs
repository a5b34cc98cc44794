//! The connection state machine: arbitrary client sessions against a broker running in this
//! process, on a loopback port (started once, see `amqp_broker::fuzzing::SessionHarness`).
//!
//! Each input is a session: well-formed methods built from templates (the fuzzer picks the
//! method, the channel, names from small sets so that declarations, bindings, consumers and
//! acks meet, and field values), frames around arbitrary payloads, and raw bytes. After the
//! session the harness sends `connection.close` and ends the stream; the broker must not panic,
//! must close the socket within the timeout, must answer every fault with a protocol reply code
//! (never 541 INTERNAL_ERROR), must write only well-formed frames, and must then serve a fresh
//! connection that opens a channel.
//!
//! Input: one octet of flags (bit 0: the harness opens the connection first, so the session
//! starts on an open connection; otherwise the session sends its own protocol header and
//! handshake), then records, each one tag octet and its arguments. Tag 0 is raw bytes: a
//! big-endian u16 length and that many bytes, sent as they are; the seeds in `seeds/connection/`
//! are real client sessions in that form, one record per frame.
#![no_main]

use std::sync::{Mutex, OnceLock};

use amqp_broker::fuzzing::protocol::{
    AMQPClass, BasicProperties, basic, channel, confirm, connection, exchange, queue, tx,
};
use amqp_broker::fuzzing::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use amqp_broker::fuzzing::{Session, SessionHarness, header_frame, method_frame, raw_frame};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const EXCHANGES: &[&str] = &[
    "",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "amq.fuzz",
    "fuzz.x",
    "fuzz.y",
];
const EXCHANGE_TYPES: &[&str] = &[
    "direct",
    "fanout",
    "topic",
    "headers",
    "x-delayed-message",
    "x-unknown",
];
const QUEUES: &[&str] = &[
    "",
    "fuzz.a",
    "fuzz.b",
    "fuzz.c",
    "amq.q",
    "amq.rabbitmq.reply-to",
];
const ROUTING_KEYS: &[&str] = &["", "fuzz.a", "fuzz.b", "a.b", "#", "*.b"];
const CONSUMER_TAGS: &[&str] = &["", "c1", "c2"];
/// Arguments and headers the broker gives a meaning to.
const ARGUMENT_KEYS: &[&str] = &[
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-message-ttl",
    "x-expires",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-priority",
    "x-match",
    "alternate-exchange",
    "x-delayed-type",
    "x-delay",
    "CC",
    "BCC",
];
const TEXT_VALUES: &[&str] = &[
    "drop-head",
    "reject-publish",
    "reject-publish-dlx",
    "classic",
    "quorum",
    "stream",
    "lazy",
    "all",
    "any",
    "direct",
    "fuzz.x",
    "fuzz.a",
];

fn harness() -> &'static Mutex<SessionHarness> {
    static HARNESS: OnceLock<Mutex<SessionHarness>> = OnceLock::new();
    HARNESS.get_or_init(|| Mutex::new(SessionHarness::start()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, records)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(records);
    let mut bytes = Vec::new();
    while !u.is_empty() {
        if record(&mut u, &mut bytes).is_err() {
            break;
        }
    }
    let session = Session {
        handshake: flags & 1 == 1,
        bytes,
    };
    harness()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .run(&session);
});

/// Appends one record's bytes to `out`.
fn record(u: &mut Unstructured, out: &mut Vec<u8>) -> Result<()> {
    let tag: u8 = u.arbitrary()?;
    let bytes = match tag % 32 {
        0 => {
            let len = usize::from(u16::from_be_bytes([u.arbitrary()?, u.arbitrary()?]));
            let take = len.min(u.len());
            u.bytes(take)?.to_vec()
        }
        1 => {
            let kind = *u.choose(&[1u8, 2, 3, 8, 0, 4, 9, 255])?;
            let payload_len = usize::from(u.arbitrary::<u8>()?).min(u.len());
            let payload = u.bytes(payload_len)?;
            let end = if u.ratio(1, 4)? { u.arbitrary()? } else { 0xCE };
            raw_frame(kind, channel_id(u)?, payload, end)
        }
        2 => u
            .choose(&[
                &b"AMQP\x00\x00\x09\x01"[..],
                b"AMQP\x01\x01\x00\x09",
                b"AMQP\x00\x00\x08\x00",
                b"HTTP/1.1",
            ])?
            .to_vec(),
        3 => {
            let start_ok = start_ok(u)?;
            connection_method(u, start_ok)?
        }
        4 => {
            let tune_ok = connection::TuneOk {
                channel_max: pick_or_any(u, &[0, 1, 8, 2047, 2048])?,
                frame_max: pick_or_any(u, &[0, 4095, 4096, 131_072, 131_073])?,
                heartbeat: pick_or_any(u, &[0, 1, 60])?,
            };
            connection_method(u, connection::AMQPMethod::TuneOk(tune_ok))?
        }
        5 => {
            let open = connection::Open {
                virtual_host: name(u, &["/", "other", ""])?,
            };
            connection_method(u, connection::AMQPMethod::Open(open))?
        }
        6 => raw_frame(8, channel_id(u)?, &[], 0xCE),
        7 => on_channel(
            u,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?,
        8 => {
            let close = channel::AMQPMethod::Close(channel::Close {
                reply_code: pick_or_any(u, &[200, 406])?,
                reply_text: "fuzz".into(),
                class_id: u.arbitrary()?,
                method_id: u.arbitrary()?,
            });
            on_channel(u, AMQPClass::Channel(close))?
        }
        9 => on_channel(
            u,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        )?,
        10 => {
            let flow = channel::Flow {
                active: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Channel(channel::AMQPMethod::Flow(flow)))?
        }
        11 => {
            let declare = exchange::Declare {
                exchange: name(u, EXCHANGES)?,
                kind: name(u, EXCHANGE_TYPES)?,
                passive: u.arbitrary()?,
                durable: u.arbitrary()?,
                auto_delete: u.arbitrary()?,
                internal: u.arbitrary()?,
                nowait: u.arbitrary()?,
                arguments: arguments(u)?,
            };
            on_channel(
                u,
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare)),
            )?
        }
        12 => {
            let delete = exchange::Delete {
                exchange: name(u, EXCHANGES)?,
                if_unused: u.arbitrary()?,
                nowait: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Exchange(exchange::AMQPMethod::Delete(delete)))?
        }
        13 => {
            let (destination, source) = (name(u, EXCHANGES)?, name(u, EXCHANGES)?);
            let (routing_key, nowait) = (name(u, ROUTING_KEYS)?, u.arbitrary()?);
            let arguments = arguments(u)?;
            let method = if u.arbitrary()? {
                exchange::AMQPMethod::Bind(exchange::Bind {
                    destination,
                    source,
                    routing_key,
                    nowait,
                    arguments,
                })
            } else {
                exchange::AMQPMethod::Unbind(exchange::Unbind {
                    destination,
                    source,
                    routing_key,
                    nowait,
                    arguments,
                })
            };
            on_channel(u, AMQPClass::Exchange(method))?
        }
        14 => {
            let declare = queue::Declare {
                queue: name(u, QUEUES)?,
                passive: u.arbitrary()?,
                durable: u.arbitrary()?,
                exclusive: u.arbitrary()?,
                auto_delete: u.arbitrary()?,
                nowait: u.arbitrary()?,
                arguments: arguments(u)?,
            };
            on_channel(u, AMQPClass::Queue(queue::AMQPMethod::Declare(declare)))?
        }
        15 => {
            let bind = queue::Bind {
                queue: name(u, QUEUES)?,
                exchange: name(u, EXCHANGES)?,
                routing_key: name(u, ROUTING_KEYS)?,
                nowait: u.arbitrary()?,
                arguments: arguments(u)?,
            };
            on_channel(u, AMQPClass::Queue(queue::AMQPMethod::Bind(bind)))?
        }
        16 => {
            let unbind = queue::Unbind {
                queue: name(u, QUEUES)?,
                exchange: name(u, EXCHANGES)?,
                routing_key: name(u, ROUTING_KEYS)?,
                arguments: arguments(u)?,
            };
            on_channel(u, AMQPClass::Queue(queue::AMQPMethod::Unbind(unbind)))?
        }
        17 => {
            let purge = queue::Purge {
                queue: name(u, QUEUES)?,
                nowait: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Queue(queue::AMQPMethod::Purge(purge)))?
        }
        18 => {
            let delete = queue::Delete {
                queue: name(u, QUEUES)?,
                if_unused: u.arbitrary()?,
                if_empty: u.arbitrary()?,
                nowait: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Queue(queue::AMQPMethod::Delete(delete)))?
        }
        19 => {
            let qos = basic::Qos {
                prefetch_count: pick_or_any(u, &[0, 1, 2])?,
                global: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Basic(basic::AMQPMethod::Qos(qos)))?
        }
        20 => {
            let consume = basic::Consume {
                queue: name(u, QUEUES)?,
                consumer_tag: name(u, CONSUMER_TAGS)?,
                no_local: u.arbitrary()?,
                no_ack: u.arbitrary()?,
                exclusive: u.arbitrary()?,
                nowait: u.arbitrary()?,
                arguments: arguments(u)?,
            };
            on_channel(u, AMQPClass::Basic(basic::AMQPMethod::Consume(consume)))?
        }
        21 => {
            let cancel = basic::Cancel {
                consumer_tag: name(u, CONSUMER_TAGS)?,
                nowait: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)))?
        }
        22 => publish(u)?,
        23 => {
            let get = basic::Get {
                queue: name(u, QUEUES)?,
                no_ack: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Basic(basic::AMQPMethod::Get(get)))?
        }
        24 => {
            let ack = basic::Ack {
                delivery_tag: delivery_tag(u)?,
                multiple: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Basic(basic::AMQPMethod::Ack(ack)))?
        }
        25 => {
            let nack = basic::Nack {
                delivery_tag: delivery_tag(u)?,
                multiple: u.arbitrary()?,
                requeue: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Basic(basic::AMQPMethod::Nack(nack)))?
        }
        26 => {
            let reject = basic::Reject {
                delivery_tag: delivery_tag(u)?,
                requeue: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Basic(basic::AMQPMethod::Reject(reject)))?
        }
        27 => {
            let requeue = u.arbitrary()?;
            let method = if u.arbitrary()? {
                basic::AMQPMethod::Recover(basic::Recover { requeue })
            } else {
                basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue })
            };
            on_channel(u, AMQPClass::Basic(method))?
        }
        28 => {
            let select = confirm::Select {
                nowait: u.arbitrary()?,
            };
            on_channel(u, AMQPClass::Confirm(confirm::AMQPMethod::Select(select)))?
        }
        29 => {
            let method = match u.int_in_range(0..=2)? {
                0 => tx::AMQPMethod::Select(tx::Select {}),
                1 => tx::AMQPMethod::Commit(tx::Commit {}),
                _ => tx::AMQPMethod::Rollback(tx::Rollback {}),
            };
            on_channel(u, AMQPClass::Tx(method))?
        }
        30 => {
            let method = if u.arbitrary()? {
                connection::AMQPMethod::Close(connection::Close {
                    reply_code: 200,
                    reply_text: "fuzz".into(),
                    class_id: 0,
                    method_id: 0,
                })
            } else {
                connection::AMQPMethod::CloseOk(connection::CloseOk {})
            };
            connection_method(u, method)?
        }
        _ => {
            // Content with no publish before it: a header, or a body.
            let channel = channel_id(u)?;
            if u.arbitrary()? {
                header_frame(channel, u64::from(u.arbitrary::<u16>()?), &properties(u)?)
            } else {
                raw_frame(3, channel, b"orphan body", 0xCE)
            }
        }
    };
    out.extend_from_slice(&bytes);
    Ok(())
}

/// A connection method, mostly on channel 0 (its only legal channel).
fn connection_method(u: &mut Unstructured, method: connection::AMQPMethod) -> Result<Vec<u8>> {
    let channel = if u.ratio(1, 8)? { 1 } else { 0 };
    Ok(method_frame(channel, &AMQPClass::Connection(method)))
}

fn on_channel(u: &mut Unstructured, method: AMQPClass) -> Result<Vec<u8>> {
    Ok(method_frame(channel_id(u)?, &method))
}

/// Mostly channels 1 and 2 (so that they are opened, used and closed in turn), sometimes 0 or
/// any other.
fn channel_id(u: &mut Unstructured) -> Result<u16> {
    Ok(match u.int_in_range(0..=7)? {
        0 => 0,
        1..=4 => 1,
        5 | 6 => 2,
        _ => u.arbitrary()?,
    })
}

fn delivery_tag(u: &mut Unstructured) -> Result<u64> {
    pick_or_any(u, &[0, 1, 2, 3])
}

/// One of `values`, or (one time in five) any value.
fn pick_or_any<T>(u: &mut Unstructured, values: &[T]) -> Result<T>
where
    T: Copy + for<'a> libfuzzer_sys::arbitrary::Arbitrary<'a>,
{
    if u.ratio(1, 5)? {
        u.arbitrary()
    } else {
        u.choose(values).copied()
    }
}

/// One of `names`, or (rarely) any text of up to 64 characters.
fn name(u: &mut Unstructured, names: &[&str]) -> Result<ShortString> {
    if u.ratio(1, 16)? {
        Ok(short_text(u)?.into())
    } else {
        Ok((*u.choose(names)?).into())
    }
}

fn short_text(u: &mut Unstructured) -> Result<String> {
    let text: &str = u.arbitrary()?;
    Ok(text.chars().take(64).collect())
}

/// Up to three arguments, keys the broker knows, values of any AMQP type.
fn arguments(u: &mut Unstructured) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    for _ in 0..u.int_in_range(0..=3)? {
        let key = *u.choose(ARGUMENT_KEYS)?;
        table.insert(key.into(), value(u)?);
    }
    Ok(table)
}

fn value(u: &mut Unstructured) -> Result<AMQPValue> {
    Ok(match u.int_in_range(0..=9)? {
        0 => AMQPValue::LongLongInt(pick_or_any(u, &[-1, 0, 1, 2, 10, 1000])?),
        1 => AMQPValue::LongInt(u.arbitrary()?),
        2 => AMQPValue::ShortInt(u.arbitrary()?),
        3 => AMQPValue::ShortShortUInt(u.arbitrary()?),
        4 => AMQPValue::Boolean(u.arbitrary()?),
        5 => AMQPValue::LongString(LongString::from(*u.choose(TEXT_VALUES)?)),
        6 => AMQPValue::ShortString(short_text(u)?.into()),
        7 => AMQPValue::Double(u.arbitrary()?),
        8 => {
            let mut array = FieldArray::default();
            array.push(AMQPValue::LongString(LongString::from(
                *u.choose(ROUTING_KEYS)?,
            )));
            AMQPValue::FieldArray(array)
        }
        _ => AMQPValue::Void,
    })
}

fn properties(u: &mut Unstructured) -> Result<BasicProperties> {
    let mut p = BasicProperties::default();
    if u.arbitrary()? {
        p = p.with_delivery_mode(pick_or_any(u, &[1, 2])?);
    }
    if u.arbitrary()? {
        p = p.with_priority(pick_or_any(u, &[0, 5, 9])?);
    }
    if u.ratio(1, 4)? {
        p = p.with_expiration((*u.choose(&["0", "1", "100", "-1", "x", "99999999999"])?).into());
    }
    if u.ratio(1, 4)? {
        p = p.with_headers(arguments(u)?);
    }
    if u.ratio(1, 8)? {
        p = p.with_reply_to((*u.choose(&["amq.rabbitmq.reply-to", "fuzz.a"])?).into());
    }
    if u.ratio(1, 8)? {
        p = p.with_user_id((*u.choose(&["guest", "someone"])?).into());
    }
    Ok(p)
}

/// `basic.publish`, its content header and its body in up to three frames; the header may
/// announce another size than the body has, and the body may be over the broker's 64 KiB limit.
fn publish(u: &mut Unstructured) -> Result<Vec<u8>> {
    let publish = basic::Publish {
        exchange: name(u, EXCHANGES)?,
        routing_key: name(u, ROUTING_KEYS)?,
        mandatory: u.arbitrary()?,
        immediate: u.ratio(1, 16)?,
    };
    let channel = channel_id(u)?;
    let mut out = method_frame(
        channel,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(publish)),
    );
    let body_len = match u.int_in_range(0..=9)? {
        0 => 0,
        1 => 64 * 1024 + 1,
        _ => usize::from(u.arbitrary::<u8>()?),
    };
    let announced = if u.ratio(1, 8)? {
        u64::from(u.arbitrary::<u32>()?)
    } else {
        body_len as u64
    };
    out.extend(header_frame(channel, announced, &properties(u)?));
    let body = vec![b'b'; body_len];
    let pieces = u.int_in_range(1..=3)?;
    for piece in body.chunks(body_len.div_ceil(pieces).max(1)) {
        out.extend(raw_frame(3, channel, piece, 0xCE));
    }
    Ok(out)
}

/// `connection.start-ok`: PLAIN or AMQPLAIN with the right or a wrong password, or nonsense.
fn start_ok(u: &mut Unstructured) -> Result<connection::AMQPMethod> {
    let mechanism = *u.choose(&["PLAIN", "AMQPLAIN", "EXTERNAL", ""])?;
    let response: Vec<u8> = match u.int_in_range(0..=3)? {
        0 | 1 => b"\0guest\0guest".to_vec(),
        2 => b"\0guest\0wrong".to_vec(),
        _ => {
            let len = usize::from(u.arbitrary::<u8>()?).min(u.len());
            u.bytes(len)?.to_vec()
        }
    };
    let mut capabilities = FieldTable::default();
    for capability in [
        "authentication_failure_close",
        "connection.blocked",
        "consumer_cancel_notify",
    ] {
        capabilities.insert(capability.into(), AMQPValue::Boolean(u.arbitrary()?));
    }
    let mut client_properties = FieldTable::default();
    client_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    Ok(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties,
        mechanism: mechanism.into(),
        response: LongString::from(response),
        locale: "en_US".into(),
    }))
}
