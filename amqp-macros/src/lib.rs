//! Procedural macros for `amqp-core`: the `#[rabbit_listener]` attribute.
//!
//! Use it through `amqp_core::rabbit_listener`; the generated code refers to `::amqp_core`.

mod errors;
mod listener;

use proc_macro::TokenStream;

/// Turns an `async fn` into a listener: the queue (and the exchange and bindings it names) is
/// declared when the `App` starts, each delivery is converted into the function's arguments, and
/// the message is acknowledged by what the function returns.
///
/// ```ignore
/// use amqp_core::{rabbit_listener, ListenerError, Metadata, State};
///
/// #[rabbit_listener(queue = "login.log", exchange = "login", exchange_type = "topic", key = "login.*")]
/// async fn record_login(meta: Metadata, db: State<Db>, event: LoginEvent) -> Result<(), ListenerError> {
///     db.insert(&meta.routing_key, event).await?;
///     Ok(())
/// }
/// ```
///
/// The last parameter is the payload (any `serde::de::DeserializeOwned` type); the ones before it
/// are extractors (`Metadata`, `State<T>`, `Template`, `Acker`). The function returns `()` or
/// `Result<R, E>` with `E: Into<ListenerError>`: `Ok` acknowledges, `Err` rejects (or requeues),
/// and a non-`()` `R` is sent to the message's `reply_to`. The function itself is left as it is,
/// so unit tests can call it directly.
///
/// The keys are documented, with a runnable example, on `amqp_core::rabbit_listener`.
#[proc_macro_attribute]
pub fn rabbit_listener(attr: TokenStream, item: TokenStream) -> TokenStream {
    listener::rabbit_listener(attr.into(), item.into()).into()
}
