//! AMQP field tables and message properties to and from JSON, as RabbitMQ's management API
//! writes and reads them (`arguments`, `client_properties`, `properties`).

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Value, json};

/// A field table as a JSON object.
pub(super) fn table(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), value(v)))
            .collect(),
    )
}

/// One field value as JSON: strings as text (bytes that are not UTF-8 lossily), numbers as
/// numbers, nested tables and arrays as objects and arrays.
fn value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => {
            json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table(t),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

/// A JSON object as a field table, typed as RabbitMQ types them: integers as signed 64-bit
/// (`l`), other numbers as doubles, strings as long strings. `Err` names what is not an object.
pub(super) fn to_table(v: &Value, what: &str) -> Result<FieldTable, String> {
    match v {
        Value::Null => Ok(FieldTable::default()),
        Value::Object(map) => Ok(object_to_table(map)),
        _ => Err(format!("{what} must be an object")),
    }
}

fn object_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in map {
        t.insert(ShortString::from(k.as_str()), to_value(v));
    }
    t
}

fn to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => {
            AMQPValue::FieldArray(FieldArray::from(a.iter().map(to_value).collect::<Vec<_>>()))
        }
        Value::Object(m) => AMQPValue::FieldTable(object_to_table(m)),
    }
}

/// Message properties as RabbitMQ's API shows them (only those set).
pub(super) fn properties(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut text = |key: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            m.insert(key.to_owned(), json!(v.as_str()));
        }
    };
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("message_id", p.message_id());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    if let Some(h) = p.headers() {
        m.insert("headers".into(), table(h));
    }
    if let Some(v) = p.delivery_mode() {
        m.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = p.priority() {
        m.insert("priority".into(), json!(v));
    }
    if let Some(v) = p.timestamp() {
        m.insert("timestamp".into(), json!(v));
    }
    Value::Object(m)
}

/// Message properties from the API's `properties` object. Unknown keys are ignored, as
/// RabbitMQ ignores them; a known key with a value of the wrong type is an error naming it.
pub(super) fn to_properties(v: &Value) -> Result<BasicProperties, String> {
    let map = match v {
        Value::Null => return Ok(BasicProperties::default()),
        Value::Object(map) => map,
        _ => return Err("properties must be an object".into()),
    };
    let mut p = BasicProperties::default();
    for (key, v) in map {
        let text = || {
            v.as_str()
                .map(ShortString::from)
                .ok_or_else(|| format!("property {key} must be a string"))
        };
        let small = || {
            v.as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| format!("property {key} must be an integer from 0 to 255"))
        };
        p = match key.as_str() {
            "content_type" => p.with_content_type(text()?),
            "content_encoding" => p.with_content_encoding(text()?),
            "correlation_id" => p.with_correlation_id(text()?),
            "reply_to" => p.with_reply_to(text()?),
            "expiration" => p.with_expiration(text()?),
            "message_id" => p.with_message_id(text()?),
            "type" => p.with_type(text()?),
            "user_id" => p.with_user_id(text()?),
            "app_id" => p.with_app_id(text()?),
            "cluster_id" => p.with_cluster_id(text()?),
            "delivery_mode" => p.with_delivery_mode(small()?),
            "priority" => p.with_priority(small()?),
            "timestamp" => p.with_timestamp(
                v.as_u64()
                    .ok_or_else(|| format!("property {key} must be a non-negative integer"))?,
            ),
            "headers" => p.with_headers(to_table(v, "headers")?),
            _ => p,
        };
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_through_json() {
        let v = json!({"x-max-length": 10, "x-dead-letter-exchange": "dlx", "nested": {"a": [true, 1.5]}});
        let t = to_table(&v, "arguments").unwrap();
        assert_eq!(
            t.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(10))
        );
        assert_eq!(table(&t), v);
        assert!(to_table(&json!([1]), "arguments").is_err());
    }

    #[test]
    fn properties_round_trip_and_bad_types_are_named() {
        let v = json!({"content_type": "text/plain", "delivery_mode": 2, "headers": {"k": "v"}});
        let p = to_properties(&v).unwrap();
        assert_eq!(properties(&p), v);
        let err = to_properties(&json!({"delivery_mode": "two"})).unwrap_err();
        assert!(err.contains("delivery_mode"), "{err}");
    }
}
