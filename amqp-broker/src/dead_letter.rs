//! Dead-lettering: the copy of a message that a queue republishes to its dead-letter exchange,
//! with the `x-death` history RabbitMQ keeps in its headers.

use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::message::Message;

/// Why a message was dead-lettered (the `reason` in `x-death`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Rejected or nacked without requeue.
    Rejected,
    /// Its TTL passed (`x-message-ttl` or `expiration`).
    Expired,
    /// Dropped by a length limit (`drop-head`), or refused by `reject-publish-dlx`.
    Maxlen,
    /// Returned more often than a quorum queue's `x-delivery-limit`.
    DeliveryLimit,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Whether republishing `dead` (already carrying its new `x-death` entry) to `target` would close
/// a dead-letter cycle that nobody broke with a rejection: RabbitMQ drops the message for such a
/// queue rather than let it loop forever. The cycle is the `x-death` entries up to and including
/// the newest one for `target`; it counts only if none of them has reason `rejected`.
pub(crate) fn is_cycle(dead: &Message, target: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = dead
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return false;
    };
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = d else {
            return false; // Not ours: a client put it there, so the cycle is not automatic.
        };
        if text_of(t.inner().get("reason")) == Some(Reason::Rejected.as_str()) {
            return false;
        }
        if text_of(t.inner().get("queue")) == Some(target) {
            return true;
        }
    }
    false
}

/// The message as it is republished from `queue` to `exchange` with `routing_key`.
///
/// As RabbitMQ does: an `x-death` entry for (queue, reason) is added at the front, or, if the
/// message already died there for that reason, its `count` goes up and it moves to the front;
/// `x-first-death-*` headers are set once; the `expiration` property is removed so the copy does
/// not expire again for the same reason.
pub(crate) fn dead_lettered(
    msg: &Message,
    queue: &ShortString,
    reason: Reason,
    exchange: ShortString,
    routing_key: ShortString,
) -> Message {
    let mut headers = msg.properties.headers().clone().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|d| match d {
        AMQPValue::FieldTable(t) => {
            text_of(t.inner().get("queue")) == Some(queue.as_str())
                && text_of(t.inner().get("reason")) == Some(reason.as_str())
        }
        _ => false,
    });
    let entry = match same.map(|i| deaths.remove(i)) {
        Some(AMQPValue::FieldTable(mut t)) => {
            let count = match t.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                _ => 0,
            };
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t
        }
        _ => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), long(reason.as_str()));
            t.insert("queue".into(), long(queue.as_str()));
            t.insert("time".into(), AMQPValue::Timestamp(now_secs()));
            t.insert("exchange".into(), long(msg.exchange.as_str()));
            let mut keys = FieldArray::default();
            keys.push(long(msg.routing_key.as_str()));
            t.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
            if let Some(e) = msg.properties.expiration() {
                t.insert("original-expiration".into(), long(e.as_str()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert("x-death".into(), AMQPValue::FieldArray(deaths.into()));
    for (key, value) in [
        ("x-first-death-reason", reason.as_str()),
        ("x-first-death-queue", queue.as_str()),
        ("x-first-death-exchange", msg.exchange.as_str()),
    ] {
        if !headers.contains_key(key) {
            headers.insert(key.into(), long(value));
        }
    }
    let mut properties = msg.properties.clone().with_headers(headers);
    if properties.expiration().is_some() {
        properties = without_expiration(properties);
    }
    Message {
        exchange,
        routing_key,
        properties,
        body: msg.body.clone(),
    }
}

/// The same properties without `expiration` (the generated type has no unsetter).
fn without_expiration(
    p: amq_protocol::protocol::BasicProperties,
) -> amq_protocol::protocol::BasicProperties {
    let mut out = amq_protocol::protocol::BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),*) => {$(
            if let Some(v) = p.$get().clone() {
                out = out.$set(v);
            }
        )*};
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id
    );
    out
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn text_of(v: Option<&AMQPValue>) -> Option<&str> {
    match v? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;

    fn message() -> Message {
        Message {
            exchange: "orders".into(),
            routing_key: "order.created".into(),
            properties: BasicProperties::default().with_expiration("1000".into()),
            body: bytes::Bytes::from_static(b"x"),
        }
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("x-death")
        {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .map(|v| match v {
                    AMQPValue::FieldTable(t) => t.clone(),
                    other => panic!("x-death entries are tables, got {other:?}"),
                })
                .collect(),
            other => panic!("x-death is an array, got {other:?}"),
        }
    }

    #[test]
    fn a_first_death_is_recorded_in_full() {
        let m = dead_lettered(
            &message(),
            &"q".into(),
            Reason::Rejected,
            "dlx".into(),
            "dead".into(),
        );
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("dlx", "dead")
        );
        assert!(m.properties.expiration().is_none());
        let d = deaths(&m);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(text_of(d[0].inner().get("queue")), Some("q"));
        assert_eq!(text_of(d[0].inner().get("exchange")), Some("orders"));
        let h = m.properties.headers().as_ref().unwrap();
        assert_eq!(
            text_of(h.inner().get("x-first-death-reason")),
            Some("rejected")
        );
    }

    #[test]
    fn a_cycle_without_rejection_is_detected() {
        let once = dead_lettered(
            &message(),
            &"a".into(),
            Reason::Expired,
            "".into(),
            "b".into(),
        );
        assert!(is_cycle(&once, "a"), "straight back to the same queue");
        assert!(!is_cycle(&once, "b"));
        let twice = dead_lettered(&once, &"b".into(), Reason::Rejected, "".into(), "a".into());
        assert!(!is_cycle(&twice, "a"), "a rejection breaks the cycle");
        let thrice = dead_lettered(&once, &"b".into(), Reason::Maxlen, "".into(), "a".into());
        assert!(is_cycle(&thrice, "a"));
        let d = deaths(&once);
        assert_eq!(
            text_of(d[0].inner().get("original-expiration")),
            Some("1000")
        );
    }

    #[test]
    fn dying_again_in_the_same_queue_counts_up() {
        let once = dead_lettered(
            &message(),
            &"q".into(),
            Reason::Rejected,
            "dlx".into(),
            "k".into(),
        );
        let twice = dead_lettered(
            &once,
            &"q".into(),
            Reason::Rejected,
            "dlx".into(),
            "k".into(),
        );
        let d = deaths(&twice);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        let elsewhere = dead_lettered(
            &twice,
            &"other".into(),
            Reason::Rejected,
            "dlx".into(),
            "k".into(),
        );
        let d = deaths(&elsewhere);
        assert_eq!(d.len(), 2);
        assert_eq!(
            text_of(d[0].inner().get("queue")),
            Some("other"),
            "newest first"
        );
    }
}
