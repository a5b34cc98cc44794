//! Users, vhosts, permissions and definitions through the management API (a real HTTP client)
//! and AMQP (lapin): RabbitMQ's definitions import, vhost isolation, durability across
//! restarts, and who may use which route.

mod common;

use amqp_broker::Broker;
use common::{management_broker, non_loopback_ip};
use futures::StreamExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Event};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A real export from RabbitMQ 3.10.8 (`rabbitmqctl export_definitions`, cut down to one
/// vhost and one user): user `fixture-user` (password `fixture-password`, tag `monitoring`),
/// vhost `amqp-broker-fixture`, three exchanges (one exchange-to-exchange binding), three
/// queues with arguments.
const RABBITMQ_EXPORT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rabbitmq-3.10.8-definitions.json"
);

/// The management API of `broker`, as `user`.
struct Api {
    base: String,
    user: String,
    password: String,
    client: reqwest::Client,
}

impl Api {
    fn new(broker: &Broker, user: &str, password: &str) -> Self {
        Self {
            base: broker.management_url().expect("management API served"),
            user: user.to_owned(),
            password: password.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status();
        let text = response.text().await.expect("HTTP body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: Value) -> StatusCode {
        self.send(reqwest::Method::PUT, path, Some(body)).await.0
    }

    async fn delete(&self, path: &str) -> StatusCode {
        self.send(reqwest::Method::DELETE, path, None).await.0
    }
}

async fn connect(
    broker: &Broker,
    user: &str,
    password: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    let vhost: String = vhost
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("amqp://{user}:{password}@{}/{vhost}", broker.local_addr());
    Connection::connect(&url, ConnectionProperties::default()).await
}

async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish");
    assert!(confirm.await.expect("confirm").is_ack());
}

async fn get_body(ch: &Channel, queue: &str) -> Option<Vec<u8>> {
    let options = BasicGetOptions { no_ack: true };
    ch.basic_get(queue.into(), options)
        .await
        .expect("basic.get")
        .map(|m| m.delivery.data)
}

#[tokio::test]
async fn a_rabbitmq_export_imports_and_exports_again() {
    let broker = Broker::builder()
        .port(0)
        .management_port(0)
        .definitions_file(RABBITMQ_EXPORT)
        .start()
        .await
        .expect("the RabbitMQ export loads");
    // RabbitMQ's password hash works as it is.
    let conn = connect(
        &broker,
        "fixture-user",
        "fixture-password",
        "amqp-broker-fixture",
    )
    .await
    .expect("fixture-user logs in");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "fixture.events", "order.new", b"o1").await;
    // Routed to the queue bound by key and, through the exchange-to-exchange binding, the log.
    assert_eq!(
        get_body(&ch, "fixture.orders").await.as_deref(),
        Some(&b"o1"[..])
    );
    assert_eq!(
        get_body(&ch, "fixture.audit-log").await.as_deref(),
        Some(&b"o1"[..])
    );
    assert!(
        connect(&broker, "fixture-user", "wrong", "amqp-broker-fixture")
            .await
            .is_err()
    );

    let (status, doc) = Api::new(&broker, "guest", "guest")
        .get("/api/definitions")
        .await;
    assert_eq!(status, StatusCode::OK);
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(RABBITMQ_EXPORT).unwrap()).unwrap();
    let user = doc["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "fixture-user")
        .expect("user exported");
    assert_eq!(user["password_hash"], fixture["users"][0]["password_hash"]);
    assert_eq!(user["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(user["tags"], json!(["monitoring"]));
    let in_fixture_vhost = |section: &str| -> Vec<Value> {
        let mut items: Vec<Value> = doc[section]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["vhost"] == "amqp-broker-fixture")
            .cloned()
            .collect();
        items.sort_by_key(|x| x.to_string());
        items
    };
    let queues = in_fixture_vhost("queues");
    assert_eq!(queues.len(), 3, "{queues:?}");
    let orders = queues
        .iter()
        .find(|q| q["name"] == "fixture.orders")
        .unwrap();
    assert_eq!(orders["arguments"], fixture["queues"][2]["arguments"]);
    assert_eq!(orders["type"], "classic");
    assert_eq!(in_fixture_vhost("exchanges").len(), 3);
    assert_eq!(in_fixture_vhost("bindings").len(), 4);
    assert_eq!(
        in_fixture_vhost("permissions"),
        vec![
            json!({"user": "fixture-user", "vhost": "amqp-broker-fixture",
                    "configure": "^fixture\\.", "write": "^fixture\\.", "read": ".*"})
        ]
    );
    for section in [
        "parameters",
        "policies",
        "global_parameters",
        "topic_permissions",
    ] {
        assert_eq!(doc[section], json!([]), "{section}");
    }
    let _ = conn.close(200, "done".into()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_queue_name_in_two_vhosts_is_two_queues() {
    let broker = management_broker().await;
    let api = Api::new(&broker, "guest", "guest");
    assert_eq!(
        api.put("/api/vhosts/other", json!({})).await,
        StatusCode::CREATED
    );
    assert_eq!(
        api.put("/api/vhosts/other", json!({})).await,
        StatusCode::NO_CONTENT
    );
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(
        api.put("/api/permissions/other/guest", all).await,
        StatusCode::CREATED
    );

    let default = connect(&broker, "guest", "guest", "/").await.unwrap();
    let other = connect(&broker, "guest", "guest", "other").await.unwrap();
    let (a, b) = (
        default.create_channel().await.unwrap(),
        other.create_channel().await.unwrap(),
    );
    for ch in [&a, &b] {
        ch.queue_declare(
            "same".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
    }
    publish_confirmed(&a, "", "same", b"in /").await;
    assert_eq!(get_body(&b, "same").await, None, "nothing crosses vhosts");
    publish_confirmed(&b, "", "same", b"in other").await;
    assert_eq!(get_body(&a, "same").await.as_deref(), Some(&b"in /"[..]));
    assert_eq!(
        get_body(&b, "same").await.as_deref(),
        Some(&b"in other"[..])
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn users_vhosts_permissions_and_messages_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("amqp-broker-access-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = || {
        Broker::builder()
            .port(0)
            .management_port(0)
            .data_dir(&dir)
            .start()
    };

    let broker = start().await.unwrap();
    let api = Api::new(&broker, "guest", "guest");
    // A name that needs percent-encoding, in the URL and on disk.
    let vhost = "tenant/a b";
    assert_eq!(
        api.put("/api/vhosts/tenant%2Fa%20b", json!({})).await,
        StatusCode::CREATED
    );
    let alice = json!({"password": "alice-pw", "tags": "management"});
    assert_eq!(
        api.put("/api/users/alice", alice).await,
        StatusCode::CREATED
    );
    let perms = json!({"configure": "^q$", "write": "^amq\\.default$", "read": "^q$"});
    assert_eq!(
        api.put("/api/permissions/tenant%2Fa%20b/alice", perms)
            .await,
        StatusCode::CREATED
    );
    let conn = connect(&broker, "alice", "alice-pw", vhost).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("q".into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "", "q", b"kept").await;
    drop(conn);
    broker.shutdown().await.unwrap();

    let broker = start().await.unwrap();
    let conn = connect(&broker, "alice", "alice-pw", vhost)
        .await
        .expect("user, vhost and permission recovered");
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(get_body(&ch, "q").await.as_deref(), Some(&b"kept"[..]));
    // "/" is where it always was, and still works.
    connect(&broker, "guest", "guest", "/")
        .await
        .expect("default vhost");
    let api = Api::new(&broker, "guest", "guest");
    assert_eq!(
        api.delete("/api/vhosts/tenant%2Fa%20b").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.delete("/api/vhosts/tenant%2Fa%20b").await,
        StatusCode::NOT_FOUND
    );
    broker.shutdown().await.unwrap();

    let broker = start().await.unwrap();
    let refused = connect(&broker, "alice", "alice-pw", vhost)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("not found"), "{refused}");
    broker.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The listings across vhosts show a user the vhosts it has permissions on; the listings of
/// one vhost refuse the others (401) and know no unknown one (404), as RabbitMQ's do.
#[tokio::test]
async fn listings_show_a_user_only_the_vhosts_it_may_use() {
    let broker = management_broker().await;
    let admin = Api::new(&broker, "guest", "guest");
    assert_eq!(
        admin.put("/api/vhosts/other", json!({})).await,
        StatusCode::CREATED
    );
    for vhost in ["%2F", "other"] {
        let q = format!("/api/queues/{vhost}/listed-q");
        assert_eq!(admin.put(&q, json!({})).await, StatusCode::CREATED);
        let x = format!("/api/exchanges/{vhost}/listed-x");
        assert_eq!(admin.put(&x, json!({})).await, StatusCode::CREATED);
    }
    let user = json!({"password": "pw", "tags": "management"});
    assert_eq!(
        admin.put("/api/users/tenant", user).await,
        StatusCode::CREATED
    );
    let perms = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(
        admin.put("/api/permissions/other/tenant", perms).await,
        StatusCode::CREATED
    );

    let tenant = Api::new(&broker, "tenant", "pw");
    let vhosts_of = |rows: &Value, field: &str| -> Vec<String> {
        let mut seen: Vec<String> = rows
            .as_array()
            .unwrap_or_else(|| panic!("a list: {rows}"))
            .iter()
            .map(|row| row[field].as_str().unwrap_or_default().to_owned())
            .collect();
        seen.dedup();
        seen
    };
    for (path, field) in [
        ("/api/vhosts", "name"),
        ("/api/queues", "vhost"),
        ("/api/exchanges", "vhost"),
        ("/api/bindings", "vhost"),
    ] {
        let (status, rows) = tenant.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(vhosts_of(&rows, field), ["other"], "{path}");
        let (_, all) = admin.get(path).await;
        assert_eq!(vhosts_of(&all, field), ["/", "other"], "{path}");
    }
    for kind in ["queues", "exchanges", "bindings"] {
        let (status, rows) = tenant.get(&format!("/api/{kind}/other")).await;
        assert_eq!(status, StatusCode::OK, "{kind}");
        assert_eq!(vhosts_of(&rows, "vhost"), ["other"], "{kind}");
        let (status, body) = tenant.get(&format!("/api/{kind}/%2F")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind}");
        assert_eq!(
            body,
            json!({"error": "not_authorised", "reason": "User not authorised to access virtual host"}),
            "{kind}"
        );
        let (status, body) = tenant.get(&format!("/api/{kind}/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{kind}");
        assert_eq!(body["error"], "Object Not Found", "{kind}");
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_api_needs_a_management_tag_and_its_access_routes_administrator() {
    let broker = management_broker().await;
    let admin = Api::new(&broker, "guest", "guest");
    for (name, tags) in [("plain", ""), ("watcher", "monitoring")] {
        let user = json!({"password": "pw", "tags": tags});
        assert_eq!(
            admin.put(&format!("/api/users/{name}"), user).await,
            StatusCode::CREATED
        );
    }
    let (status, body) = Api::new(&broker, "plain", "pw").get("/api/overview").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"error": "not_authorised", "reason": "Not management user"})
    );

    let watcher = Api::new(&broker, "watcher", "pw");
    assert_eq!(watcher.get("/api/overview").await.0, StatusCode::OK);
    // Every route of the administrators' area refuses, whatever its method, and acts not.
    let perms = json!({"configure": ".*", "write": ".*", "read": ".*"});
    let definitions = json!({"vhosts": [{"name": "imported"}]});
    for (method, path, body) in [
        (Method::GET, "/api/users", None),
        (Method::GET, "/api/users/guest", None),
        (
            Method::PUT,
            "/api/users/eve",
            Some(json!({"password": "pw"})),
        ),
        (Method::DELETE, "/api/users/plain", None),
        (Method::PUT, "/api/vhosts/x", Some(json!({}))),
        (Method::DELETE, "/api/vhosts/%2F", None),
        (Method::GET, "/api/permissions", None),
        (Method::GET, "/api/permissions/%2F/guest", None),
        (
            Method::PUT,
            "/api/permissions/%2F/watcher",
            Some(perms.clone()),
        ),
        (Method::DELETE, "/api/permissions/%2F/guest", None),
        (Method::GET, "/api/definitions", None),
        (Method::POST, "/api/definitions", Some(definitions.clone())),
        (Method::GET, "/api/definitions/%2F", None),
        (
            Method::POST,
            "/api/definitions/%2F",
            Some(definitions.clone()),
        ),
    ] {
        let (status, body) = watcher.send(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            body,
            json!({"error": "not_authorised", "reason": "Not administrator user"}),
            "{method} {path}"
        );
    }
    for (path, status) in [
        ("/api/users/plain", StatusCode::OK),
        ("/api/users/eve", StatusCode::NOT_FOUND),
        ("/api/permissions/%2F/guest", StatusCode::OK),
        ("/api/permissions/%2F/watcher", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(admin.get(path).await.0, status, "{path}");
    }
    let (_, vhosts) = admin.get("/api/vhosts").await;
    assert_eq!(vhosts.as_array().map(Vec::len), Some(1), "{vhosts}");
    // A user without a management tag still uses AMQP (with a permission).
    let perms = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(
        admin.put("/api/permissions/%2F/plain", perms).await,
        StatusCode::CREATED
    );
    connect(&broker, "plain", "pw", "/")
        .await
        .expect("AMQP login");
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn users_and_permissions_routes_answer_in_rabbitmqs_shapes() {
    let broker = management_broker().await;
    let api = Api::new(&broker, "guest", "guest");

    // A user from a password hash (RabbitMQ's, for "guest").
    let hashed = json!({"password_hash": "MP8P3KWPS1jzFFh7FA6imL+7V9AvKLpVKuw/bcBgMRTD8/o7",
                        "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]});
    assert_eq!(api.put("/api/users/bob", hashed).await, StatusCode::CREATED);
    let (status, bob) = api.get("/api/users/bob").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bob["name"], "bob");
    assert_eq!(
        bob["password_hash"],
        "MP8P3KWPS1jzFFh7FA6imL+7V9AvKLpVKuw/bcBgMRTD8/o7"
    );
    assert_eq!(bob["tags"], json!(["administrator"]));
    // No permission on "/" yet: 530 at connection.open.
    let refused = connect(&broker, "bob", "guest", "/").await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("access to vhost '/' refused for user 'bob'"),
        "{refused}"
    );
    let perms = json!({"configure": "", "write": ".*", "read": "^bob\\."});
    assert_eq!(
        api.put("/api/permissions/%2F/bob", perms).await,
        StatusCode::CREATED
    );
    let (status, p) = api.get("/api/permissions/%2F/bob").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        p,
        json!({"user": "bob", "vhost": "/", "configure": "", "write": ".*", "read": "^bob\\."})
    );
    let (_, all) = api.get("/api/permissions").await;
    assert_eq!(all.as_array().unwrap().len(), 2, "guest's and bob's: {all}");
    connect(&broker, "bob", "guest", "/")
        .await
        .expect("bob logs in now");
    // Replacing the password: 204, and only the new one works.
    assert_eq!(
        api.put("/api/users/bob", json!({"password": "new", "tags": ""}))
            .await,
        StatusCode::NO_CONTENT
    );
    assert!(connect(&broker, "bob", "guest", "/").await.is_err());
    connect(&broker, "bob", "new", "/")
        .await
        .expect("new password");

    // Bad input: 400 with a reason; unknown objects: 404.
    for (path, body) in [
        ("/api/users/carol", json!({"tags": ""})),
        (
            "/api/users/carol",
            json!({"password": "a", "password_hash": "b"}),
        ),
        ("/api/users/carol", json!({"password_hash": "AAAA"})),
        (
            "/api/permissions/%2F/bob",
            json!({"configure": "(", "write": "", "read": ""}),
        ),
        (
            "/api/permissions/nowhere/bob",
            json!({"configure": "", "write": "", "read": ""}),
        ),
        (
            "/api/permissions/%2F/nobody",
            json!({"configure": "", "write": "", "read": ""}),
        ),
    ] {
        let (status, answer) = api
            .send(reqwest::Method::PUT, path, Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
        assert_eq!(answer["error"], "bad_request");
    }
    let (status, answer) = api
        .send(
            reqwest::Method::POST,
            "/api/definitions",
            Some(json!({"users": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = api.get("/api/users/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );

    // An open connection outlives its permission, not its user.
    let bobs = connect(&broker, "bob", "new", "/").await.unwrap();
    assert_eq!(
        api.delete("/api/permissions/%2F/bob").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.delete("/api/permissions/%2F/bob").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.delete("/api/users/bob").await, StatusCode::NO_CONTENT);
    let mut events = bobs.events_listener();
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !matches!(events.next().await, Some(Event::Error(_)) | None) {}
    })
    .await
    .expect("a deleted user's connection is closed");
    assert_eq!(api.delete("/api/users/bob").await, StatusCode::NOT_FOUND);
    assert!(connect(&broker, "bob", "new", "/").await.is_err());
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn deleting_a_vhost_closes_its_connections_and_definitions_move_between_vhosts() {
    let broker = management_broker().await;
    let api = Api::new(&broker, "guest", "guest");
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    for v in ["from", "to"] {
        assert_eq!(
            api.put(&format!("/api/vhosts/{v}"), json!({})).await,
            StatusCode::CREATED
        );
        assert_eq!(
            api.put(&format!("/api/permissions/{v}/guest"), all.clone())
                .await,
            StatusCode::CREATED
        );
    }
    let conn = connect(&broker, "guest", "guest", "from").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("moved".into(), durable, FieldTable::default())
        .await
        .unwrap();

    let (status, doc) = api.get("/api/definitions/from").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["queues"][0]["name"], "moved");
    assert_eq!(doc["users"], json!([]), "a vhost's export has no users");
    let (status, _) = api
        .send(reqwest::Method::POST, "/api/definitions/to", Some(doc))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let to = connect(&broker, "guest", "guest", "to").await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    to.create_channel()
        .await
        .unwrap()
        .queue_declare("moved".into(), passive, FieldTable::default())
        .await
        .expect("imported into 'to'");

    let mut events = conn.events_listener();
    assert_eq!(api.delete("/api/vhosts/from").await, StatusCode::NO_CONTENT);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(event) = events.next().await {
            if let Event::Error(e) = event {
                return e.to_string();
            }
        }
        String::new()
    })
    .await
    .expect("connection closed by the vhost's deletion");
    assert!(closed.contains("CONNECTION_FORCED"), "{closed}");
    assert_eq!(
        api.get("/api/definitions/from").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, answer) = api
        .send(reqwest::Method::DELETE, "/api/vhosts/%2F", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn guest_uses_the_api_from_loopback_only() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: this machine has no non-loopback address");
        return;
    };
    let broker = Broker::builder()
        .bind(std::net::IpAddr::from([0, 0, 0, 0]))
        .port(0)
        .management_port(0)
        .start()
        .await
        .unwrap();
    let port = broker.management_port().unwrap();
    let overview = |host: String| async move {
        let response = reqwest::Client::new()
            .get(format!("http://{host}:{port}/api/overview"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    let (status, body) = overview(ip.to_string()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"error": "not_authorised", "reason": "User can only log in via localhost"})
    );
    assert_eq!(overview("127.0.0.1".to_owned()).await.0, StatusCode::OK);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_permission_change_applies_to_open_connections() {
    let broker = management_broker().await;
    let api = Api::new(&broker, "guest", "guest");
    let user = json!({"password": "pw", "tags": ""});
    assert_eq!(api.put("/api/users/dave", user).await, StatusCode::CREATED);
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(
        api.put("/api/permissions/%2F/dave", all).await,
        StatusCode::CREATED
    );
    let conn = connect(&broker, "dave", "pw", "/").await.unwrap();
    let declare = |name: &'static str| {
        let conn = &conn;
        async move {
            let ch = conn.create_channel().await.unwrap();
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map(|_| ())
        }
    };
    declare("dave.q1").await.expect("allowed");
    let narrower = json!({"configure": "^other$", "write": ".*", "read": ".*"});
    assert_eq!(
        api.put("/api/permissions/%2F/dave", narrower).await,
        StatusCode::NO_CONTENT
    );
    let refused = declare("dave.q2").await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("access to queue 'dave.q2' in vhost '/' refused for user 'dave'"),
        "{refused}"
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_damaged_access_file_stops_the_start_naming_it() {
    let dir = std::env::temp_dir().join(format!("amqp-broker-access-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("access.json"), "{\"users\": 5").unwrap();
    let err = Broker::builder()
        .port(0)
        .data_dir(&dir)
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("access.json") && text.contains("invalid definitions"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
