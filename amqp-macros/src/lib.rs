//! Procedural macros for `amqp-core`: the `#[rabbit_listener]` attribute.
//!
//! Use it through `amqp_core::rabbit_listener`; the generated code refers to `::amqp_core`.

mod errors;
mod listener;

use proc_macro::TokenStream;

/// Turns an `async fn` into a listener: when the [`App`] starts, the queue (with the exchange and
/// bindings it names) is declared, each delivery becomes the function's arguments, and the message
/// is acknowledged by what the function returns.
///
/// ```
/// use amqp_core::{ListenerError, Metadata, State, rabbit_listener};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct LoginEvent {
///     user: String,
/// }
///
/// struct Db;
///
/// impl Db {
///     async fn record(&self, user: &str, key: &str) -> std::io::Result<()> {
///         # let _ = (user, key);
///         Ok(())
///     }
/// }
///
/// #[rabbit_listener(queue = "login.log", exchange = "login", exchange_type = "topic", key = "login.*")]
/// async fn record_login(
///     meta: Metadata,
///     State(db): State<Db>,
///     event: LoginEvent,
/// ) -> Result<(), ListenerError> {
///     db.record(&event.user, &meta.routing_key).await?;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> amqp_core::Result<()> {
/// // Run every listener of the program (here on the embedded broker, as AMQP_URL is not set):
/// // `amqp_core::App::new().state(Db).run().await` until Ctrl-C. A test starts it like this:
/// let app = amqp_core::testing::TestApp::start_with(amqp_core::App::new().embedded().state(Db)).await?;
/// let event = LoginEvent { user: "ann".into() };
/// app.template().convert_and_send("login", "login.ok", &event).await?;
/// let calls = app.calls("record_login", 1, std::time::Duration::from_secs(5)).await?;
/// assert_eq!(calls[0].metadata.routing_key, "login.ok");
/// app.shutdown().await;
/// # Ok(())
/// # }
/// ```
///
/// # Parameters and return value
///
/// The **last** parameter is the payload: any `serde::de::DeserializeOwned` type, converted from
/// the body (JSON); a body that does not convert is rejected without calling the function. Every
/// parameter before it is an extractor ([`FromDelivery`]): [`Metadata`] (routing key, headers,
/// properties, redelivered), [`State<T>`] (shared with [`App::state`]), a [`Template`] to send
/// more messages, or, with `ack = "manual"`, the [`Acker`]. Patterns work: `State(db): State<Db>`.
///
/// The function returns `()` or `Result<R, E>` with `E: Into<ListenerError>` (any
/// `std::error::Error` converts): `Ok` acknowledges; `Err` rejects (to the dead-letter exchange,
/// if the queue has one) or requeues ([`ListenerError::requeue`]); a non-`()` `R` is serialized
/// and sent to the message's `reply_to`, which makes an RPC server one annotated function.
///
/// The function is left as it is, so unit tests call it directly.
///
/// # Keys
///
/// | key | value | meaning |
/// |---|---|---|
/// | `queue` | string, required | the queue consumed (declared if absent) |
/// | `exchange` | string | the exchange the queue is bound to (declared, durable) |
/// | `exchange_type` | `"direct"` (default), `"fanout"`, `"topic"`, `"headers"` | needs `exchange` |
/// | `key` | string or `["a", "b"]` | binding keys, one binding each (default: the empty key); needs `exchange` |
/// | `durable` | bool, default `true` | queue durability |
/// | `exclusive` | bool, default `false` | exclusive queue |
/// | `auto_delete` | bool, default `false` | deleted when its last consumer goes |
/// | `dead_letter_exchange` | string | queue argument `x-dead-letter-exchange` |
/// | `dead_letter_routing_key` | string | queue argument `x-dead-letter-routing-key` |
/// | `message_ttl` | integer (ms) | queue argument `x-message-ttl` |
/// | `max_length` | integer | queue argument `x-max-length` |
/// | `quorum` | flag (or `quorum = true`) | `x-queue-type = "quorum"`: a replicated queue (RabbitMQ clusters); durable, not exclusive, not auto-delete; with `retry`, `<queue>.dlq` is a quorum queue too |
/// | `delivery_limit` | integer (0 to 2³²−1), needs `quorum` | `x-delivery-limit`: a message redelivered more often is dead-lettered (or dropped) |
/// | `arguments(...)` | `name = value, ...` | any queue arguments: `arguments("x-overflow" = "reject-publish")` |
/// | `headers(...)` | `name = value, ...` | binding arguments for `exchange_type = "headers"` |
/// | `x_match` | `"all"`, `"any"`, `"all-with-x"`, `"any-with-x"` | binding argument `x-match` (headers only) |
/// | `prefetch` | integer (u16) | per consumer (default: the app's, `AMQP_PREFETCH`) |
/// | `concurrency` | integer ≥ 1 | consumers (default: the app's, `AMQP_CONCURRENCY`) |
/// | `ack` | `"auto"` (default), `"manual"`, `"none"` | see [`AckMode`] |
/// | `id` | string | unique in the program (default: the function's path, `module::name`) |
/// | `idempotent` | flag | each `message_id` handled once, through the app's idempotency store ([`App::idempotency`]; `REDIS_URL` with the `idempotent-redis` feature; else in memory); not with `ack = "none"` |
/// | `rate` | `"200/s"`, `"30/m"`, `"1000/h"` | at most so many messages, across the listener's consumers (token bucket) |
/// | `circuit_breaker(...)` | `failure_percent = 50, min_calls = 10, window = "10s", cool_down = "30s"` (each optional, these are the defaults) | stop consuming for `cool_down` when that share of at least `min_calls` deliveries in `window` failed; not with `auto_delete = true` |
/// | `partitions` | `partitions = 4` (1 to 1024) | ordered partitions: consume `<queue>.0` … `<queue>.3`, each single-active-consumer and bound with `<key>.<p>`; send with `Template::convert_and_send_partitioned`, and each partition key's messages are handled in order; not with `concurrency` above 1, nor a fanout or headers exchange |
///
/// Mistakes are compile errors at the offending tokens, all reported at once: not an `async fn`,
/// a method, no payload parameter, a missing `queue`, an unknown key (the keys are listed), a key
/// given twice, a value of the wrong type, `quorum` with `durable = false`, `exclusive` or
/// `auto_delete`, `delivery_limit` without `quorum`, an unknown `exchange_type`, `ack` or `x_match`,
/// `exchange_type`/`key` without `exchange`, `headers`/`x_match` without a headers exchange; a
/// parameter that is no extractor is reported at its type.
///
/// [`App`]: ../amqp_core/struct.App.html
/// [`App::state`]: ../amqp_core/struct.App.html#method.state
/// [`App::idempotency`]: ../amqp_core/struct.App.html#method.idempotency
/// [`FromDelivery`]: ../amqp_core/trait.FromDelivery.html
/// [`Metadata`]: ../amqp_core/struct.Metadata.html
/// [`State<T>`]: ../amqp_core/struct.State.html
/// [`Template`]: ../amqp_core/struct.Template.html
/// [`Acker`]: ../amqp_core/struct.Acker.html
/// [`AckMode`]: ../amqp_core/enum.AckMode.html
/// [`ListenerError::requeue`]: ../amqp_core/struct.ListenerError.html#method.requeue
#[proc_macro_attribute]
pub fn rabbit_listener(attr: TokenStream, item: TokenStream) -> TokenStream {
    listener::rabbit_listener(attr.into(), item.into()).into()
}
