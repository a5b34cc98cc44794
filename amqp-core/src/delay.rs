//! Delayed delivery through the broker, for [`crate::Template::send_delayed`] and for listener
//! retries. Two mechanisms, chosen once per connection ([`DelayMechanism`]):
//!
//! - **Delayed exchange**, when the broker has the `x-delayed-message` exchange type (the
//!   bundled broker does; RabbitMQ with the `rabbitmq_delayed_message_exchange` plugin). The
//!   message is published with an `x-delay` header to
//!   - `amqp-core.delayed` (routing like `direct`), to which each target queue is bound by its
//!     own name, for sends to the default exchange and for retries;
//!   - `amqp-core.delayed.<exchange>` (routing like `fanout`), bound to `<exchange>`
//!     (exchange-to-exchange), for sends to a named exchange: the routing key is kept, so the
//!     target exchange routes the message as if it had been published there.
//! - **Wait queues** otherwise (a plain RabbitMQ): a queue per distinct delay whose
//!   `x-message-ttl` is that delay and whose dead-letter exchange is the target. All messages in
//!   one such queue wait equally long, so they expire in order, at the head, on time.
//!   - Retries go to `<queue>.retry.<ms>` (through the default exchange), which dead-letters to
//!     the default exchange with `x-dead-letter-routing-key = <queue>`.
//!   - Sends go to a fanout exchange `amqp-core.delay.<ms>.<exchange>` (`amqp-core.delay.<ms>`
//!     for the default exchange) bound to a queue of the same name that dead-letters to
//!     `<exchange>` with no dead-letter routing key: publishing through the fanout keeps the
//!     message's routing key, and the dead-lettered copy is routed with it.
//!
//!   Wait queues carry `x-expires` (the delay plus a minute), so unused ones go away; the
//!   exchange is auto-delete and goes with its queue's binding. A wait queue is declared again
//!   before use when its last declaration is older than [`REDECLARE_AFTER`] (a declaration
//!   counts as use, a publish does not), or was made on an earlier connection: so declarations
//!   are re-done after connection recovery, lazily, and a queue never expires with a message
//!   still waiting in it.
//!
//! Detection: RabbitMQ answers an `exchange.declare` of an unknown type with the
//! connection-level error 503 COMMAND_INVALID ("unknown exchange type"), which closes the whole
//! connection. So the probe runs on a scratch connection of its own (declare, then delete, an
//! exchange `amqp-core.delay-probe.<uuid>`), never on the application's.

use std::collections::HashMap;
use std::time::Duration;

use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::connection::Connection;
use crate::declare::{Binding, Declarable, Exchange, ExchangeType, Queue};
use crate::error::{Error, Result};

/// How delayed messages (delayed sends, listener retries) wait in the broker.
///
/// - **Delayed exchange**: published with an `x-delay` header to `amqp-core.delayed`
///   (`x-delayed-type = direct`; each target queue bound by its own name) for retries and sends
///   to the default exchange, or to `amqp-core.delayed.<exchange>` (`x-delayed-type = fanout`,
///   bound to `<exchange>`) for sends to a named exchange, keeping the routing key.
/// - **Wait queues**: retries wait in `<queue>.retry.<ms>`, which dead-letters to the default
///   exchange with `x-dead-letter-routing-key = <queue>`; sends go through a fanout exchange
///   `amqp-core.delay.<ms>.<exchange>` (`amqp-core.delay.<ms>` for the default exchange) into a
///   queue of the same name that dead-letters to `<exchange>`, keeping the routing key. One queue
///   per distinct delay, so messages expire in order, on time. Each has `x-expires` (the delay
///   plus a minute; re-declared at least every 30 s while in use, and after a reconnection), so
///   unused ones go away. A send that finds its wait queue gone declares it again.
///
/// Detection asks the broker on a scratch connection, since RabbitMQ answers a declaration of
/// an unknown exchange type with 503 COMMAND_INVALID, which closes the connection.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
/// # let broker = amqp_core::broker::Broker::builder().port(0).start().await?;
/// use amqp_core::{ConnectionFactory, DelayMechanism};
///
/// // The bundled broker has a delayed-message exchange; force the TTL wait queues anyway.
/// let conn = ConnectionFactory::new(broker.amqp_url())
///     .delay_mechanism(DelayMechanism::WaitQueues)
///     .connect()
///     .await?;
/// assert_eq!(conn.delay_mechanism().await?, DelayMechanism::WaitQueues);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DelayMechanism {
    /// Find out once per connection: the delayed exchange when the broker has the
    /// `x-delayed-message` type, wait queues otherwise (the default).
    #[default]
    Auto,
    /// The broker's `x-delayed-message` exchange (an `x-delay` header per message).
    DelayedExchange,
    /// TTL wait queues that dead-letter to the target when the delay is over.
    WaitQueues,
}

/// How often a wait queue in use is declared again, to keep its `x-expires` from running out.
pub(crate) const REDECLARE_AFTER: Duration = Duration::from_secs(30);
/// How long a wait queue outlives its last declaration, beyond its delay.
const EXPIRES_MARGIN: Duration = Duration::from_secs(60);
/// The delayed exchange for retries and for sends to the default exchange.
const DELAYED_DIRECT: &str = "amqp-core.delayed";

/// Where a delayed message is going.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target<'a> {
    /// Back to a listener's queue, for another attempt.
    Retry {
        /// The listener's queue.
        queue: &'a str,
    },
    /// A delayed send.
    Send {
        /// The exchange it is for (`""`: the default exchange).
        exchange: &'a str,
        /// Its routing key.
        routing_key: &'a str,
    },
}

/// Where to publish a delayed message now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub exchange: String,
    pub routing_key: String,
    /// The `x-delay` header's milliseconds (delayed exchange only).
    pub x_delay: Option<i64>,
}

/// The per-connection state of delays: the mechanism, once known, and when each route's
/// declarations were last made.
#[derive(Debug, Default)]
pub(crate) struct Delays {
    configured: DelayMechanism,
    resolved: OnceCell<DelayMechanism>,
    /// Route name → (connection generation, when) of its last declaration.
    declared: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Delays {
    pub(crate) fn new(configured: DelayMechanism) -> Self {
        Self {
            configured,
            ..Self::default()
        }
    }

    /// The mechanism in use: as configured, or detected on first use.
    pub(crate) async fn mechanism(&self, conn: &Connection) -> Result<DelayMechanism> {
        if self.configured != DelayMechanism::Auto {
            return Ok(self.configured);
        }
        let detected = self
            .resolved
            .get_or_try_init(|| async {
                let found = if has_delayed_exchange(conn).await? {
                    DelayMechanism::DelayedExchange
                } else {
                    DelayMechanism::WaitQueues
                };
                tracing::info!(mechanism = ?found, "delayed messages: broker support detected");
                Ok::<_, Error>(found)
            })
            .await?;
        Ok(*detected)
    }

    /// Forgets that a route was declared, so that its next use declares it again.
    pub(crate) fn forget(&self, route: &Route) {
        self.declared.lock().remove(&route.key());
    }

    /// Declares what `target` needs for `delay` (unless done recently on this connection) and
    /// says where to publish.
    pub(crate) async fn route(
        &self,
        conn: &Connection,
        target: Target<'_>,
        delay: Duration,
    ) -> Result<Route> {
        let mechanism = self.mechanism(conn).await?;
        let ms = delay.as_millis().min(crate::retry::MAX_DELAY.as_millis()) as u64;
        let (route, declarations) = plan(mechanism, target, ms);
        let key = route.key();
        let fresh = |(generation, at): &(u64, Instant)| {
            conn.generation() == Some(*generation) && at.elapsed() < REDECLARE_AFTER
        };
        if self.declared.lock().get(&key).is_some_and(fresh) {
            return Ok(route);
        }
        let (channel, generation) = conn.channel().await?;
        let declared = crate::declare::declare_all(&channel, &declarations).await;
        if channel.status().connected() {
            let _ = channel.close(200, "declared".into()).await;
        }
        declared?;
        self.declared
            .lock()
            .insert(key, (generation, Instant::now()));
        Ok(route)
    }
}

/// The route and the declarations it needs, for one mechanism, target and delay.
fn plan(mechanism: DelayMechanism, target: Target<'_>, ms: u64) -> (Route, Vec<Declarable>) {
    let delayed = |name: &str, routes_as: &str| {
        Exchange::new(name, ExchangeType::Custom("x-delayed-message".into())).argument(
            "x-delayed-type",
            AMQPValue::LongString(LongString::from(routes_as)),
        )
    };
    let wait_queue = |name: &str| {
        Queue::durable(name)
            .message_ttl(Duration::from_millis(ms))
            .argument(
                "x-expires",
                AMQPValue::LongLongInt((ms + EXPIRES_MARGIN.as_millis() as u64) as i64),
            )
    };
    let x_delay = Some(ms as i64);
    match (mechanism, target) {
        (DelayMechanism::WaitQueues, Target::Retry { queue }) => {
            let name = format!("{queue}.retry.{ms}");
            let wait = wait_queue(&name)
                .dead_letter_exchange("")
                .dead_letter_routing_key(queue);
            (route("", &name, None), vec![wait.into()])
        }
        (
            DelayMechanism::WaitQueues,
            Target::Send {
                exchange,
                routing_key,
            },
        ) => {
            let name = if exchange.is_empty() {
                format!("amqp-core.delay.{ms}")
            } else {
                format!("amqp-core.delay.{ms}.{exchange}")
            };
            let declarations = vec![
                Exchange::fanout(&name).auto_delete(true).into(),
                wait_queue(&name).dead_letter_exchange(exchange).into(),
                Binding::queue(&name).to(&name).into(),
            ];
            (route(&name, routing_key, None), declarations)
        }
        (
            _,
            Target::Retry { queue: key }
            | Target::Send {
                exchange: "",
                routing_key: key,
            },
        ) => {
            let declarations = vec![
                delayed(DELAYED_DIRECT, "direct").into(),
                Binding::queue(key).to(DELAYED_DIRECT).key(key).into(),
            ];
            (route(DELAYED_DIRECT, key, x_delay), declarations)
        }
        (
            _,
            Target::Send {
                exchange,
                routing_key,
            },
        ) => {
            let name = format!("{DELAYED_DIRECT}.{exchange}");
            let declarations = vec![
                delayed(&name, "fanout").into(),
                Binding::exchange(exchange).to(&name).into(),
            ];
            (route(&name, routing_key, x_delay), declarations)
        }
    }
}

impl Route {
    /// What the declared-routes table knows it by.
    fn key(&self) -> String {
        format!("{}\n{}", self.exchange, self.routing_key)
    }
}

fn route(exchange: &str, routing_key: &str, x_delay: Option<i64>) -> Route {
    Route {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        x_delay,
    }
}

/// Whether the broker knows the `x-delayed-message` exchange type, asked on a scratch
/// connection (an unknown type closes the connection it was declared on).
async fn has_delayed_exchange(conn: &Connection) -> Result<bool> {
    let factory = conn.factory();
    let scratch = crate::connection::connect_any(factory)
        .await
        .map_err(|last_error| Error::Unreachable {
            addresses: factory.display_addresses(),
            waited: Duration::ZERO,
            last_error,
        })?;
    let probe = format!("amqp-core.delay-probe.{}", uuid::Uuid::new_v4());
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("direct".into()),
    );
    let channel = scratch.create_channel().await?;
    let options = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    let declared = channel
        .exchange_declare(
            probe.as_str().into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            options,
            arguments,
        )
        .await;
    let supported = match declared {
        Ok(()) => {
            let _ = channel
                .exchange_delete(probe.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            true
        }
        Err(e) => {
            tracing::debug!("no x-delayed-message exchange type: the broker answered {e}");
            false
        }
    };
    if scratch.status().connected() {
        let _ = scratch.close(200, "delay probe done".into()).await;
    }
    Ok(supported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_queue_names_keep_targets_apart() {
        let send = |exchange, routing_key| Target::Send {
            exchange,
            routing_key,
        };
        let (to_queue, _) = plan(DelayMechanism::WaitQueues, send("", "orders"), 5000);
        let (to_exchange, decls) = plan(DelayMechanism::WaitQueues, send("orders", "k"), 5000);
        let (retry, _) = plan(
            DelayMechanism::WaitQueues,
            Target::Retry { queue: "orders" },
            5000,
        );
        assert_eq!(to_queue, route("amqp-core.delay.5000", "orders", None));
        assert_eq!(to_exchange, route("amqp-core.delay.5000.orders", "k", None));
        assert_eq!(retry, route("", "orders.retry.5000", None));
        assert_eq!(decls.len(), 3);
    }

    #[test]
    fn delayed_exchange_routes_carry_x_delay() {
        let (r, _) = plan(
            DelayMechanism::DelayedExchange,
            Target::Retry { queue: "q" },
            250,
        );
        assert_eq!(r, route(DELAYED_DIRECT, "q", Some(250)));
        let target = Target::Send {
            exchange: "x",
            routing_key: "a.b",
        };
        let (r, _) = plan(DelayMechanism::DelayedExchange, target, 250);
        assert_eq!(r, route("amqp-core.delayed.x", "a.b", Some(250)));
    }
}
