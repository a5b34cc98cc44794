//! `amqp-broker ctl` (the binary) against an embedded broker: rabbitmqctl's verbs, its
//! tab-separated output with a header line, `--json`, and errors as a failing exit status with
//! the API's reason.

mod common;

use amqp_broker::Broker;
use common::{BIN, declare_queue, management_broker};
use futures::StreamExt as _;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

/// Runs `amqp-broker ctl --url URL ARGS...`; returns (success, stdout, stderr).
async fn ctl(broker: &Broker, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("ctl")
        .args(["--url", &broker.management_url().unwrap()])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs a command that must succeed; returns its stdout.
async fn ok(broker: &Broker, args: &[&str]) -> String {
    let (success, stdout, stderr) = ctl(broker, args).await;
    assert!(success, "ctl {args:?} failed: {stderr}");
    stdout
}

async fn broker_with_a_client() -> (Broker, Connection, lapin::Channel) {
    let broker = management_broker().await;
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from("ctl-client".to_owned()));
    let conn = Connection::connect(&broker.amqp_url(), props)
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    declare_queue(&ch, "ctl-q", QueueDeclareOptions::default()).await;
    for _ in 0..2 {
        ch.basic_publish(
            "".into(),
            "ctl-q".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    ch.queue_bind(
        "ctl-q".into(),
        "amq.topic".into(),
        "k.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (broker, conn, ch)
}

#[tokio::test]
async fn listings_are_tab_separated_with_a_header_or_json() {
    let (broker, conn, _ch) = broker_with_a_client().await;
    // Publishes are asynchronous: wait until both are queued.
    while ok(&broker, &["list_queues"]).await != "name\tmessages\nctl-q\t2\n" {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        ok(
            &broker,
            &["list_queues", "name", "messages_ready", "durable"]
        )
        .await,
        "name\tmessages_ready\tdurable\nctl-q\t2\tfalse\n"
    );
    let json: Value = serde_json::from_str(&ok(&broker, &["--json", "list_queues"]).await).unwrap();
    assert_eq!(json, json!([{"name": "ctl-q", "messages": 2}]));

    let exchanges = ok(&broker, &["list_exchanges"]).await;
    let lines: Vec<&str> = exchanges.lines().collect();
    assert_eq!(lines[0], "name\ttype");
    assert!(lines.contains(&"\tdirect"), "{exchanges}");
    assert!(lines.contains(&"amq.topic\ttopic"), "{exchanges}");

    let bindings = ok(&broker, &["list_bindings"]).await;
    let lines: Vec<&str> = bindings.lines().collect();
    assert_eq!(
        lines[0],
        "source_name\tsource_kind\tdestination_name\tdestination_kind\trouting_key\targuments"
    );
    assert!(
        lines.contains(&"\texchange\tctl-q\tqueue\tctl-q\t[]"),
        "{bindings}"
    );
    assert!(
        lines.contains(&"amq.topic\texchange\tctl-q\tqueue\tk.#\t[]"),
        "{bindings}"
    );

    let conns = ok(&broker, &["list_connections", "user", "user_provided_name"]).await;
    assert_eq!(conns, "user\tuser_provided_name\nguest\tctl-client\n");
    conn.close(200, "bye".into()).await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn purge_delete_and_close_connection_act_on_the_broker() {
    let (broker, conn, _ch) = broker_with_a_client().await;
    while ok(&broker, &["list_queues"]).await != "name\tmessages\nctl-q\t2\n" {
        tokio::task::yield_now().await;
    }
    // delete_queue --if-empty refuses a queue with messages, with the broker's reason.
    let (success, _, stderr) = ctl(&broker, &["delete_queue", "ctl-q", "--if-empty"]).await;
    assert!(!success);
    assert!(stderr.contains("is not empty"), "{stderr}");
    ok(&broker, &["purge_queue", "ctl-q", "--vhost", "/"]).await;
    assert_eq!(
        ok(&broker, &["list_queues"]).await,
        "name\tmessages\nctl-q\t0\n"
    );
    ok(&broker, &["delete_queue", "ctl-q", "--if-empty"]).await;
    assert_eq!(ok(&broker, &["list_queues"]).await, "name\tmessages\n");
    let (success, _, stderr) = ctl(&broker, &["purge_queue", "ctl-q"]).await;
    assert!(!success);
    assert!(stderr.contains("404 Object Not Found"), "{stderr}");

    let second = Connection::connect(
        &broker.amqp_url(),
        ConnectionProperties::default().with_connection_name(LongString::from("second".to_owned())),
    )
    .await
    .unwrap();
    let listed = ok(&broker, &["list_connections", "user_provided_name", "name"]).await;
    let name_of = |client: &str| {
        listed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{client}\t")))
            .unwrap_or_else(|| panic!("{client} not in {listed}"))
            .to_owned()
    };
    // With a reason, and without one (RabbitMQ's default text).
    for (client, connection, reason) in [
        ("ctl-client", &conn, Some("go away")),
        ("second", &second, None),
    ] {
        let mut events = connection.events_listener();
        let name = name_of(client);
        let mut args = vec!["close_connection", name.as_str()];
        args.extend(reason);
        ok(&broker, &args).await;
        let error = loop {
            if let lapin::Event::Error(e) = events.next().await.expect("an event") {
                break e.to_string();
            }
        };
        assert!(error.contains("CONNECTION_FORCED"), "{error}");
        let expected = reason.unwrap_or("Closed via management plugin");
        assert!(error.contains(expected), "{error}");
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_fail_with_the_reason() {
    let broker = management_broker().await;
    let (success, stdout, stderr) = ctl(&broker, &["--password", "wrong", "list_queues"]).await;
    assert!(!success);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("401 not_authorised: Login failed"),
        "{stderr}"
    );
    let (success, _, stderr) = ctl(&broker, &["close_connection", "nobody"]).await;
    assert!(!success);
    assert!(stderr.contains("404"), "{stderr}");
    let (success, _, stderr) = ctl(&broker, &["--vhost", "nowhere", "list_queues"]).await;
    assert!(!success);
    assert!(stderr.contains("404"), "{stderr}");
    let (success, _, stderr) = ctl(&broker, &["no_such_verb"]).await;
    assert!(!success);
    assert!(stderr.contains("no_such_verb"), "{stderr}");
    broker.shutdown().await.unwrap();

    // A broker that is not there.
    let out = tokio::process::Command::new(BIN)
        .args(["ctl", "--url", "http://127.0.0.1:1", "list_queues"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the management API"),
        "{stderr}"
    );
    let out = tokio::process::Command::new(BIN)
        .args(["ctl", "--url", "https://127.0.0.1:1", "list_queues"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
}
