//! Your first listener: one annotated function, declared, subscribed and acknowledged for you.
//!
//! ```text
//! cargo run -p examples --example first_listener                     # embedded broker, no set-up
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!     cargo run -p examples --example first_listener                 # the same program on RabbitMQ
//! ```
//!
//! The attribute names the queue, the exchange and the binding; `App` declares them, starts a
//! listener container for the function, and acks each message when the function returns `Ok`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amqp_core::{App, ListenerError, rabbit_listener};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct LoginEvent {
    user: String,
    ip: String,
}

static RECORDED: AtomicUsize = AtomicUsize::new(0);

#[rabbit_listener(
    queue = "first.login.log",
    exchange = "first.login",
    exchange_type = "topic",
    key = "login.*",
    durable = false,
    auto_delete = true
)]
async fn record_login(event: LoginEvent) -> Result<(), ListenerError> {
    println!("recorded: {} logged in from {}", event.user, event.ip);
    RECORDED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // AMQP_URL when set; otherwise the bundled broker, started in-process.
    let app = App::new().listeners(["record_login"]).start().await?;
    println!("connected to {}", app.url());

    let logins = [
        ("ann", "10.0.0.7"),
        ("bob", "10.0.0.9"),
        ("cy", "10.0.0.12"),
    ];
    for (user, ip) in logins {
        let event = LoginEvent {
            user: user.into(),
            ip: ip.into(),
        };
        app.template()
            .convert_and_send("first.login", "login.ok", &event)
            .await?;
    }

    let all_recorded = async {
        while RECORDED.load(Ordering::SeqCst) < logins.len() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all_recorded).await?;
    println!(
        "{} logins recorded; shutting down",
        RECORDED.load(Ordering::SeqCst)
    );
    app.shutdown().await;
    Ok(())
}
