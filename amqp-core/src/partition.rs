//! Ordered partitions: one logical queue split into N queues, `<queue>.0` … `<queue>.N-1`, each
//! with a single active consumer (`x-single-active-consumer`), and messages spread over them by a
//! stable hash of a partition key (an account id, an order id).
//!
//! ```text
//! Template::convert_and_send_partitioned(exchange, "orders", 4, "acct-17", &event)
//!     routing key "orders.<p>", p = Partitions::of("acct-17")      (same key → same p, always)
//!         → queue "orders.<p>" (bound with key "orders.<p>", or the default exchange by name)
//!             → its single active consumer, one message at a time   (in order per queue)
//! ```
//!
//! Every message of one key goes to one queue, and a queue has one active consumer across all
//! processes, handling one message at a time: so each key's messages are handled in the order
//! they were published, while different partitions run in parallel. When the active consumer's
//! process dies, the broker requeues its unacknowledged messages at their original places and
//! makes a standby consumer (another process) active: order still holds, with the usual
//! at-least-once caveat that the messages the dead process handled but had not acked are
//! handled again, first.
//!
//! This needs nothing but routing keys and `x-single-active-consumer`, so it works on a plain
//! RabbitMQ (3.8+) without plugins, and on the bundled broker.
//!
//! What breaks the order: a handler error that requeues (`ListenerError::requeue`) puts that
//! message back while later ones go on, with `prefetch` above 1; with `idempotent`, a message
//! whose lease a dead consumer still holds is requeued until the lease lapses, and later messages
//! of its key pass it; changing the number of partitions while messages are queued (a key may
//! then move to another queue, and its new messages overtake the old ones). Producers and
//! listeners must agree on the number.

use serde::Serialize;

use crate::converter::MessageConverter;
use crate::declare::{Binding, Declarable, Queue};
use crate::error::{Error, Result};
use crate::template::Template;

/// How many queues a partitioned listener spreads over, and which one a key belongs to.
///
/// The partition of a key is [jump consistent hash] (Lamping and Veach, 2014) of the 64-bit
/// [FNV-1a] hash of the key's UTF-8 bytes. Both are fixed arithmetic (no random seed, unlike
/// std's `RandomState`), so every process, platform and version computes the same partition;
/// a unit test pins known values. Jump hash also moves as few keys as possible when the count
/// changes: going from N to N+1 partitions moves about 1/(N+1) of the keys.
///
/// [jump consistent hash]: https://arxiv.org/abs/1406.2294
/// [FNV-1a]: http://www.isthe.com/chongo/tech/comp/fnv/
///
/// # Examples
///
/// ```
/// use amqp_core::Partitions;
///
/// let partitions = Partitions::new(4)?;
/// let p = partitions.of("account-17");
/// assert!(p < 4);
/// assert_eq!(p, partitions.of("account-17"), "stable");
/// assert_eq!(Partitions::queue_name("orders", p), format!("orders.{p}"));
/// assert!(Partitions::new(0).is_err());
/// # Ok::<(), amqp_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Partitions {
    count: u16,
}

impl Partitions {
    /// The most partitions a listener may have (each is a queue and a consumer channel).
    pub const MAX: u16 = 1024;

    /// `count` partitions, from 1 to [`Partitions::MAX`].
    pub fn new(count: u16) -> Result<Self> {
        if count == 0 || count > Self::MAX {
            return Err(Error::Configuration(format!(
                "partitions must be from 1 to {}, not {count}",
                Self::MAX
            )));
        }
        Ok(Self { count })
    }

    /// How many partitions.
    pub fn count(self) -> u16 {
        self.count
    }

    /// The partition (`0..count`) that `partition_key` belongs to: the same for the same key in
    /// every process and every version.
    pub fn of(self, partition_key: &str) -> u16 {
        let bucket = jump_consistent_hash(fnv1a_64(partition_key.as_bytes()), self.count.into());
        // jump_consistent_hash returns a value below `count`, which fits in a u16.
        bucket as u16
    }

    /// The queue of one partition: `<queue>.<partition>`.
    pub fn queue_name(queue: &str, partition: u16) -> String {
        format!("{queue}.{partition}")
    }

    /// The routing key that reaches one partition: `<key>.<partition>`. With the default
    /// exchange, `key` is the base queue name, and this is the partition's queue name.
    pub fn routing_key(key: &str, partition: u16) -> String {
        format!("{key}.{partition}")
    }

    /// The partitions' queue names, in order.
    pub fn queue_names(self, queue: &str) -> Vec<String> {
        (0..self.count)
            .map(|p| Self::queue_name(queue, p))
            .collect()
    }

    /// The partitions' queues: copies of `queue` named `<queue>.<p>`, each with
    /// `x-single-active-consumer = true`. Declare them with [`crate::Connection::declare`].
    ///
    /// ```
    /// use amqp_core::{Declarable, Partitions, Queue};
    /// let queues = Partitions::new(2)?.queues(&Queue::durable("orders"));
    /// let names: Vec<_> = queues.iter().map(|q| match q {
    ///     Declarable::Queue(q) => q.name().to_owned(),
    ///     _ => unreachable!(),
    /// }).collect();
    /// assert_eq!(names, ["orders.0", "orders.1"]);
    /// # Ok::<(), amqp_core::Error>(())
    /// ```
    pub fn queues(self, queue: &Queue) -> Vec<Declarable> {
        (0..self.count)
            .map(|p| {
                queue
                    .renamed(Self::queue_name(queue.name(), p))
                    .single_active_consumer()
                    .into()
            })
            .collect()
    }

    /// Binds each partition's queue to `exchange` with `<key>.<p>` (for a direct or topic
    /// exchange; a topic `key` may hold wildcards, `order.*` becoming `order.*.<p>`).
    pub fn bindings(self, queue: &str, exchange: &str, key: &str) -> Vec<Declarable> {
        (0..self.count)
            .map(|p| {
                Binding::queue(Self::queue_name(queue, p))
                    .to(exchange)
                    .key(Self::routing_key(key, p))
                    .into()
            })
            .collect()
    }
}

impl<C: MessageConverter> Template<C> {
    /// Converts `payload` and sends it to the partition of `partition_key` among `partitions`:
    /// with routing key `<routing_key>.<p>`, `p` = [`Partitions::of`]`(partition_key)`. Messages
    /// sent with one partition key, one after the other, are handled in that order by a listener
    /// with the same number of partitions (`#[rabbit_listener(queue = "orders", partitions = 4)]`
    /// or [`crate::ListenerBuilder::partitions`]).
    ///
    /// With the default exchange (`""`), `routing_key` is the listener's queue; with a direct or
    /// topic exchange, the key the listener binds. The send is mandatory: if no queue takes it
    /// (the partitions are not declared, or the listener has fewer of them), it fails with
    /// [`Error::Returned`] rather than vanish. Send one key's messages one after the other
    /// (await each): concurrent sends have no order to keep.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
    /// # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
    /// use std::time::Duration;
    /// use amqp_core::{Connection, Partitions, Queue, Template};
    ///
    /// let conn = Connection::connect(&broker.amqp_url()).await?;
    /// conn.declare(Partitions::new(4)?.queues(&Queue::durable("accounts"))).await?;
    /// let template = Template::new(conn);
    /// template.convert_and_send_partitioned("", "accounts", 4, "acct-17", &100).await?;
    /// let p = Partitions::new(4)?.of("acct-17");
    /// let queue = Partitions::queue_name("accounts", p);
    /// let got: Option<i32> = template.receive_and_convert(&queue, Duration::from_secs(1)).await?;
    /// assert_eq!(got, Some(100));
    /// # Ok(()) }
    /// ```
    pub async fn convert_and_send_partitioned<T: Serialize + ?Sized>(
        &self,
        exchange: &str,
        routing_key: &str,
        partitions: u16,
        partition_key: &str,
        payload: &T,
    ) -> Result<()> {
        let partition = Partitions::new(partitions)?.of(partition_key);
        let message = self.message_for(payload)?;
        let routing_key = Partitions::routing_key(routing_key, partition);
        self.send_with(exchange, &routing_key, message, true).await
    }
}

/// 64-bit FNV-1a: offset basis 0xcbf29ce484222325, prime 0x100000001b3.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Jump consistent hash: a bucket in `0..buckets` (`buckets` ≥ 1). It walks a pseudo-random
/// sequence of "jumps" seeded by `key`, each the point where the key would move to a newly added
/// bucket, and stops at the last jump below `buckets`. The float arithmetic is IEEE 754 (exactly
/// rounded), so it gives the same answer everywhere.
fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let mut bucket: i64 = -1;
    let mut jump: i64 = 0;
    while jump < i64::from(buckets) {
        bucket = jump;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let divisor = ((key >> 33) + 1) as f64;
        jump = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / divisor)) as i64;
    }
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pinned: a change here moves keys to other queues, which breaks the order of every
    /// message in flight during an upgrade. Never update these values; fix the code instead.
    #[test]
    fn partitions_never_change() {
        let keys = ["", "a", "account-1", "account-2", "order-42", "ключ"];
        let pinned: [(u16, [u16; 6]); 4] = [
            (2, [1, 1, 0, 0, 0, 0]),
            (4, [1, 2, 2, 3, 0, 0]),
            (16, [13, 12, 13, 3, 7, 12]),
            (1024, [266, 163, 132, 683, 111, 523]),
        ];
        for (n, expected) in pinned {
            let partitions = Partitions::new(n).unwrap();
            assert_eq!(keys.map(|k| partitions.of(k)), expected, "{n} partitions");
        }
        assert_eq!(jump_consistent_hash(0, 1000), 0);
        assert_eq!(jump_consistent_hash(1, 1000), 549);
        assert_eq!(jump_consistent_hash(u64::MAX, 1000), 313);
    }

    #[test]
    fn one_bucket_takes_everything() {
        for key in 0..1000 {
            assert_eq!(jump_consistent_hash(key, 1), 0);
        }
    }

    #[test]
    fn growing_moves_keys_only_to_the_new_partition() {
        for n in 1..64u16 {
            let (small, large) = (Partitions::new(n).unwrap(), Partitions::new(n + 1).unwrap());
            for k in 0..500 {
                let key = format!("key-{k}");
                let (before, after) = (small.of(&key), large.of(&key));
                assert!(after == before || after == n, "{key}: {before} -> {after}");
            }
        }
    }

    #[test]
    fn counts_out_of_range_are_errors() {
        assert!(Partitions::new(0).is_err());
        assert!(Partitions::new(Partitions::MAX + 1).is_err());
        assert_eq!(Partitions::new(Partitions::MAX).unwrap().count(), 1024);
    }

    #[test]
    fn names() {
        assert_eq!(Partitions::queue_name("orders", 3), "orders.3");
        assert_eq!(Partitions::routing_key("order.*", 0), "order.*.0");
        assert_eq!(
            Partitions::new(3).unwrap().queue_names("q"),
            ["q.0", "q.1", "q.2"]
        );
    }
}
