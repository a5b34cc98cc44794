//! Spring-AMQP-style messaging for Rust.
//!
//! This crate is being built issue by issue: the `Template`, the listener container, declarations
//! and connection recovery arrive with the amqp-core issue, and `#[rabbit_listener]` (from
//! `amqp-macros`) with the macro issue. Until then it offers nothing; the bundled broker
//! (`amqp-broker`) already works on its own.
