//! Users, vhosts and permissions: the same definitions file is imported into the bundled broker
//! (`--definitions` / `.definitions_file`) and into RabbitMQ (`rabbitmqctl import_definitions`),
//! then the same refusals are expected from both, code and text.
//!
//! The RabbitMQ leg (`*_rabbitmq`) runs when `AMQP_TEST_RABBITMQ_URL` is set and `rabbitmqctl`
//! can reach that node; it creates a user and a vhost with unique names and deletes them after.

mod common;

use amq_protocol::protocol::{AMQPClass, connection};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, Event};
use tests::raw::{self, RawClient};
use tests::unique;

use common::within;

/// RabbitMQ 3.10.8's `password_hash` for the password "guest" (from `rabbitmqctl
/// export_definitions`): the bundled broker must accept RabbitMQ's hashes as they are.
const GUEST_HASH: &str = "MP8P3KWPS1jzFFh7FA6imL+7V9AvKLpVKuw/bcBgMRTD8/o7";

/// A user and a vhost made for one test run.
struct Fixture {
    user: String,
    vhost: String,
}

impl Fixture {
    fn new() -> Self {
        Self {
            user: unique("access-user"),
            vhost: unique("access-vhost"),
        }
    }

    /// The definitions both brokers import: the user (password "guest") may configure and
    /// write `own.*`, read `own.*` and the exchange `shared.x`; `shared.x` and `shared.q`
    /// exist already.
    fn definitions(&self) -> serde_json::Value {
        let (user, vhost) = (&self.user, &self.vhost);
        serde_json::json!({
            "rabbit_version": "3.10.8",
            "rabbitmq_version": "3.10.8",
            "users": [{
                "name": user, "password_hash": GUEST_HASH,
                "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": [], "limits": {}
            }],
            "vhosts": [{ "name": vhost, "limits": [], "metadata": { "description": "", "tags": [] } }],
            "permissions": [{
                "user": user, "vhost": vhost,
                "configure": "^own\\.", "write": "^own\\.", "read": "^own\\.|^shared\\.x$"
            }],
            "topic_permissions": [], "parameters": [], "global_parameters": [], "policies": [],
            "exchanges": [{
                "name": "shared.x", "vhost": vhost, "type": "direct", "durable": true,
                "auto_delete": false, "internal": false, "arguments": {}
            }],
            "queues": [{
                "name": "shared.q", "vhost": vhost, "durable": true, "auto_delete": false,
                "arguments": {}
            }],
            "bindings": []
        })
    }

    fn refused(&self, what: &str) -> String {
        format!(
            "ACCESS_REFUSED - access to {what} in vhost '{}' refused for user '{}'",
            self.vhost, self.user
        )
    }

    /// `amqp://user:guest@addr/vhost`, the vhost percent-encoded.
    fn url(&self, addr: &str) -> String {
        format!("amqp://{}:guest@{addr}/{}", self.user, encode(&self.vhost))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The reply code and text of the next channel or connection error on `conn`.
struct Errors(futures::stream::BoxStream<'static, Event>);

impl Errors {
    fn watch(conn: &Connection) -> Self {
        Self(conn.events_listener().boxed())
    }

    async fn next(&mut self) -> (u16, String) {
        within("a channel error", async {
            loop {
                match self.0.next().await {
                    Some(Event::Error(e)) => return code_and_text(&e),
                    Some(_) => continue,
                    None => panic!("event stream ended without an error"),
                }
            }
        })
        .await
    }
}

fn code_and_text(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => (amqp.get_id(), amqp.get_message().to_string()),
        _ => panic!("not an AMQP error: {e}"),
    }
}

/// Runs `op` on a fresh channel and expects it refused with 403 and exactly `text`.
async fn expect_refused<T: std::fmt::Debug>(
    conn: &Connection,
    what: &str,
    text: &str,
    op: impl AsyncFnOnce(&Channel) -> lapin::Result<T>,
) {
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    let result = within(what, op(&ch)).await;
    match result {
        Ok(v) => panic!("{what}: expected 403, got Ok({v:?})"),
        Err(e) => assert_eq!(code_and_text(&e), (403, text.to_owned()), "{what}"),
    }
}

/// Runs `op` on a fresh channel and expects it to succeed.
async fn expect_allowed<T>(
    conn: &Connection,
    what: &str,
    op: impl AsyncFnOnce(&Channel) -> lapin::Result<T>,
) {
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    if let Err(e) = within(what, op(&ch)).await {
        panic!("{what}: expected success, got {e}");
    }
}

fn declare(
    ch: &Channel,
    name: &str,
    passive: bool,
) -> impl Future<Output = lapin::Result<lapin::Queue>> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive,
            durable: passive,
            ..Default::default()
        },
        FieldTable::default(),
    )
}

/// Every operation class, allowed and refused, as user `f.user` in `f.vhost` on `addr`.
async fn permission_expectations(f: &Fixture, addr: &str) {
    let conn = within(
        "connect",
        Connection::connect(&f.url(addr), ConnectionProperties::default()),
    )
    .await
    .expect("the imported user logs in with the imported hash");

    // queue.declare: configure on the queue (a server-named one too); passive needs nothing.
    expect_allowed(&conn, "declare own.q", async |ch| {
        declare(ch, "own.q", false).await
    })
    .await;
    expect_refused(
        &conn,
        "declare shared.q",
        &f.refused("queue 'shared.q'"),
        async |ch| declare(ch, "shared.q", false).await,
    )
    .await;
    expect_allowed(&conn, "passive declare shared.q", async |ch| {
        declare(ch, "shared.q", true).await
    })
    .await;
    let ch = conn.create_channel().await.expect("channel");
    let e = within("server-named", declare(&ch, "", false))
        .await
        .expect_err("server-named queue refused");
    let (code, text) = code_and_text(&e);
    assert_eq!(code, 403);
    let prefix = "ACCESS_REFUSED - access to queue 'amq.gen-";
    let suffix = format!("' in vhost '{}' refused for user '{}'", f.vhost, f.user);
    assert!(
        text.starts_with(prefix) && text.ends_with(&suffix),
        "{text}"
    );

    // exchange.declare / delete: configure on the exchange; passive needs nothing.
    expect_allowed(&conn, "declare own.x", async |ch| {
        ch.exchange_declare(
            "own.x".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
    })
    .await;
    expect_allowed(&conn, "declare own.x2", async |ch| {
        ch.exchange_declare(
            "own.x2".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
    })
    .await;
    expect_refused(
        &conn,
        "declare other.x",
        &f.refused("exchange 'other.x'"),
        async |ch| {
            ch.exchange_declare(
                "other.x".into(),
                lapin::ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
        },
    )
    .await;
    expect_allowed(&conn, "passive declare shared.x", async |ch| {
        let passive = ExchangeDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            "shared.x".into(),
            lapin::ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        )
        .await
    })
    .await;
    expect_refused(
        &conn,
        "delete shared.x",
        &f.refused("exchange 'shared.x'"),
        async |ch| {
            ch.exchange_delete("shared.x".into(), ExchangeDeleteOptions::default())
                .await
        },
    )
    .await;

    // A new queue's dead-letter exchange, a new exchange's alternate exchange: write on it.
    let with_arg = |key: &str, value: &str| {
        let mut args = FieldTable::default();
        args.insert(
            key.into(),
            lapin::types::AMQPValue::LongString(value.into()),
        );
        args
    };
    let dlx_to = |dlx: &'static str| {
        let args = with_arg("x-dead-letter-exchange", dlx);
        async move |ch: &Channel| {
            let name = format!("own.dlq-{dlx}");
            ch.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
                .await
        }
    };
    expect_allowed(
        &conn,
        "queue with own dead-letter exchange",
        dlx_to("own.x"),
    )
    .await;
    expect_refused(
        &conn,
        "queue with shared.x as dead-letter exchange",
        &f.refused("exchange 'shared.x'"),
        dlx_to("shared.x"),
    )
    .await;
    let alternate_to = |alternate: &'static str| {
        let args = with_arg("alternate-exchange", alternate);
        async move |ch: &Channel| {
            let name = format!("own.ae-{alternate}");
            let kind = lapin::ExchangeKind::Fanout;
            ch.exchange_declare(
                name.as_str().into(),
                kind,
                ExchangeDeclareOptions::default(),
                args,
            )
            .await
        }
    };
    expect_allowed(&conn, "exchange with own alternate", alternate_to("own.x")).await;
    expect_refused(
        &conn,
        "exchange with shared.x as alternate",
        &f.refused("exchange 'shared.x'"),
        alternate_to("shared.x"),
    )
    .await;

    // The default and amq.* exchanges are refused as such, before any permission check.
    expect_refused(
        &conn,
        "delete amq.direct",
        &format!(
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '{}' not allowed",
            f.vhost
        ),
        async |ch| {
            ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default())
                .await
        },
    )
    .await;

    // queue.bind: write on the queue, read on the exchange.
    let bind = |q: &'static str, x: &'static str| {
        async move |ch: &Channel| {
            ch.queue_bind(
                q.into(),
                x.into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    expect_allowed(&conn, "bind own.q to shared.x", bind("own.q", "shared.x")).await;
    expect_refused(
        &conn,
        "bind shared.q to own.x",
        &f.refused("queue 'shared.q'"),
        bind("shared.q", "own.x"),
    )
    .await;
    expect_refused(
        &conn,
        "bind own.q to amq.direct",
        &f.refused("exchange 'amq.direct'"),
        bind("own.q", "amq.direct"),
    )
    .await;
    expect_refused(
        &conn,
        "bind own.q to the default exchange",
        "ACCESS_REFUSED - operation not permitted on the default exchange",
        bind("own.q", ""),
    )
    .await;

    // exchange.bind: write on the destination, read on the source.
    let xbind = |dest: &'static str, source: &'static str| {
        async move |ch: &Channel| {
            ch.exchange_bind(
                dest.into(),
                source.into(),
                "k".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    expect_allowed(
        &conn,
        "bind own.x2 to shared.x",
        xbind("own.x2", "shared.x"),
    )
    .await;
    expect_refused(
        &conn,
        "bind shared.x to own.x",
        &f.refused("exchange 'shared.x'"),
        xbind("shared.x", "own.x"),
    )
    .await;

    // basic.get / consume, queue.purge: read on the queue; queue.delete: configure.
    expect_allowed(&conn, "get own.q", async |ch| {
        ch.basic_get("own.q".into(), BasicGetOptions::default())
            .await
    })
    .await;
    expect_refused(
        &conn,
        "get shared.q",
        &f.refused("queue 'shared.q'"),
        async |ch| {
            ch.basic_get("shared.q".into(), BasicGetOptions::default())
                .await
        },
    )
    .await;
    expect_refused(
        &conn,
        "consume shared.q",
        &f.refused("queue 'shared.q'"),
        async |ch| {
            ch.basic_consume(
                "shared.q".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        },
    )
    .await;
    expect_refused(
        &conn,
        "purge shared.q",
        &f.refused("queue 'shared.q'"),
        async |ch| {
            ch.queue_purge("shared.q".into(), QueuePurgeOptions::default())
                .await
        },
    )
    .await;
    expect_refused(
        &conn,
        "delete shared.q",
        &f.refused("queue 'shared.q'"),
        async |ch| {
            ch.queue_delete("shared.q".into(), QueueDeleteOptions::default())
                .await
        },
    )
    .await;

    // basic.publish: write on the exchange (the default one is checked as amq.default). The
    // refusal closes the channel asynchronously.
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirm = ch
        .basic_publish(
            "own.x".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"ok",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    within("confirm", confirm)
        .await
        .expect("publish to own.x confirmed");
    for (exchange, refused_as) in [("", "amq.default"), ("shared.x", "shared.x")] {
        let mut errors = Errors::watch(&conn);
        let ch = conn.create_channel().await.expect("channel");
        let _ = ch
            .basic_publish(
                exchange.into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"no",
                BasicProperties::default(),
            )
            .await;
        assert_eq!(
            errors.next().await,
            (403, f.refused(&format!("exchange '{refused_as}'"))),
            "publish to '{exchange}'"
        );
    }

    expect_allowed(&conn, "delete own.q", async |ch| {
        ch.queue_delete("own.q".into(), QueueDeleteOptions::default())
            .await
    })
    .await;
    tests::close_quietly(&conn, "done").await;
}

/// connection.open to a vhost the user has no permission on, and to one that does not exist:
/// 530 NOT_ALLOWED on connection.open.
async fn vhost_refusals(f: &Fixture, addr: &str) {
    let refused = open_refused(addr, "guest", &f.vhost).await;
    assert_eq!(
        (refused.ids(), refused.reply_text.as_str()),
        (
            (530, 10, 40),
            format!(
                "NOT_ALLOWED - access to vhost '{}' refused for user 'guest'",
                f.vhost
            )
            .as_str()
        )
    );
    let missing = unique("no-such-vhost");
    let refused = open_refused(addr, &f.user, &missing).await;
    assert_eq!(
        (refused.ids(), refused.reply_text.as_str()),
        (
            (530, 10, 40),
            format!("NOT_ALLOWED - vhost {missing} not found").as_str()
        )
    );
}

/// Logs in as `user` (password "guest"), opens `vhost`, and returns the connection.close.
async fn open_refused(addr: &str, user: &str, vhost: &str) -> raw::CloseReason {
    let mut c = RawClient::connect(addr).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response(user, "guest"), true)
        .await;
    let tune = c.expect_tune().await;
    c.tune_ok(tune.channel_max, tune.frame_max, tune.heartbeat)
        .await;
    let open = connection::Open {
        virtual_host: vhost.into(),
    };
    c.send_method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))
        .await;
    c.expect_connection_close().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_bundled() {
    let f = Fixture::new();
    let dir = std::env::temp_dir().join(unique("access-defs"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("definitions.json");
    std::fs::write(&file, serde_json::to_vec(&f.definitions()).unwrap()).unwrap();
    let broker = amqp_broker::Broker::builder()
        .port(0)
        .definitions_file(&file)
        .start()
        .await
        .expect("broker starts with the definitions");
    let addr = broker.local_addr().to_string();
    permission_expectations(&f, &addr).await;
    vhost_refusals(&f, &addr).await;
    broker.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `rabbitmqctl ARGS`, asserting success.
async fn rabbitmqctl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Held by each test that changes RabbitMQ's definitions: RabbitMQ 3.10's `export_definitions`
/// fails (`badarg` in `rabbit_definitions:runtime_parameter_definition`) while another import
/// creates or deletes a vhost, so these tests take turns.
static RABBITMQ_DEFINITIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The RabbitMQ node's `host:port`, when the RabbitMQ leg is asked for.
fn rabbitmq_addr() -> Option<String> {
    let url = std::env::var(tests::RABBITMQ_URL_VAR)
        .ok()
        .filter(|u| !u.is_empty())?;
    let rest = url.split_once('@').map_or(url.as_str(), |(_, r)| r);
    Some(
        rest.trim_start_matches("amqp://")
            .split('/')
            .next()?
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_rabbitmq() {
    let Some(addr) = rabbitmq_addr() else {
        eprintln!(
            "skipped: set {} to run this against RabbitMQ",
            tests::RABBITMQ_URL_VAR
        );
        return;
    };
    let _turn = RABBITMQ_DEFINITIONS.lock().await;
    let f = Fixture::new();
    let file = std::env::temp_dir().join(format!("{}.json", unique("access-defs")));
    std::fs::write(&file, serde_json::to_vec(&f.definitions()).unwrap()).unwrap();
    rabbitmqctl(&["import_definitions", file.to_str().unwrap()]).await;
    // Clean up even when an expectation fails.
    let outcome = tokio::spawn({
        let (user, vhost, addr) = (f.user.clone(), f.vhost.clone(), addr.clone());
        async move {
            let f = Fixture { user, vhost };
            permission_expectations(&f, &addr).await;
            vhost_refusals(&f, &addr).await;
        }
    })
    .await;
    rabbitmqctl(&["delete_vhost", &f.vhost]).await;
    rabbitmqctl(&["delete_user", &f.user]).await;
    std::fs::remove_file(&file).unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The address this machine reaches others from (not loopback), if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // A UDP connect sends nothing: it only picks the route and so the source address.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// guest logs in from loopback only, as RabbitMQ's `loopback_users`; from another address the
/// refusal is the same as for a wrong password. `loopback_users([])` lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_is_refused_from_a_non_loopback_address_bundled() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: this machine has no non-loopback address");
        return;
    };
    let any = std::net::IpAddr::from([0, 0, 0, 0]);
    let broker = amqp_broker::Broker::builder()
        .bind(any)
        .port(0)
        .start()
        .await
        .unwrap();
    let remote = format!("{ip}:{}", broker.port());
    let mut c = RawClient::connect(&remote).await;
    c.start().await;
    c.start_ok("PLAIN", raw::plain_response("guest", "guest"), true)
        .await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.ids(), (403, 0, 0), "{reason:?}");
    assert_eq!(
        reason.reply_text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    // From loopback the same login works.
    let local = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port());
    let conn = Connection::connect(&local, ConnectionProperties::default())
        .await
        .expect("guest from loopback");
    tests::close_quietly(&conn, "done").await;
    broker.shutdown().await.unwrap();

    let open = amqp_broker::Broker::builder()
        .bind(any)
        .port(0)
        .loopback_users(Vec::<String>::new())
        .start()
        .await
        .unwrap();
    let remote = format!("amqp://guest:guest@{ip}:{}/%2f", open.port());
    let conn = within(
        "connect",
        Connection::connect(&remote, ConnectionProperties::default()),
    )
    .await
    .expect("guest from anywhere once loopback_users is empty");
    tests::close_quietly(&conn, "done").await;
    open.shutdown().await.unwrap();
}

/// `GET`/`POST /api/definitions` on the bundled broker, as guest.
async fn definitions(
    broker: &amqp_broker::Broker,
    upload: Option<&serde_json::Value>,
) -> serde_json::Value {
    let url = format!("{}/api/definitions", broker.management_url().unwrap());
    let client = reqwest::Client::new();
    let request = match upload {
        Some(doc) => client.post(&url).json(doc),
        None => client.get(&url),
    };
    let response = request
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("HTTP");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().await.unwrap_or(serde_json::Value::Null)
}

/// Only what belongs to `f` (so nothing of other users of a shared RabbitMQ, guest's password
/// least of all, is exported or imported).
fn only(f: &Fixture, doc: &serde_json::Value) -> serde_json::Value {
    let keep = |section: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        serde_json::Value::Array(
            doc[section]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| pred(x))
                .cloned()
                .collect(),
        )
    };
    let in_vhost = |x: &serde_json::Value| x["vhost"] == f.vhost.as_str();
    serde_json::json!({
        "rabbit_version": doc["rabbit_version"],
        "users": keep("users", &|u| u["name"] == f.user.as_str()),
        "vhosts": keep("vhosts", &|v| v["name"] == f.vhost.as_str()),
        "permissions": keep("permissions", &|p| in_vhost(p) && p["user"] == f.user.as_str()),
        "exchanges": keep("exchanges", &in_vhost),
        "queues": keep("queues", &in_vhost),
        "bindings": keep("bindings", &in_vhost),
    })
}

/// Declares own.events (topic) → own.audit (fanout, exchange binding) → own.log, and
/// own.orders bound to own.events by `order.*` with arguments, as `f.user` on `addr`.
async fn declare_topology(f: &Fixture, addr: &str) {
    let conn = Connection::connect(&f.url(addr), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "own.events".into(),
        lapin::ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "own.audit".into(),
        lapin::ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        lapin::types::AMQPValue::LongLongInt(60_000),
    );
    let durable_q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("own.orders".into(), durable_q, args)
        .await
        .unwrap();
    ch.queue_declare("own.log".into(), durable_q, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        "own.orders".into(),
        "own.events".into(),
        "order.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "own.log".into(),
        "own.audit".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "own.audit".into(),
        "own.events".into(),
        "#".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    tests::close_quietly(&conn, "done").await;
}

/// The topology of [`declare_topology`] routes as declared, for `f.user` on `addr`.
async fn assert_topology_routes(f: &Fixture, addr: &str) {
    let conn = within(
        "connect",
        Connection::connect(&f.url(addr), ConnectionProperties::default()),
    )
    .await
    .expect("the user logs in with the moved password hash");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "own.events".into(),
            "order.new".into(),
            BasicPublishOptions::default(),
            b"o1",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    within("confirm", confirm).await.unwrap();
    for queue in ["own.orders", "own.log"] {
        let got = within(
            "get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap();
        assert_eq!(
            got.map(|m| m.delivery.data),
            Some(b"o1".to_vec()),
            "{queue}"
        );
    }
    tests::close_quietly(&conn, "done").await;
}

/// Definitions exported by the bundled broker import into RabbitMQ (`rabbitmqctl
/// import_definitions`), and RabbitMQ's export of them imports back into a fresh bundled broker;
/// the user's password hash and the topology survive both trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_round_trip_rabbitmq() {
    let Some(rabbit_addr) = rabbitmq_addr() else {
        eprintln!(
            "skipped: set {} to run this against RabbitMQ",
            tests::RABBITMQ_URL_VAR
        );
        return;
    };
    let _turn = RABBITMQ_DEFINITIONS.lock().await;
    let f = Fixture::new();
    let broker = amqp_broker::Broker::builder()
        .port(0)
        .management_port(0)
        .start()
        .await
        .unwrap();
    let mut setup = f.definitions();
    setup["permissions"][0]["configure"] = ".*".into();
    setup["permissions"][0]["write"] = ".*".into();
    setup["permissions"][0]["read"] = ".*".into();
    setup["queues"] = serde_json::json!([]);
    setup["exchanges"] = serde_json::json!([]);
    definitions(&broker, Some(&setup)).await;
    let bundled_addr = broker.local_addr().to_string();
    declare_topology(&f, &bundled_addr).await;
    let exported = only(&f, &definitions(&broker, None).await);
    broker.shutdown().await.unwrap();
    assert_eq!(
        exported["queues"].as_array().unwrap().len(),
        2,
        "{exported}"
    );

    let file = std::env::temp_dir().join(format!("{}.json", unique("access-roundtrip")));
    std::fs::write(&file, serde_json::to_vec(&exported).unwrap()).unwrap();
    let outcome = tokio::spawn({
        let (user, vhost, file) = (f.user.clone(), f.vhost.clone(), file.clone());
        async move {
            let f = Fixture { user, vhost };
            rabbitmqctl(&["import_definitions", file.to_str().unwrap()]).await;
            assert_topology_routes(&f, &rabbit_addr).await;
            let back = file.with_extension("back.json");
            rabbitmqctl(&["export_definitions", back.to_str().unwrap()]).await;
            let from_rabbitmq: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&back).unwrap()).unwrap();
            std::fs::remove_file(&back).unwrap();
            only(&f, &from_rabbitmq)
        }
    })
    .await;
    rabbitmqctl(&["delete_vhost", &f.vhost]).await;
    rabbitmqctl(&["delete_user", &f.user]).await;
    std::fs::remove_file(&file).unwrap();
    let from_rabbitmq = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert_eq!(
        from_rabbitmq["users"][0]["password_hash"],
        exported["users"][0]["password_hash"]
    );

    let fresh = amqp_broker::Broker::builder()
        .port(0)
        .management_port(0)
        .start()
        .await
        .unwrap();
    definitions(&fresh, Some(&from_rabbitmq)).await;
    assert_topology_routes(&f, &fresh.local_addr().to_string()).await;
    fresh.shutdown().await.unwrap();
}
