//! delayed_order: the notes' delayed work (延迟任务): an order that is not paid in time is
//! cancelled. Placing an order also sends a "check payment" message for it, delayed by the
//! payment window (`Template::convert_and_send_delayed`). The broker holds the message, in its
//! delayed-message exchange or, on a RabbitMQ without that plugin, in a TTL wait queue, so
//! nothing in the application sleeps, polls or keeps a timer. When the check arrives, a paid
//! order is left alone and an unpaid one is cancelled.
//!
//! ```text
//! cargo run -p examples --example delayed_order                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example delayed_order # RabbitMQ
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqp_core::{App, State, rabbit_listener};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::time::Instant;

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 1] = ["delayed_order.check_payment"];

/// How long a customer has to pay.
pub const PAYMENT_WINDOW: Duration = Duration::from_secs(2);

/// The orders placed, and which of them get paid in time.
pub const ORDERS: [(u64, bool); 4] = [(1001, true), (1002, false), (1003, true), (1004, false)];

/// The queue the delayed checks arrive on.
const CHECKS: &str = "delayed_order.payment_checks";

/// "Has this order been paid?", sent when the order is placed and delivered a window later.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckPayment {
    pub order: u64,
}

/// Where an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    AwaitingPayment,
    Paid,
    Cancelled,
}

/// The shop's orders (a database in a real application), and who to tell about each check.
#[derive(Debug)]
pub struct Shop {
    orders: Mutex<BTreeMap<u64, (Status, Instant)>>,
    checked: UnboundedSender<(u64, Duration)>,
}

impl Shop {
    fn set(&self, order: u64, status: Status) {
        let mut orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        orders.entry(order).or_insert((status, Instant::now())).0 = status;
    }
}

#[rabbit_listener(
    id = "delayed_order.check_payment",
    queue = "delayed_order.payment_checks",
    durable = false,
    auto_delete = true
)]
async fn check_payment(State(shop): State<Arc<Shop>>, check: CheckPayment) {
    let placed = {
        let mut orders = shop.orders.lock().unwrap_or_else(|e| e.into_inner());
        let Some((status, placed)) = orders.get_mut(&check.order) else {
            println!("[check] order {} is unknown: ignored", check.order);
            return;
        };
        if *status == Status::AwaitingPayment {
            *status = Status::Cancelled;
            println!("[check] order {} unpaid: cancelled", check.order);
        } else {
            println!("[check] order {} is {status:?}: left alone", check.order);
        }
        *placed
    };
    let _ = shop.checked.send((check.order, placed.elapsed()));
}

/// How each order ended, and how long after it was placed its check arrived.
#[derive(Debug)]
pub struct Report {
    pub orders: BTreeMap<u64, (Status, Duration)>,
}

/// Places the orders, pays some of them, and waits for every check.
pub async fn run(app: App) -> anyhow::Result<Report> {
    let (tx, mut checked) = unbounded_channel();
    let shop = Arc::new(Shop {
        orders: Mutex::default(),
        checked: tx,
    });
    let app = app
        .listeners(LISTENERS)
        .state::<Arc<Shop>>(shop.clone())
        .start()
        .await?;
    for (order, _) in ORDERS {
        shop.set(order, Status::AwaitingPayment);
        let check = CheckPayment { order };
        app.template()
            .convert_and_send_delayed("", CHECKS, &check, PAYMENT_WINDOW)
            .await?;
        println!("[shop] order {order} placed; payment check due in {PAYMENT_WINDOW:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (order, _) in ORDERS.iter().filter(|(_, pays)| *pays) {
        shop.set(*order, Status::Paid);
        println!("[shop] order {order} paid");
    }
    let mut waited = BTreeMap::new();
    while waited.len() < ORDERS.len() {
        let limit = PAYMENT_WINDOW + Duration::from_secs(10);
        match tokio::time::timeout(limit, checked.recv()).await {
            Ok(Some((order, after))) => waited.insert(order, after),
            _ => anyhow::bail!("only {} of {} checks arrived", waited.len(), ORDERS.len()),
        };
    }
    app.shutdown().await;
    let statuses = shop
        .orders
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let orders = waited
        .into_iter()
        .map(|(order, after)| (order, (statuses[&order].0, after)))
        .collect();
    Ok(Report { orders })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (order, (status, after)) in &self.orders {
            let outcome = match status {
                Status::Paid => "paid in time, kept",
                Status::Cancelled => "not paid in time, cancelled",
                Status::AwaitingPayment => "still awaiting payment (no check?)",
            };
            writeln!(
                f,
                "order {order}: {outcome} (checked {} ms after it was placed)",
                after.as_millis()
            )?;
        }
        writeln!(
            f,
            "every check came {} s after its order, held by the broker",
            PAYMENT_WINDOW.as_secs()
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,amqp_core::app=info".into()),
        )
        .init();
    let report = run(App::new()).await?;
    print!("\n{report}");
    Ok(())
}
