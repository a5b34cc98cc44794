//! Procedural macros for `amqp-core`. `#[rabbit_listener]` arrives with the macro issue; this crate
//! exports nothing yet.
