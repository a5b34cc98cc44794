// A listener cannot be generic: the app needs one concrete handler.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "orders")]
async fn on_order<T: serde::de::DeserializeOwned>(order: T) {
    let _ = order;
}

fn main() {}
