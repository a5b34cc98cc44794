//! The management API's objects through a real HTTP client (reqwest), checked against what a
//! real AMQP client (lapin) did: declare, publish, consume, then list. Field names and shapes
//! are RabbitMQ's management API's.

mod common;

use amqp_broker::Broker;
use common::{dead_letter_args, declare_queue, exclusive, management_broker};
use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A broker with the API, and a client for it authenticated as guest.
struct Api {
    broker: Broker,
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn start() -> Self {
        let broker = management_broker().await;
        let base = broker.management_url().unwrap();
        Self {
            broker,
            client: reqwest::Client::new(),
            base,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth("guest", Some("guest"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
        };
        (status, body)
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Publishes `message` (the API's JSON form) through `exchange` in the default vhost.
    async fn publish(&self, exchange: &str, message: Value) -> (StatusCode, Value) {
        let path = format!("/api/exchanges/%2F/{exchange}/publish");
        self.call(Method::POST, &path, Some(message)).await
    }

    /// Takes messages from `queue` in the default vhost as `request` (count, ackmode, ...) says.
    async fn get_messages(&self, queue: &str, request: Value) -> (StatusCode, Value) {
        let path = format!("/api/queues/%2F/{queue}/get");
        self.call(Method::POST, &path, Some(request)).await
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn amqp(&self, name: &str) -> Connection {
        let props =
            ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
        Connection::connect(&self.broker.amqp_url(), props)
            .await
            .unwrap()
    }

    /// A broker with the API, a lapin connection to it named `name`, and a channel on that.
    async fn start_with_channel(name: &str) -> (Self, Connection, Channel) {
        let api = Self::start().await;
        let conn = api.amqp(name).await;
        let ch = conn.create_channel().await.unwrap();
        (api, conn, ch)
    }

    /// Closes the test's lapin connection, then shuts the broker down.
    async fn finish(self, conn: Connection) {
        conn.close(200, "bye".into()).await.unwrap();
        self.broker.shutdown().await.unwrap();
    }
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v[key] == value)
        .unwrap_or_else(|| panic!("no {key} = {value} in {list}"))
}

/// `v` (an object or a list of them) without `message_stats`.
fn without_stats(v: &Value) -> Value {
    match v {
        Value::Array(list) => Value::Array(list.iter().map(without_stats).collect()),
        Value::Object(fields) => {
            let mut fields = fields.clone();
            fields.remove("message_stats");
            Value::Object(fields)
        }
        other => other.clone(),
    }
}

/// Asserts that a `call`'s answer is RabbitMQ's 404 for an object that does not exist.
fn assert_not_found((status, body): (StatusCode, Value)) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
}

#[tokio::test]
async fn queues_show_what_lapin_declared_published_and_took() {
    let (api, conn, ch) = Api::start_with_channel("lister").await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
    ch.queue_declare(
        "mgmt-q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    for i in 0..3 {
        ch.basic_publish(
            "".into(),
            "mgmt-q".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    // One taken and not acked: 2 ready, 1 unacknowledged.
    let taken = ch
        .basic_get("mgmt-q".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(taken.delivery.data, b"m0");

    let all = api.get("/api/queues").await;
    let q = find(&all, "name", "mgmt-q");
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["durable"], true);
    assert_eq!(q["auto_delete"], false);
    assert_eq!(q["exclusive"], false);
    assert_eq!(q["arguments"], json!({"x-max-length": 100}));
    assert_eq!(q["messages"], 3);
    assert_eq!(q["messages_ready"], 2);
    assert_eq!(q["messages_unacknowledged"], 1);
    assert_eq!(q["consumers"], 0);
    assert_eq!(q["state"], "running");
    assert_eq!(q["type"], "classic");
    // Counted as the queue saw them: 3 in, 1 out (the get), none acked yet.
    let stats = &q["message_stats"];
    assert_eq!(stats["publish"], 3);
    assert_eq!(stats["deliver_get"], 1);
    assert_eq!(stats["ack"], 0);
    assert_eq!(stats["redeliver"], 0);
    assert!(stats["publish_details"]["rate"].is_f64(), "{stats}");
    // The same queue by vhost and by name (rates aside: they move with time).
    assert_eq!(
        without_stats(&api.get("/api/queues/%2F").await),
        without_stats(&all)
    );
    assert_eq!(
        without_stats(&api.get("/api/queues/%2F/mgmt-q").await),
        without_stats(q)
    );

    let overview = api.get("/api/overview").await;
    assert_eq!(overview["object_totals"]["queues"], 1);
    assert_eq!(overview["object_totals"]["connections"], 1);
    assert_eq!(overview["object_totals"]["channels"], 1);
    assert_eq!(overview["queue_totals"]["messages"], 3);
    assert_eq!(overview["queue_totals"]["messages_ready"], 2);
    assert_eq!(overview["queue_totals"]["messages_unacknowledged"], 1);
    assert_eq!(overview["listeners"][1]["protocol"], "http");
    assert_eq!(
        overview["listeners"][1]["port"],
        api.broker.management_port().unwrap()
    );
    assert_eq!(overview["message_stats"]["publish"], 3);
    assert_eq!(overview["message_stats"]["deliver_get"], 1);
    let vhosts = api.get("/api/vhosts").await;
    assert_eq!(vhosts[0]["name"], "/");
    assert_eq!(vhosts[0]["messages"], 3);
    assert_eq!(vhosts[0]["message_stats"]["publish"], 3);

    // Purge drops the ready ones; the unacked one stays out.
    let (status, _) = api.delete("/api/queues/%2F/mgmt-q/contents").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let q = api.get("/api/queues/%2F/mgmt-q").await;
    assert_eq!(q["messages_ready"], 0);
    assert_eq!(q["messages_unacknowledged"], 1);
    api.finish(conn).await;
}

#[tokio::test]
async fn unknown_objects_are_404_and_bad_bodies_400() {
    let api = Api::start().await;
    for path in [
        "/api/queues/%2F/missing",
        "/api/queues/no-such-vhost",
        "/api/exchanges/%2F/missing",
        "/api/connections/nobody",
        "/api/bindings/%2F/e/missing/q/missing",
        "/api/consumers/no-such-vhost",
    ] {
        assert_not_found(api.call(Method::GET, path, None).await);
    }
    assert_not_found(api.delete("/api/queues/%2F/missing").await);
    assert_not_found(api.delete("/api/queues/%2F/missing/contents").await);

    // Not JSON, JSON of the wrong shape, wrong types.
    let url = format!("{}/api/queues/%2F/bad-body", api.base);
    let response = api
        .client
        .put(&url)
        .basic_auth("guest", Some("guest"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"error": "bad_request", "reason": "not_json"}));
    for (path, bad) in [
        ("/api/queues/%2F/bad-body", json!([1, 2])),
        ("/api/queues/%2F/bad-body", json!({"durable": "yes"})),
        ("/api/queues/%2F/bad-body", json!({"arguments": 5})),
        (
            "/api/queues/%2F/bad-body",
            json!({"arguments": {"x-max-length": "many"}}),
        ),
        ("/api/exchanges/%2F/bad-x", json!({"type": 5})),
        ("/api/exchanges/%2F/bad-x", json!({"type": "no-such-type"})),
    ] {
        let (status, body) = api.put(path, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {bad}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
    // Reserved names are refused as RabbitMQ refuses them through its API.
    let (status, body) = api
        .put("/api/exchanges/%2F/amq.mine", json!({"type": "direct"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"error": "not_authorised", "reason": "Access refused."})
    );
    // Nothing was created by the refused requests.
    for path in [
        "/api/queues/%2F/bad-body",
        "/api/exchanges/%2F/bad-x",
        "/api/exchanges/%2F/amq.mine",
    ] {
        let (status, _) = api.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    api.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn queues_are_declared_and_deleted_as_rabbitmq_answers() {
    let api = Api::start().await;
    let body =
        json!({"durable": false, "auto_delete": false, "arguments": {"x-message-ttl": 60000}});
    let (status, _) = api.put("/api/queues/%2F/put-q", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = api.put("/api/queues/%2F/put-q", body).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, err) = api
        .put("/api/queues/%2F/put-q", json!({"durable": true}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        err["reason"],
        "inequivalent arg 'durable' for queue 'put-q' in vhost '/': received 'true' but current is 'false'"
    );
    // Without a body, defaults as queue.declare's: transient, not auto-delete.
    let (status, _) = api
        .call(Method::PUT, "/api/queues/%2F/put-default", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let q = api.get("/api/queues/%2F/put-default").await;
    assert_eq!(
        (&q["durable"], &q["auto_delete"]),
        (&json!(false), &json!(false))
    );

    // lapin sees it as declared (a passive declare succeeds, with the TTL argument there).
    let conn = api.amqp("put").await;
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    declare_queue(&ch, "put-q", passive).await;
    let q = api.get("/api/queues/%2F/put-q").await;
    assert_eq!(q["durable"], false);
    assert_eq!(q["arguments"], json!({"x-message-ttl": 60000}));

    ch.basic_publish(
        "".into(),
        "put-q".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // Wait until the queue holds it (publishes are asynchronous).
    while api.get("/api/queues/%2F/put-q").await["messages"] != 1 {
        tokio::task::yield_now().await;
    }
    let (status, err) = api.delete("/api/queues/%2F/put-q?if-empty=true").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["reason"], "queue 'put-q' in vhost '/' is not empty");
    let (status, _) = api.delete("/api/queues/%2F/put-q?if-unused=true").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_not_found(api.call(Method::GET, "/api/queues/%2F/put-q", None).await);
    api.finish(conn).await;
}

#[tokio::test]
async fn published_messages_reach_lapin_and_get_takes_or_requeues() {
    let (api, conn, ch) = Api::start_with_channel("pubget").await;
    declare_queue(&ch, "pub-q", QueueDeclareOptions::default()).await;
    let publish = |payload: &str, encoding: &str| {
        json!({
            "properties": {"content_type": "text/plain", "headers": {"h": "v"}, "delivery_mode": 2},
            "routing_key": "pub-q",
            "payload": payload,
            "payload_encoding": encoding,
        })
    };
    let (status, body) = api.publish("amq.default", publish("hello", "string")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"routed": true})));
    let (_, body) = api
        .publish("amq.default", publish("AAEC/w==", "base64"))
        .await;
    assert_eq!(body, json!({"routed": true}));
    let mut unroutable = publish("x", "string");
    unroutable["routing_key"] = json!("nowhere");
    let (_, body) = api.publish("amq.direct", unroutable).await;
    assert_eq!(body, json!({"routed": false}));
    assert_not_found(api.publish("missing", publish("x", "string")).await);
    let (status, body) = api
        .publish(
            "amq.default",
            json!({"routing_key": "pub-q", "payload": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["reason"],
        "[{key_missing,properties},{key_missing,payload_encoding}]"
    );
    // A queue that refuses it (full, reject-publish) is what a nack would be.
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare("full-q".into(), QueueDeclareOptions::default(), full)
        .await
        .unwrap();
    let mut refused = publish("x", "string");
    refused["routing_key"] = json!("full-q");
    let (status, body) = api.publish("amq.default", refused).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["reason"],
        "rejected Unable to publish message. Check queue limits."
    );
    for bad in [
        publish("x", "rot13"),
        publish("***", "base64"),
        json!({"properties": {"delivery_mode": "two"}, "routing_key": "pub-q", "payload": "x", "payload_encoding": "string"}),
    ] {
        let (status, body) = api.publish("amq.default", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }

    // /get with requeue shows both, leaves them, and marks them redelivered.
    let get = |ackmode: &str| json!({"count": 5, "ackmode": ackmode, "encoding": "auto", "truncate": 50000});
    let (status, got) = api.get_messages("pub-q", get("ack_requeue_true")).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got.as_array().unwrap().len(), 2);
    assert_eq!(got[0]["payload"], "hello");
    assert_eq!(got[0]["payload_encoding"], "string");
    assert_eq!(got[0]["payload_bytes"], 5);
    assert_eq!(got[0]["redelivered"], false);
    assert_eq!(got[0]["exchange"], "");
    assert_eq!(got[0]["routing_key"], "pub-q");
    assert_eq!(got[0]["message_count"], 1);
    assert_eq!(
        got[0]["properties"],
        json!({"content_type": "text/plain", "headers": {"h": "v"}, "delivery_mode": 2})
    );
    assert_eq!(got[1]["payload"], "AAEC/w==");
    assert_eq!(got[1]["payload_encoding"], "base64");
    assert_eq!(got[1]["payload_bytes"], 4);

    // lapin gets the first one, redelivered, with the properties the API was given.
    let m = ch
        .basic_get("pub-q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("still there");
    assert_eq!(m.delivery.data, b"hello");
    assert!(m.delivery.redelivered);
    assert_eq!(
        m.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("text/plain")
    );
    // ack_requeue_false takes the rest for good.
    let (_, got) = api.get_messages("pub-q", get("ack_requeue_false")).await;
    assert_eq!(got[0]["payload_bytes"], 4);
    assert_eq!(api.get("/api/queues/%2F/pub-q").await["messages"], 0);
    let (status, body) = api
        .get_messages("pub-q", json!({"count": 1, "ackmode": "sometimes"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["reason"], "[{key_missing,encoding}]");
    let utf7 = json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "utf-7"});
    let (_, body) = api.get_messages("pub-q", utf7).await;
    assert_eq!(
        body["reason"],
        "Unsupported encoding. Please use auto or base64."
    );
    api.finish(conn).await;
}

#[tokio::test]
async fn exchanges_and_bindings_match_lapin_and_can_be_made_through_the_api() {
    let (api, conn, ch) = Api::start_with_channel("binder").await;
    ch.exchange_declare(
        "mgmt-x".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_queue(&ch, "bound-q", QueueDeclareOptions::default()).await;
    ch.queue_bind(
        "bound-q".into(),
        "mgmt-x".into(),
        "a.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let exchanges = api.get("/api/exchanges").await;
    let x = find(&exchanges, "name", "mgmt-x");
    assert_eq!(x["type"], "topic");
    assert_eq!(x["durable"], false);
    assert_eq!(x["vhost"], "/");
    assert_eq!(find(&exchanges, "name", "")["type"], "direct");
    assert_eq!(&api.get("/api/exchanges/%2F/mgmt-x").await, x);
    assert_eq!(api.get("/api/exchanges/%2F/amq.default").await["name"], "");

    let bindings = api.get("/api/bindings/%2F").await;
    assert_eq!(&api.get("/api/bindings").await, &bindings);
    let implicit = find(&bindings, "source", "");
    assert_eq!(implicit["destination"], "bound-q");
    assert_eq!(implicit["routing_key"], "bound-q");
    let made = find(&bindings, "source", "mgmt-x");
    assert_eq!(made["destination"], "bound-q");
    assert_eq!(made["destination_type"], "queue");
    assert_eq!(made["routing_key"], "a.*");
    assert_eq!(made["properties_key"], "a.%2A");
    assert_eq!(
        &api.get("/api/bindings/%2F/e/mgmt-x/q/bound-q/a.%2A").await,
        made
    );
    assert_eq!(
        api.get("/api/exchanges/%2F/mgmt-x/bindings/source").await,
        json!([made])
    );
    assert_eq!(
        api.get("/api/queues/%2F/bound-q/bindings").await,
        json!([implicit, made])
    );

    // An exchange and a binding made through the API route what lapin publishes.
    let fanout = json!({"type": "fanout", "durable": false});
    let (status, _) = api.put("/api/exchanges/%2F/api-x", fanout.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = api.put("/api/exchanges/%2F/api-x", fanout).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let url = format!("{}/api/bindings/%2F/e/api-x/q/bound-q", api.base);
    let response = api
        .client
        .post(&url)
        .basic_auth("guest", Some("guest"))
        .json(&json!({"routing_key": "k", "arguments": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["location"],
        "/api/bindings/%2F/e/api-x/q/bound-q/k"
    );
    ch.basic_publish(
        "api-x".into(),
        "any".into(),
        BasicPublishOptions::default(),
        b"via api binding",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let m = loop {
        if let Some(m) = ch
            .basic_get("bound-q".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m;
        }
    };
    assert_eq!(m.delivery.data, b"via api binding");
    let between = api.get("/api/bindings/%2F/e/api-x/q/bound-q").await;
    assert_eq!(between[0]["properties_key"], "k");
    assert_eq!(
        api.get("/api/bindings/%2F/e/api-x/q/bound-q/k").await,
        between[0]
    );
    let (status, _) = api.delete("/api/bindings/%2F/e/api-x/q/bound-q/k").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get("/api/bindings/%2F/e/api-x/q/bound-q").await,
        json!([])
    );
    let (status, _) = api.delete("/api/exchanges/%2F/api-x").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_not_found(
        api.call(Method::GET, "/api/exchanges/%2F/api-x", None)
            .await,
    );
    api.finish(conn).await;
}

#[tokio::test]
async fn connections_channels_and_consumers_match_lapin_and_close_with_the_reason() {
    let (api, conn, ch) = Api::start_with_channel("watched").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.basic_qos(7, BasicQosOptions::default()).await.unwrap();
    declare_queue(&ch, "consumed-q", QueueDeclareOptions::default()).await;
    let _consumer = ch
        .basic_consume(
            "consumed-q".into(),
            "tag-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let quiet = conn.create_channel().await.unwrap();
    quiet.tx_select().await.unwrap();

    let conns = api.get("/api/connections").await;
    assert_eq!(conns.as_array().unwrap().len(), 1);
    let c = &conns[0];
    let name = c["name"].as_str().unwrap().to_owned();
    let peer_port = c["peer_port"].as_u64().unwrap();
    assert_eq!(
        name,
        format!("127.0.0.1:{peer_port} -> 127.0.0.1:{}", api.broker.port())
    );
    assert_eq!(c["user"], "guest");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["peer_host"], "127.0.0.1");
    assert_eq!(c["channels"], 2);
    assert_eq!(c["client_properties"]["connection_name"], "watched");
    assert_eq!(c["state"], "running");
    let encoded = name.replace(' ', "%20").replace('>', "%3E");
    assert_eq!(&api.get(&format!("/api/connections/{encoded}")).await, c);

    let channels = api.get("/api/channels").await;
    assert_eq!(
        &api.get(&format!("/api/connections/{encoded}/channels"))
            .await,
        &channels
    );
    let by_number = |n: u16| {
        channels
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["number"] == n)
            .unwrap_or_else(|| panic!("no channel {n} in {channels}"))
            .clone()
    };
    let busy = by_number(ch.id());
    assert_eq!(busy["name"], format!("{name} ({})", ch.id()));
    assert_eq!(busy["connection_details"]["name"], name.as_str());
    assert_eq!(busy["consumer_count"], 1);
    assert_eq!(busy["prefetch_count"], 7);
    assert_eq!(busy["confirm"], true);
    assert_eq!(busy["transactional"], false);
    assert_eq!(busy["messages_unacknowledged"], 0);
    let idle = by_number(quiet.id());
    assert_eq!(idle["consumer_count"], 0);
    assert_eq!(idle["prefetch_count"], 0);
    assert_eq!(idle["confirm"], false);
    assert_eq!(idle["transactional"], true);

    let consumers = api.get("/api/consumers").await;
    assert_eq!(&api.get("/api/consumers/%2F").await, &consumers);
    let k = find(&consumers, "consumer_tag", "tag-1");
    assert_eq!(k["queue"], json!({"name": "consumed-q", "vhost": "/"}));
    assert_eq!(k["channel_details"]["number"], ch.id());
    assert_eq!(k["channel_details"]["connection_name"], name.as_str());
    assert_eq!(k["ack_required"], true);
    assert_eq!(k["exclusive"], false);
    assert_eq!(k["prefetch_count"], 7);
    assert_eq!(api.get("/api/queues/%2F/consumed-q").await["consumers"], 1);

    // A delivery out and unacked shows on its channel.
    ch.basic_publish(
        "".into(),
        "consumed-q".into(),
        BasicPublishOptions::default(),
        b"held",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    while by_number_now(&api, ch.id()).await["messages_unacknowledged"] != 1 {
        tokio::task::yield_now().await;
    }

    // DELETE closes it with 320 and the X-Reason text.
    let mut events = conn.events_listener();
    let response = api
        .client
        .delete(format!("{}/api/connections/{encoded}", api.base))
        .basic_auth("guest", Some("guest"))
        .header("X-Reason", "maintenance window")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let error = loop {
        match events.next().await.expect("an event") {
            lapin::Event::Error(e) => break e.to_string(),
            _ => continue,
        }
    };
    assert!(error.contains("CONNECTION_FORCED"), "{error}");
    assert!(error.contains("maintenance window"), "{error}");
    while !api.broker.connections().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(api.get("/api/connections").await, json!([]));
    assert_eq!(api.get("/api/channels").await, json!([]));
    api.broker.shutdown().await.unwrap();
}

/// The channel numbered `n` as `/api/channels` lists it now.
async fn by_number_now(api: &Api, n: u16) -> Value {
    let channels = api.get("/api/channels").await;
    channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == n)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn every_route_needs_credentials() {
    let api = Api::start().await;
    for (method, path) in [
        (Method::GET, "/api/queues"),
        (Method::GET, "/api/queues/%2F"),
        (Method::PUT, "/api/queues/%2F/q"),
        (Method::DELETE, "/api/queues/%2F/q"),
        (Method::DELETE, "/api/queues/%2F/q/contents"),
        (Method::POST, "/api/queues/%2F/q/get"),
        (Method::GET, "/api/exchanges"),
        (Method::PUT, "/api/exchanges/%2F/x"),
        (Method::POST, "/api/exchanges/%2F/amq.default/publish"),
        (Method::GET, "/api/bindings"),
        (Method::POST, "/api/bindings/%2F/e/amq.direct/q/q"),
        (Method::GET, "/api/connections"),
        (Method::DELETE, "/api/connections/c"),
        (Method::GET, "/api/channels"),
        (Method::GET, "/api/consumers"),
        (Method::GET, "/api/vhosts"),
    ] {
        let response = api
            .client
            .request(method.clone(), format!("{}{path}", api.base))
            .basic_auth("guest", Some("not the password"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
    // Nothing was done.
    assert_eq!(api.get("/api/queues").await, json!([]));
    api.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn get_with_reject_dead_letters_and_queue_kinds_show() {
    let (api, conn, ch) = Api::start_with_channel("kinds").await;
    declare_queue(&ch, "dead-q", QueueDeclareOptions::default()).await;
    let args = dead_letter_args("dead-q");
    ch.queue_declare("dl-src".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        "quorum-q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum,
    )
    .await
    .unwrap();
    declare_queue(&ch, "excl-q", exclusive()).await;
    assert_eq!(api.get("/api/queues/%2F/quorum-q").await["type"], "quorum");
    assert_eq!(api.get("/api/queues/%2F/excl-q").await["exclusive"], true);
    // Another connection's exclusive queue is locked to the API, as to any other connection.
    let locked = "cannot obtain exclusive access to locked queue 'excl-q' in vhost '/'";
    for (method, path, body) in [
        (Method::DELETE, "/api/queues/%2F/excl-q", None),
        (Method::DELETE, "/api/queues/%2F/excl-q/contents", None),
        (
            Method::POST,
            "/api/queues/%2F/excl-q/get",
            Some(json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})),
        ),
    ] {
        let (status, err) = api.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}");
        assert!(err["reason"].as_str().unwrap().contains(locked), "{err}");
    }
    assert_eq!(api.get("/api/queues/%2F/excl-q").await["name"], "excl-q");

    let body = json!({"properties": {}, "routing_key": "dl-src", "payload": "bad", "payload_encoding": "string"});
    api.publish("amq.default", body).await;
    let reject = json!({"count": 1, "ackmode": "reject_requeue_false", "encoding": "auto"});
    let (status, got) = api.get_messages("dl-src", reject).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got[0]["payload"], "bad");
    assert_eq!(api.get("/api/queues/%2F/dl-src").await["messages"], 0);
    let dead = ch
        .basic_get("dead-q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("dead-lettered");
    assert_eq!(dead.delivery.data, b"bad");
    let death = dead.delivery.properties.headers().as_ref().unwrap();
    assert!(death.inner().contains_key("x-death"), "{death:?}");
    api.finish(conn).await;
}
