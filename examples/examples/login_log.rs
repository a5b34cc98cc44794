//! login_log: the login log of the notes (异步通信: 登录 → 记录登录日志). An HTTP login service
//! (axum) checks the password, publishes a `LoginEvent` and answers at once; a log listener does
//! the slow part (200 ms a record here, think of a remote audit store) and writes the record to
//! SQLite, or to PostgreSQL with `DATABASE_URL`. The demo shows that
//!
//! 1. the login's response time does not include the logging work, and
//! 2. stopping the log listener loses nothing: logins made meanwhile wait in the queue, and their
//!    records appear when the listener comes back.
//!
//! The listener runs in a second `App` on the same broker, so that it can be stopped and started
//! while the login service keeps answering.
//!
//! ```text
//! cargo run -p examples --example login_log                                          # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example login_log # RabbitMQ
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p examples --example login_log
//! cargo run -p examples --example login_log -- --serve   # serve on 127.0.0.1:3000 until Ctrl-C
//! curl -d '{"user":"ann","password":"wonderland"}' -H 'content-type: application/json' 127.0.0.1:3000/login
//! ```

#[path = "login_log/client.rs"]
mod client;
#[path = "login_log/records.rs"]
mod records;
#[path = "login_log/web.rs"]
mod web;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use amqp_core::{App, ListenerError, RunningApp, State, rabbit_listener};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use records::{Database, LoginRecords};
use web::{USERS, serve};

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 1] = ["login_log.record"];

/// How long writing one record takes (deliberately slow).
pub const LOGGING_TIME: Duration = Duration::from_millis(200);

/// What the login service publishes after a successful login.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoginEvent {
    pub login_id: String,
    pub user: String,
    pub ip: String,
    pub at_ms: i64,
}

/// Writes one login record: slowly, and after the user got the answer.
#[rabbit_listener(
    id = "login_log.record",
    queue = "login_log.records",
    exchange = "login_log.logins",
    exchange_type = "topic",
    key = "login.succeeded"
)]
async fn record_login(
    State(records): State<Arc<LoginRecords>>,
    event: LoginEvent,
) -> Result<(), ListenerError> {
    tokio::time::sleep(LOGGING_TIME).await;
    let LoginEvent {
        login_id,
        user,
        ip,
        at_ms,
    } = &event;
    records
        .insert(login_id, user, ip, *at_ms)
        .await
        .map_err(ListenerError::requeue)?;
    println!("[log] recorded the login of {user} from {ip}");
    Ok(())
}

/// Starts the log listener in an app of its own on `url`.
async fn start_logger(url: &str, records: &Arc<LoginRecords>) -> anyhow::Result<RunningApp> {
    let logger = App::new()
        .url(url)
        .listeners(LISTENERS)
        .state(records.clone());
    Ok(logger.connection_name("login_log logger").start().await?)
}

/// The demo's outcome.
#[derive(Debug, Default)]
pub struct Report {
    /// Login ids and response times, in order; the second half while the logger was stopped.
    pub logins: Vec<(String, Duration)>,
    /// The status of a login with a wrong password.
    pub wrong_password: u16,
    /// Records of this run's logins just before the logger stopped, and while it was stopped.
    pub before_stop: usize,
    pub while_stopped: usize,
    /// Every record after the logger came back (may include earlier runs' in the same database).
    pub recorded: Vec<String>,
}

/// The demo: 5 logins, logger stopped, 5 more, logger back.
pub async fn run(app: App, db: Database) -> anyhow::Result<Report> {
    let records = Arc::new(LoginRecords::open(&db).await?);
    let web = app.listeners(Vec::<String>::new()).start().await?; // publishes only
    let mut logger = start_logger(web.url(), &records).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    serve(web.template().clone(), listener, async move {
        drop(stopped.await)
    });
    println!("login service on http://{addr}/login");

    let mut report = Report::default();
    let body = json!({ "user": "ann", "password": "guess" }).to_string();
    report.wrong_password = client::post_json(addr, "/login", &body).await?.0;
    report.logins.extend(client::log_in(addr, &USERS, 5).await?);
    let ids = |r: &Report| {
        r.logins
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>()
    };
    report.before_stop = records
        .count(&ids(&report), Duration::from_secs(10))
        .await?;

    println!("stopping the log listener");
    logger.shutdown().await;
    report.logins.extend(client::log_in(addr, &USERS, 5).await?);
    report.while_stopped = records
        .count(&ids(&report), Duration::from_millis(500))
        .await?;

    println!("starting the log listener again");
    logger = start_logger(web.url(), &records).await?;
    records
        .count(&ids(&report), Duration::from_secs(10))
        .await?;
    report.recorded = records.login_ids().await?;
    logger.shutdown().await;
    let _ = stop.send(());
    web.shutdown().await;
    Ok(report)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let slowest = self.logins.iter().map(|(_, d)| ms(d)).fold(0.0, f64::max);
        let mean =
            self.logins.iter().map(|(_, d)| ms(d)).sum::<f64>() / self.logins.len().max(1) as f64;
        let logged = self
            .logins
            .iter()
            .filter(|(id, _)| self.recorded.contains(id))
            .count();
        writeln!(f, "wrong password: HTTP {}", self.wrong_password)?;
        writeln!(
            f,
            "{} logins answered in {mean:.1} ms on average, {slowest:.1} ms at most;",
            self.logins.len()
        )?;
        writeln!(
            f,
            "writing a login record takes {} ms, after the answer",
            LOGGING_TIME.as_millis()
        )?;
        writeln!(
            f,
            "records of the first 5 logins:          {}",
            self.before_stop
        )?;
        writeln!(
            f,
            "records while the listener was stopped: {}",
            self.while_stopped
        )?;
        writeln!(
            f,
            "records once it was back:               {logged} of {}",
            self.logins.len()
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
    let db = Database::from_env(std::env::temp_dir().join("login_log.sqlite"));
    if std::env::args().any(|a| a == "--serve") {
        let records = Arc::new(LoginRecords::open(&db).await?);
        let app = App::new().state(records).start().await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:3000: {e}"))?;
        println!(
            "login service on http://127.0.0.1:3000/login (users: ann/wonderland, bob/builder); Ctrl-C stops"
        );
        serve(app.template().clone(), listener, async {
            drop(tokio::signal::ctrl_c().await)
        });
        let _ = tokio::signal::ctrl_c().await;
        app.shutdown().await;
        return Ok(());
    }
    let report = run(App::new(), db).await?;
    print!("\n{report}");
    Ok(())
}
