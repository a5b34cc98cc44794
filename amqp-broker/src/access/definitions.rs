//! Definitions in RabbitMQ's JSON format (what `rabbitmqctl export_definitions` writes and
//! `import_definitions` / `load_definitions` read), so users, vhosts, permissions, exchanges,
//! queues and bindings move between RabbitMQ and this broker.
//!
//! Reading is lenient where RabbitMQ's versions differ: `tags` as a list (3.10) or a
//! comma-separated string (older), vhosts with or without `metadata`. Sections this broker
//! has no equivalent for (`parameters`, `policies`, `global_parameters`, `topic_permissions`)
//! are ignored with a warning when not empty, and exported empty.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A whole definitions document.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub(crate) struct Document {
    pub rabbit_version: String,
    pub rabbitmq_version: String,
    pub users: Vec<UserDef>,
    pub vhosts: Vec<VhostDef>,
    pub permissions: Vec<PermissionDef>,
    pub topic_permissions: Vec<Value>,
    pub parameters: Vec<Value>,
    pub global_parameters: Vec<Value>,
    pub policies: Vec<Value>,
    pub queues: Vec<QueueDef>,
    pub exchanges: Vec<ExchangeDef>,
    pub bindings: Vec<BindingDef>,
}

impl Document {
    /// Parses a document, with the JSON error's position in the message.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(text).map_err(|e| format!("invalid definitions: {e}"))
    }

    /// The version fields this broker writes.
    pub fn versioned() -> Self {
        Self {
            rabbit_version: env!("CARGO_PKG_VERSION").to_owned(),
            rabbitmq_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Self::default()
        }
    }

    /// Warns about the sections this broker does not apply.
    pub fn warn_ignored(&self) {
        for (section, items) in [
            ("parameters", &self.parameters),
            ("global_parameters", &self.global_parameters),
            ("policies", &self.policies),
            ("topic_permissions", &self.topic_permissions),
        ] {
            if !items.is_empty() {
                tracing::warn!(
                    count = items.len(),
                    "definitions: '{section}' are not supported by this broker and were ignored"
                );
            }
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct UserDef {
    pub name: String,
    #[serde(default)]
    pub password_hash: String,
    #[serde(default = "default_hashing_algorithm")]
    pub hashing_algorithm: String,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub limits: Map<String, Value>,
}

fn default_hashing_algorithm() -> String {
    super::password::Algorithm::Sha256.name().to_owned()
}

/// User tags: a list (RabbitMQ 3.9+) or one comma-separated string (older exports and the
/// management API's `PUT /api/users`); always written as a list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(crate) struct Tags(pub Vec<String>);

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            List(Vec<String>),
            Text(String),
        }
        Ok(match Either::deserialize(d)? {
            Either::List(list) => Tags::from_iter(list),
            Either::Text(text) => Tags::from_iter(text.split(',').map(str::to_owned)),
        })
    }
}

impl FromIterator<String> for Tags {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        Tags(
            iter.into_iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        )
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct VhostDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub limits: Value,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct PermissionDef {
    pub user: String,
    #[serde(default)]
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct QueueDef {
    pub name: String,
    #[serde(default)]
    pub vhost: String,
    /// RabbitMQ 3.10 exports the queue type here (`classic`, `quorum`, `stream`); on import
    /// the `x-queue-type` argument decides, as in RabbitMQ's declarations.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub queue_type: Option<String>,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ExchangeDef {
    pub name: String,
    #[serde(default)]
    pub vhost: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct BindingDef {
    pub source: String,
    #[serde(default)]
    pub vhost: String,
    pub destination: String,
    pub destination_type: String,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// JSON arguments as an AMQP table: integers as signed 64-bit, as RabbitMQ's importer makes
/// them; strings as long strings.
pub(crate) fn to_table(arguments: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in arguments {
        table.insert(k.as_str().into(), to_amqp(v));
    }
    table
}

fn to_amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(to_table(map)),
    }
}

/// An AMQP table as JSON arguments (what RabbitMQ exports).
pub(crate) fn from_table(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), from_amqp(v)))
        .collect()
}

fn from_amqp(v: &AMQPValue) -> Value {
    use AMQPValue as A;
    match v {
        A::Boolean(b) => Value::Bool(*b),
        A::ShortShortInt(n) => (*n).into(),
        A::ShortShortUInt(n) => (*n).into(),
        A::ShortInt(n) => (*n).into(),
        A::ShortUInt(n) => (*n).into(),
        A::LongInt(n) => (*n).into(),
        A::LongUInt(n) => (*n).into(),
        A::LongLongInt(n) => (*n).into(),
        A::Timestamp(n) => (*n).into(),
        A::Float(f) => Value::from(f64::from(*f)),
        A::Double(f) => Value::from(*f),
        A::DecimalValue(d) => Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        A::ShortString(s) => Value::String(s.to_string()),
        A::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        A::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into_owned()),
        A::FieldArray(items) => Value::Array(items.as_slice().iter().map(from_amqp).collect()),
        A::FieldTable(t) => Value::Object(from_table(t)),
        A::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_read_as_a_list_or_a_comma_separated_string() {
        let list: UserDef = serde_json::from_str(
            r#"{"name":"a","password_hash":"","tags":["administrator","monitoring"]}"#,
        )
        .unwrap();
        let text: UserDef = serde_json::from_str(
            r#"{"name":"a","password_hash":"","tags":"administrator, monitoring"}"#,
        )
        .unwrap();
        assert_eq!(list.tags, text.tags);
        assert_eq!(list.tags.0, ["administrator", "monitoring"]);
        let none: UserDef = serde_json::from_str(r#"{"name":"a","tags":""}"#).unwrap();
        assert!(none.tags.0.is_empty());
    }

    #[test]
    fn arguments_survive_a_round_trip_through_amqp_tables() {
        let json = serde_json::json!({
            "x-message-ttl": 60000, "x-dead-letter-exchange": "dlx", "x-single-active-consumer": true,
            "nested": {"a": [1, "b"]}
        });
        let map = json.as_object().unwrap();
        assert_eq!(&from_table(&to_table(map)), map);
    }
}
