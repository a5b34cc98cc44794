//! Every example, run end to end and its outcome checked: `NAME::bundled` on a fresh embedded
//! broker, `NAME::rabbitmq` against the RabbitMQ named by `AMQP_TEST_RABBITMQ_URL` (skipped when
//! it is unset), as the `tests` crate's `conformance!` does.
//!
//! Each example file is compiled in here as a module; its `run(app)` selects its own listeners
//! (their ids are unique across the examples), so all of them share this one test binary.
//!
//! The examples that keep data in a database also run on PostgreSQL (`postgres::NAME`, at
//! `DATABASE_URL` or the local default, with tables named for the run), and `data_sync` is run
//! across a broker restart in the middle of a burst of changes.

use std::collections::{BTreeMap, BTreeSet};

use amqp_core::App;

#[allow(dead_code)]
#[path = "../examples/data_sync.rs"]
mod data_sync_example;
#[allow(dead_code)]
#[path = "../examples/delayed_order.rs"]
mod delayed_order_example;
#[allow(dead_code)]
#[path = "../examples/hello.rs"]
mod hello_example;
#[allow(dead_code)]
#[path = "../examples/idempotent_payment.rs"]
mod idempotent_payment_example;
#[allow(dead_code)]
#[path = "../examples/login_log.rs"]
mod login_log_example;
#[allow(dead_code)]
#[path = "../examples/ordered_events.rs"]
mod ordered_events_example;
#[allow(dead_code)]
#[path = "../examples/pub_sub.rs"]
mod pub_sub_example;
#[allow(dead_code)]
#[path = "../examples/rate_limited.rs"]
mod rate_limited_example;
#[allow(dead_code)]
#[path = "../examples/registration_email.rs"]
mod registration_email_example;
#[allow(dead_code)]
#[path = "../examples/routing.rs"]
mod routing_example;
#[allow(dead_code)]
#[path = "../examples/rpc.rs"]
mod rpc_example;
#[allow(dead_code)]
#[path = "../examples/topics.rs"]
mod topics_example;
#[allow(dead_code)]
#[path = "../examples/work_queues.rs"]
mod work_queues_example;

const RABBITMQ_URL_VAR: &str = "AMQP_TEST_RABBITMQ_URL";

/// Declares `NAME::bundled` and `NAME::rabbitmq` for `async fn NAME(app: App)`.
macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bundled() {
                super::$name(amqp_core::App::new().embedded()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq() {
                match std::env::var(super::RABBITMQ_URL_VAR).ok().filter(|u| !u.is_empty()) {
                    Some(url) => super::$name(amqp_core::App::new().url(url)).await,
                    None => eprintln!("skipped: set {} to run this against RabbitMQ", super::RABBITMQ_URL_VAR),
                }
            }
        }
    )+};
}

on_both!(hello, work_queues, pub_sub, routing, topics, rpc);
on_both!(ordered_events);
on_both!(registration_email, login_log, data_sync);

/// The PostgreSQL of `DATABASE_URL` (default: the local one this machine and CI run).
fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// Drops the tables a PostgreSQL test created.
async fn drop_tables(tables: &[&str]) {
    let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL answers");
    tokio::spawn(connection);
    for table in tables {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await
            .expect("drop table");
    }
}

/// A fresh, empty folder for one test's files.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("examples-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
on_both!(
    idempotent_payment_memory,
    idempotent_payment_redis,
    rate_limited
);

async fn hello(app: App) {
    let report = hello_example::run(app).await.expect("hello runs");
    let modes = BTreeMap::from([
        ("auto", (2, true)),   // failed, requeued, printed on redelivery
        ("manual", (2, true)), // nacked with requeue, printed and acked on redelivery
        ("none", (1, false)),  // failed once, never seen again
    ]);
    assert_eq!(report.modes, modes, "{report}");
}

async fn work_queues(app: App) {
    let report = work_queues_example::run(app)
        .await
        .expect("work_queues runs");
    assert_eq!(report.fast + report.slow, work_queues_example::TASKS);
    assert!(report.slow >= 1, "both workers took tasks: {report}");
    assert!(
        report.fast > 2 * report.slow,
        "the fast one did more: {report}"
    );
}

async fn pub_sub(app: App) {
    let report = pub_sub_example::run(app).await.expect("pub_sub runs");
    let lines = |ns: &[&str]| ns.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        report.screen,
        lines(&[
            "1: service started",
            "2: user ann logged in",
            "3: user bob logged in"
        ])
    );
    assert_eq!(
        report.archive,
        lines(&["2: user ann logged in", "3: user bob logged in"])
    );
}

async fn routing(app: App) {
    let report = routing_example::run(app).await.expect("routing runs");
    let expected = BTreeMap::from([
        (
            "logs.direct.console".to_string(),
            vec!["info".to_string(), "warning".into(), "error".into()],
        ),
        ("logs.direct.errors".to_string(), vec!["error".to_string()]),
    ]);
    assert_eq!(report.queues, expected, "{report}");
}

async fn topics(app: App) {
    let report = topics_example::run(app).await.expect("topics runs");
    let reached = |queues: &[&str]| -> BTreeSet<String> {
        queues.iter().map(|q| format!("logs.topic.{q}")).collect()
    };
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("kern.critical", reached(&["kernel", "critical"])),
        ("kern.info", reached(&["kernel"])),
        ("auth.critical", reached(&["critical", "auth"])),
        ("auth", reached(&["auth"])), // `#` matches zero words
        ("auth.login.failed", reached(&["auth"])), // … or several
        ("kern.disk.full", reached(&[])), // `*` matches exactly one
        ("cron.warning", reached(&[])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(report.reached, expected, "{report}");
}

async fn rpc(app: App) {
    use rpc_example::{Outcome, Quote};
    let report = rpc_example::run(app).await.expect("rpc runs");
    let coffee = Quote {
        item: "coffee".into(),
        total_cents: 700,
    };
    assert_eq!(
        report.calls,
        vec![
            ("2 x coffee".to_string(), Outcome::Answered(Ok(coffee))),
            (
                "1 x caviar".to_string(),
                Outcome::Answered(Err("no price for 'caviar'".into()))
            ),
            ("1 x wedding cake".to_string(), Outcome::TimedOut),
        ]
    );
}

on_both!(delayed_order);

async fn delayed_order(app: App) {
    use delayed_order_example::{ORDERS, PAYMENT_WINDOW, Status};
    let report = delayed_order_example::run(app)
        .await
        .expect("delayed_order runs");
    for (order, paid) in ORDERS {
        let (status, after) = report.orders[&order];
        let expected = if paid {
            Status::Paid
        } else {
            Status::Cancelled
        };
        assert_eq!(status, expected, "order {order}: {report}");
        assert!(
            after >= PAYMENT_WINDOW && after < PAYMENT_WINDOW + std::time::Duration::from_secs(1),
            "order {order}'s check came after the window, not long after: {report}"
        );
    }
}

async fn ordered_events(app: App) {
    use ordered_events_example::{ACCOUNTS, EVENTS_PER_ACCOUNT, expected_balance};
    let report = ordered_events_example::run(app)
        .await
        .expect("ordered_events runs");
    assert_eq!(report.accounts.len(), ACCOUNTS as usize, "{report}");
    for (a, (name, account)) in report.accounts.iter().enumerate() {
        assert_eq!(name, &format!("acct-{a:02}"));
        assert_eq!(account.next, EVENTS_PER_ACCOUNT, "{name}: {account:?}");
        assert_eq!(account.out_of_order, 0, "{name}: {account:?}");
        assert_eq!(account.bounced, 0, "{name}: {account:?}");
        assert_eq!(account.balance, expected_balance(a as u32), "{name}");
    }
    assert_eq!(report.in_order(), ACCOUNTS as usize);
    assert!(
        report.most_in_flight >= 2,
        "accounts on different partitions were applied in parallel: {report}"
    );
}

async fn registration_email(app: App) {
    use registration_email_example::{Mailer, SIGN_UPS, run};
    let dir = scratch_dir("registration_email");
    let report = run(app, Mailer::files(dir.clone()).expect("mail folder"))
        .await
        .expect("registration_email runs");
    assert_eq!(report.registered.len(), 3, "{report}");
    assert_eq!(report.refused.len(), 1, "{report}");
    assert!(report.refused[0].contains("dan-at-example.com"), "{report}");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("mail folder")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "one .eml file per registration: {files:?}");
    for (user, _) in &report.registered {
        let (name, email) = SIGN_UPS
            .iter()
            .find(|(n, _)| *n == user.name)
            .expect("a demo user");
        let mail = files
            .iter()
            .map(|f| std::fs::read_to_string(f).expect("an .eml file"))
            .find(|text| text.contains(&format!("To: {name} <{email}>")))
            .unwrap_or_else(|| panic!("no e-mail to {email} in {files:?}"));
        assert!(
            mail.contains("From: Shop <no-reply@shop.example>"),
            "{mail}"
        );
        assert!(
            mail.contains(&format!(
                "Subject: Welcome, {name}: please confirm your address"
            )),
            "{mail}"
        );
        assert!(
            mail.contains(&format!("https://shop.example/confirm?code={}", user.code)),
            "the link carries the user's code: {mail}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The examples that keep their data in PostgreSQL with `DATABASE_URL`, on the embedded broker.
mod postgres {
    use super::login_log_example::Database;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn login_log() {
        let table = format!("login_records_{}", std::process::id());
        let db = Database::Postgres {
            url: super::database_url(),
            table: table.clone(),
        };
        super::check_login_log(amqp_core::App::new().embedded(), db).await;
        super::drop_tables(&[&table]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_sync() {
        let prefix = format!("data_sync_{}_", std::process::id());
        let db = super::data_sync_example::Database::Postgres {
            url: super::database_url(),
            prefix: prefix.clone(),
        };
        super::check_data_sync(amqp_core::App::new().embedded(), db).await;
        super::drop_tables(&[&format!("{prefix}products"), &format!("{prefix}outbox")]).await;
    }
}

async fn login_log(app: App) {
    let dir = scratch_dir("login_log");
    let db = login_log_example::Database::Sqlite {
        path: dir.join("logins.sqlite"),
        table: "login_records".into(),
    };
    check_login_log(app, db).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn check_login_log(app: App, db: login_log_example::Database) {
    use login_log_example::{LOGGING_TIME, run};
    let report = run(app, db).await.expect("login_log runs");
    assert_eq!(report.wrong_password, 401, "{report}");
    assert_eq!(report.logins.len(), 10, "{report}");
    assert_eq!(report.before_stop, 5, "{report}");
    assert_eq!(
        report.while_stopped, 5,
        "nothing recorded while stopped: {report}"
    );
    for (id, _) in &report.logins {
        assert!(
            report.recorded.contains(id),
            "login {id} has no record: {report}"
        );
    }
    // The median, so that one answer slowed by a busy machine does not decide: were the record
    // written before answering, every answer would take at least LOGGING_TIME.
    let mut times: Vec<_> = report.logins.iter().map(|(_, d)| *d).collect();
    times.sort();
    assert!(
        times[times.len() / 2] < LOGGING_TIME,
        "a login is answered before its record is written: {report}"
    );
}

/// The data_sync tests on RabbitMQ use the same queues, so they take turns.
static DATA_SYNC_QUEUES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn data_sync(app: App) {
    let _turn = DATA_SYNC_QUEUES.lock().await;
    let dir = scratch_dir("data_sync");
    let db = data_sync_example::Database::Sqlite {
        path: dir.join("catalog.sqlite"),
    };
    check_data_sync(app, db).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn check_data_sync(app: App, db: data_sync_example::Database) {
    let dir = scratch_dir("data_sync_out");
    // `run` itself fails unless the site and the search index end up matching the database.
    let report = data_sync_example::run(app, db, &dir)
        .await
        .expect("data_sync runs");
    let named: Vec<_> = report
        .products
        .iter()
        .map(|p| (p.name.as_str(), p.price_cents, p.version))
        .collect();
    assert_eq!(
        named,
        [
            ("Desk lamp", 2499, 2),
            ("Oak standing desk", 31900, 2),
            ("Office chair", 12900, 1)
        ],
        "{report}"
    );
    let lamps: Vec<_> = report.lamps.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(lamps, ["Desk lamp"], "the deleted lamp shade is not found");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The broker stops in the middle of a burst of changes and comes back on the same port with
/// its data directory: the outbox holds what could not be published, the durable queues keep
/// what was, and every page ends up matching the database (a redelivered older version does not
/// overwrite a newer page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sync_survives_a_broker_restart() {
    use data_sync_example::{DataSync, Database, burst};
    use std::time::Duration;
    let dir = scratch_dir("data_sync_restart");
    let data_dir = dir.join("broker");
    let start_broker = |port: u16| {
        amqp_broker::Broker::builder()
            .port(port)
            .data_dir(&data_dir)
            .start()
    };
    let broker = start_broker(0).await.expect("broker starts");
    let port = broker.port();
    let db = Database::Sqlite {
        path: dir.join("catalog.sqlite"),
    };
    let sync = DataSync::start(App::new().url(broker.amqp_url()), &db, &dir)
        .await
        .expect("data_sync starts");
    let catalog = sync.catalog.clone();
    let changes = tokio::spawn(async move { burst(&catalog, 300, Duration::from_millis(5)).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!changes.is_finished(), "the broker stops mid-burst");
    broker.shutdown().await.expect("broker stops");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let unsent: i64 = rusqlite::Connection::open(dir.join("catalog.sqlite"))
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL",
                [],
                |r| r.get(0),
            )
        })
        .expect("count unsent events");
    assert!(
        unsent > 0,
        "changes made during the outage wait in the outbox"
    );
    let broker = start_broker(port)
        .await
        .expect("broker restarts on its port");
    changes
        .await
        .expect("burst task")
        .expect("every change committed");
    let took = sync.wait_in_sync(Duration::from_secs(60)).await;
    sync.shutdown().await;
    let _ = broker.shutdown().await;
    let took = took.expect("the site and the search index match the database");
    eprintln!("{unsent} changes waited in the outbox; in sync {took:?} after the burst ended");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The site applies each product's changes by version: an older one arriving late (a
/// redelivery) neither overwrites a newer page nor brings a deleted product back.
#[test]
fn data_sync_ignores_older_versions() {
    use data_sync_example::site::{Site, check};
    use data_sync_example::{Product, ProductChanged};
    let dir = scratch_dir("data_sync_versions");
    let site = Site::open(dir.clone()).expect("site folder");
    let lamp = |version, price_cents| Product {
        id: 7,
        name: "Desk lamp".into(),
        price_cents,
        version,
    };
    let saved = |p: &Product| ProductChanged::Saved(p.clone());
    assert!(site.apply(&saved(&lamp(2, 2499))).expect("write"));
    assert!(!site.apply(&saved(&lamp(1, 2999))).expect("write"), "older");
    assert_eq!(check(&dir, &[lamp(2, 2499)]), Ok(()));
    let deleted = ProductChanged::Deleted { id: 7, version: 3 };
    assert!(site.apply(&deleted).expect("write"));
    assert!(
        !site.apply(&saved(&lamp(2, 2499))).expect("write"),
        "older than the delete"
    );
    assert_eq!(check(&dir, &[]), Ok(()));
    // A new site process reads the versions back from its folder.
    let reopened = Site::open(dir.clone()).expect("site folder");
    assert!(!reopened.apply(&saved(&lamp(2, 2499))).expect("write"));
    assert_eq!(check(&dir, &[]), Ok(()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// On RabbitMQ (shared by the tests, so not restarted): the app's connection is closed from the
/// broker's side during a burst of changes, and once more after it came back. The relay and the listeners reconnect, the
/// deliveries they had not acked come again (older versions are ignored), and every page ends up
/// matching the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sync_survives_lost_connections_rabbitmq() {
    use data_sync_example::{DataSync, Database, burst};
    use std::time::Duration;
    let Some(rabbitmq) = tests::TestBroker::rabbitmq().await else {
        eprintln!("skipped: set {RABBITMQ_URL_VAR} to run this against RabbitMQ");
        return;
    };
    let _turn = DATA_SYNC_QUEUES.lock().await;
    let dir = scratch_dir("data_sync_lost_connections");
    let name = format!("data_sync-{}", std::process::id());
    let db = Database::Sqlite {
        path: dir.join("catalog.sqlite"),
    };
    let app = App::new().url(rabbitmq.url()).connection_name(&name);
    let sync = DataSync::start(app, &db, &dir)
        .await
        .expect("data_sync starts");
    let catalog = sync.catalog.clone();
    let changes =
        tokio::spawn(async move { burst(&catalog, 400, Duration::from_millis(10)).await });
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if round == 0 {
            assert!(!changes.is_finished(), "the connection is closed mid-burst");
        }
        let closed = rabbitmq.close_connections_named(&name).await;
        assert!(closed >= 1, "the app's connection was closed");
    }
    changes
        .await
        .expect("burst task")
        .expect("every change committed");
    let took = sync.wait_in_sync(Duration::from_secs(60)).await;
    sync.shutdown().await;
    let took = took.expect("the site and the search index match the database");
    eprintln!("in sync {took:?} after the burst ended");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fails the test instead of letting it hang when `run` takes longer than `secs`.
async fn within<T>(secs: u64, run: impl std::future::Future<Output = T>) -> T {
    let limit = std::time::Duration::from_secs(secs);
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("the example did not finish within {secs} s"))
}

/// The payment example's queues have fixed names: its runs against one RabbitMQ take turns.
static PAYMENTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn idempotent_payment(app: App, redis_url: Option<&str>) {
    let _turn = PAYMENTS.lock().await;
    let report = within(30, idempotent_payment_example::run(app, redis_url))
        .await
        .expect("idempotent_payment runs");
    let ids: Vec<_> = report.notices.iter().map(|w| w.id.clone()).collect();
    assert_eq!(
        report.books.debited, ids,
        "each debited once, in order: {report}"
    );
    assert_eq!(report.books.texts, 3, "one text per withdrawal: {report}");
    assert_eq!(report.books.withdrawn, 120 + 60 + 300, "{report}");
    assert_eq!(report.left_in_queue, 0, "every copy acknowledged: {report}");
}

async fn idempotent_payment_memory(app: App) {
    idempotent_payment(app, None).await;
}

/// Redis at `REDIS_URL`, or the local one CI runs; one that does not answer fails the test.
async fn idempotent_payment_redis(app: App) {
    let url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    idempotent_payment(app, Some(&url)).await;
}

async fn rate_limited(app: App) {
    let report = within(90, rate_limited_example::run(app))
        .await
        .expect("rate_limited runs");
    let (published, processed) = (report.published_in, report.processed_in);
    assert!(
        processed >= std::time::Duration::from_secs(9),
        "1,000 orders at 100/s take about 10 s: {report}"
    );
    assert!(
        published * 4 < processed,
        "the publisher was not held back: {report}"
    );
    let rate = report.steady_rate();
    assert!(
        (60.0..=140.0).contains(&rate),
        "about 100/s in the steady part: {report}"
    );
    assert!(
        report.steady().iter().all(|&n| n <= 140),
        "no second went much over the limit: {report}"
    );
}
