//! Durable exchanges, queues and bindings: one small file, `definitions`, rewritten whole and
//! atomically (temp file, fsync, rename, fsync dir) whenever a durable definition changes.
//!
//! Declarations are rare and the file is small, so a rewrite per change is simpler than a log
//! and never needs compaction; a declaration is on disk before its `declare-ok` is sent.

use amq_protocol::types::{FieldTable, ShortString};

use super::format::{
    self, DEFINITIONS_MAGIC, Malformed, Reader, Scanned, put_str8, put_table, tag,
};
use crate::exchange::Destination;

/// A durable exchange (built-in ones are not stored).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ExchangeDef {
    pub name: ShortString,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// A durable, non-exclusive queue.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QueueDef {
    /// Names the queue's log directory; never reused, so a queue declared again after a delete
    /// never sees the old one's messages.
    pub id: u64,
    pub name: ShortString,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// A binding whose source and destination are both durable.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BindingDef {
    pub source: ShortString,
    pub destination: Destination,
    pub routing_key: ShortString,
    pub arguments: FieldTable,
}

/// Everything durable about a vhost's topology.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Definitions {
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

impl Definitions {
    /// The file's bytes: magic, then `X` records, `Q` records, `B` records.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = DEFINITIONS_MAGIC.to_vec();
        for x in &self.exchanges {
            format::frame(&mut out, tag::EXCHANGE, |b| {
                put_str8(b, x.name.as_str());
                put_str8(b, &x.kind);
                b.push(u8::from(x.auto_delete) | (u8::from(x.internal) << 1));
                put_table(b, &x.arguments);
            });
        }
        for q in &self.queues {
            format::frame(&mut out, tag::QUEUE, |b| {
                b.extend_from_slice(&q.id.to_le_bytes());
                put_str8(b, q.name.as_str());
                b.push(u8::from(q.auto_delete));
                put_table(b, &q.arguments);
            });
        }
        for bd in &self.bindings {
            format::frame(&mut out, tag::BINDING, |b| {
                put_str8(b, bd.source.as_str());
                let (kind, name) = match &bd.destination {
                    Destination::Queue(n) => (0, n),
                    Destination::Exchange(n) => (1, n),
                };
                b.push(kind);
                put_str8(b, name.as_str());
                put_str8(b, bd.routing_key.as_str());
                put_table(b, &bd.arguments);
            });
        }
        out
    }

    /// Reads the file; damaged records are reported and skipped (the file is replaced
    /// atomically, so damage means the disk, not a crash).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 8 || &bytes[..8] != DEFINITIONS_MAGIC {
            return Err("the definitions file does not start with AMQDEF01".into());
        }
        let mut defs = Definitions::default();
        for found in format::scan(bytes, 8) {
            match found {
                Scanned::Record {
                    offset,
                    tag,
                    payload,
                } => {
                    if let Err(Malformed(what)) = defs.add(tag, payload) {
                        tracing::error!(offset, "definitions: malformed {what}; record skipped");
                    }
                }
                Scanned::Corrupt { offset, resume } => tracing::error!(
                    offset,
                    "definitions: {} damaged bytes (checksum mismatch) skipped",
                    resume - offset
                ),
                Scanned::Tail { offset } => tracing::error!(
                    offset,
                    "definitions: damaged end of file ignored ({} bytes)",
                    bytes.len() - offset
                ),
            }
        }
        Ok(defs)
    }

    fn add(&mut self, tag: u8, payload: &[u8]) -> Result<(), Malformed> {
        let mut r = Reader::new(payload);
        match tag {
            tag::EXCHANGE => {
                let name = r.str8("exchange name")?;
                let kind = r.str8("exchange type")?.to_string();
                let flags = r.u8("exchange flags")?;
                let arguments = r.table("exchange arguments")?;
                self.exchanges.push(ExchangeDef {
                    name,
                    kind,
                    auto_delete: flags & 1 != 0,
                    internal: flags & 2 != 0,
                    arguments,
                });
            }
            tag::QUEUE => {
                let id = r.u64("queue id")?;
                let name = r.str8("queue name")?;
                let flags = r.u8("queue flags")?;
                let arguments = r.table("queue arguments")?;
                self.queues.push(QueueDef {
                    id,
                    name,
                    auto_delete: flags & 1 != 0,
                    arguments,
                });
            }
            tag::BINDING => {
                let source = r.str8("binding source")?;
                let kind = r.u8("binding destination kind")?;
                let name = r.str8("binding destination")?;
                let destination = match kind {
                    0 => Destination::Queue(name),
                    1 => Destination::Exchange(name),
                    _ => return Err(Malformed("binding destination kind")),
                };
                let routing_key = r.str8("binding routing key")?;
                let arguments = r.table("binding arguments")?;
                self.bindings.push(BindingDef {
                    source,
                    destination,
                    routing_key,
                    arguments,
                });
            }
            _ => return Err(Malformed("record type in the definitions file")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn definitions_round_trip() {
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
        let defs = Definitions {
            exchanges: vec![ExchangeDef {
                name: "orders".into(),
                kind: "topic".into(),
                auto_delete: false,
                internal: true,
                arguments: FieldTable::default(),
            }],
            queues: vec![QueueDef {
                id: 3,
                name: "q".into(),
                auto_delete: true,
                arguments: args.clone(),
            }],
            bindings: vec![BindingDef {
                source: "orders".into(),
                destination: Destination::Queue("q".into()),
                routing_key: "order.*".into(),
                arguments: args,
            }],
        };
        assert_eq!(Definitions::decode(&defs.encode()).unwrap(), defs);
    }
}
