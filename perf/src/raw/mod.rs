//! `--client raw`: AMQP 0-9-1 spoken directly, one tokio task per connection.
//!
//! lapin runs an I/O thread per connection and resolves a promise per publish, which made the
//! tool use several times the CPU of the broker it measured. Here the task that publishes or
//! consumes owns its socket: publishes are encoded into one buffer from a template and written
//! together; a consumer decodes deliveries straight from its read buffer and writes the acks for
//! everything it read in one go. Queue setup and idle connections still go through lapin.

pub mod connection;
pub mod consumer;
pub mod producer;
pub mod wire;
