//! Exchanges: declaration rules, the pre-declared exchanges, deletion, exchange-to-exchange
//! bindings, internal exchanges, and routing by each of the four exchange types.

mod common;

use std::collections::BTreeSet;

use common::{
    Errors, assert_code, code, drain, fresh_queue, get_eventually, open, publish, publish_with,
    within,
};
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use tests::{TestBroker, conformance, unique};

async fn declare(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, options, FieldTable::default()),
    )
    .await
}

async fn new_exchange(ch: &Channel, prefix: &str, kind: ExchangeKind) -> String {
    let name = unique(prefix);
    declare(
        ch,
        &name,
        kind,
        ExchangeDeclareOptions {
            auto_delete: false,
            ..Default::default()
        },
    )
    .await
    .expect("exchange.declare");
    name
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .expect("queue.bind");
}

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// A channel in confirm mode, so that `wait_for_confirms` means "everything published so far has
/// been routed and enqueued".
async fn confirm_channel(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (conn, ch) = open(b).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    (conn, ch)
}

async fn settle(ch: &Channel) {
    let returned = within("confirms", ch.wait_for_confirms())
        .await
        .expect("confirms");
    assert!(returned.is_empty(), "unexpected returns: {returned:?}");
}

fn strings(bodies: Vec<Vec<u8>>) -> BTreeSet<String> {
    bodies
        .into_iter()
        .map(|b| String::from_utf8(b).expect("utf8 body"))
        .collect()
}

async fn declare_each_type(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    for kind in [
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
        ExchangeKind::Headers,
    ] {
        let name = new_exchange(&ch, "ex.kind", kind.clone()).await;
        // Redeclaring with identical settings is fine, and so is a passive declare.
        declare(&ch, &name, kind.clone(), ExchangeDeclareOptions::default())
            .await
            .expect("redeclare");
        declare(&ch, &name, ExchangeKind::Direct, passive())
            .await
            .expect("passive declare ignores the type");
        within(
            "exchange.delete",
            ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
        )
        .await
        .expect("exchange.delete");
    }
    let durable = unique("ex.durable");
    declare(
        &ch,
        &durable,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await
    .expect("durable declare");
    ch.exchange_delete(durable.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
}

async fn passive_declare_of_missing_exchange_is_404(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    assert_code(
        declare(&ch, &unique("ex.missing"), ExchangeKind::Direct, passive()).await,
        code::NOT_FOUND,
    );
    assert!(!ch.status().connected());
}

async fn redeclare_with_other_type_is_406(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let name = new_exchange(&ch, "ex.retype", ExchangeKind::Direct).await;
    assert_code(
        declare(
            &ch,
            &name,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
        )
        .await,
        code::PRECONDITION_FAILED,
    );
    // The exchange itself is unchanged.
    let ch2 = conn.create_channel().await.expect("channel");
    declare(
        &ch2,
        &name,
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
    )
    .await
    .expect("same type still fine");
}

async fn redeclare_with_other_durability_is_406(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let name = new_exchange(&ch, "ex.redur", ExchangeKind::Direct).await;
    let res = declare(
        &ch,
        &name,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

async fn redeclare_with_other_auto_delete_is_406(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let name = new_exchange(&ch, "ex.read", ExchangeKind::Topic).await;
    let res = declare(
        &ch,
        &name,
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

async fn amq_prefixed_exchange_name_is_403(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    assert_code(
        declare(
            &ch,
            &unique("amq.custom"),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
        )
        .await,
        code::ACCESS_REFUSED,
    );
}

async fn unknown_exchange_type_is_503(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let res = declare(
        &ch,
        &unique("ex.weird"),
        ExchangeKind::Custom("x-no-such-type".into()),
        ExchangeDeclareOptions::default(),
    )
    .await;
    // COMMAND_INVALID is a connection error.
    assert_code(res, code::COMMAND_INVALID);
    within("connection to close", async {
        while conn.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn predeclared_exchanges_exist(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        declare(&ch, name, kind.clone(), passive())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // An existing amq.* exchange may be redeclared with its own settings (durable).
        declare(
            &ch,
            name,
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("redeclare {name}: {e}"));
    }
}

async fn default_exchange_routes_by_queue_name(b: TestBroker) {
    let (_conn, ch) = confirm_channel(&b).await;
    let q1 = fresh_queue(&ch, "ex.default1").await;
    let q2 = fresh_queue(&ch, "ex.default2").await;
    publish(&ch, "", &q1, b"for q1").await;
    publish(&ch, "", &q2, b"for q2").await;
    publish(&ch, "", &unique("nobody"), b"dropped").await;
    settle(&ch).await;
    assert_eq!(drain(&ch, &q1).await, vec![b"for q1".to_vec()]);
    assert_eq!(drain(&ch, &q2).await, vec![b"for q2".to_vec()]);
}

async fn binding_to_default_exchange_is_403(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let q = fresh_queue(&ch, "ex.defbind").await;
    let res = within(
        "queue.bind",
        ch.queue_bind(
            q.as_str().into(),
            "".into(),
            "x".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::ACCESS_REFUSED);
}

/// The default exchange cannot be declared (not even passively), deleted or bound to.
async fn default_exchange_is_off_limits(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    assert_code(
        declare(
            &ch,
            "",
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
        )
        .await,
        code::ACCESS_REFUSED,
    );
    let ch = conn.create_channel().await.expect("channel");
    assert_code(
        declare(&ch, "", ExchangeKind::Direct, passive()).await,
        code::ACCESS_REFUSED,
    );
    let ch = conn.create_channel().await.expect("channel");
    assert_code(
        within(
            "delete",
            ch.exchange_delete("".into(), ExchangeDeleteOptions::default()),
        )
        .await,
        code::ACCESS_REFUSED,
    );
}

async fn deleting_predeclared_exchange_is_403(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    assert_code(
        within(
            "delete",
            ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()),
        )
        .await,
        code::ACCESS_REFUSED,
    );
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "amq.direct", ExchangeKind::Direct, passive())
        .await
        .expect("amq.direct still exists");
}

async fn delete_exchange(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let name = new_exchange(&ch, "ex.del", ExchangeKind::Fanout).await;
    within(
        "exchange.delete",
        ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("exchange.delete");
    assert_code(
        declare(&ch, &name, ExchangeKind::Fanout, passive()).await,
        code::NOT_FOUND,
    );
}

/// Deleting an exchange that does not exist succeeds (RabbitMQ made delete idempotent).
async fn delete_missing_exchange_is_ok(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    within(
        "exchange.delete",
        ch.exchange_delete(unique("ex.never").into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("exchange.delete of a missing exchange");
    assert!(ch.status().connected());
}

async fn delete_if_unused_on_used_exchange_is_406(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let name = new_exchange(&ch, "ex.used", ExchangeKind::Direct).await;
    let q = fresh_queue(&ch, "ex.used.q").await;
    bind(&ch, &q, &name, "k", FieldTable::default()).await;
    let res = within(
        "exchange.delete",
        ch.exchange_delete(
            name.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
    // Still there; and once unbound, if-unused deletion works.
    let ch2 = conn.create_channel().await.expect("channel");
    declare(&ch2, &name, ExchangeKind::Direct, passive())
        .await
        .expect("still exists");
    within(
        "queue.unbind",
        ch2.queue_unbind(
            q.as_str().into(),
            name.as_str().into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.unbind");
    within(
        "exchange.delete",
        ch2.exchange_delete(
            name.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("if-unused delete of an unused exchange");
}

async fn deleting_exchange_removes_its_bindings(b: TestBroker) {
    let (_conn, ch) = confirm_channel(&b).await;
    let name = new_exchange(&ch, "ex.delbind", ExchangeKind::Fanout).await;
    let q = fresh_queue(&ch, "ex.delbind.q").await;
    bind(&ch, &q, &name, "", FieldTable::default()).await;
    ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
    // Recreate: the old binding must not come back.
    declare(
        &ch,
        &name,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .await
    .expect("redeclare");
    publish(&ch, &name, "", b"x").await;
    settle(&ch).await;
    assert!(drain(&ch, &q).await.is_empty());
}

async fn exchange_to_exchange_binding(b: TestBroker) {
    let (_conn, ch) = confirm_channel(&b).await;
    let source = new_exchange(&ch, "ex.src", ExchangeKind::Topic).await;
    let dest = new_exchange(&ch, "ex.dst", ExchangeKind::Direct).await;
    let q = fresh_queue(&ch, "ex.e2e.q").await;
    bind(&ch, &q, &dest, "a.b", FieldTable::default()).await;
    within(
        "exchange.bind",
        ch.exchange_bind(
            dest.as_str().into(),
            source.as_str().into(),
            "a.*".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");

    publish(&ch, &source, "a.b", b"through").await; // a.* then a.b: routed
    publish(&ch, &source, "a.c", b"dest drops").await; // a.* matches, dest has no a.c
    publish(&ch, &source, "b.b", b"source drops").await;
    settle(&ch).await;
    assert_eq!(drain(&ch, &q).await, vec![b"through".to_vec()]);

    within(
        "exchange.unbind",
        ch.exchange_unbind(
            dest.as_str().into(),
            source.as_str().into(),
            "a.*".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, &source, "a.b", b"after unbind").await;
    settle(&ch).await;
    assert!(drain(&ch, &q).await.is_empty());
}

async fn exchange_bind_to_missing_is_404(b: TestBroker) {
    let (_conn, ch) = open(&b).await;
    let dest = new_exchange(&ch, "ex.dst", ExchangeKind::Direct).await;
    let res = within(
        "exchange.bind",
        ch.exchange_bind(
            dest.as_str().into(),
            unique("ex.missing").into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::NOT_FOUND);
}

async fn publish_to_internal_exchange_is_403(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let name = unique("ex.internal");
    declare(
        &ch,
        &name,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
    )
    .await
    .expect("declare internal");
    let mut errors = Errors::watch(&conn);
    publish(&ch, &name, "", b"nope").await;
    assert_eq!(errors.next_code().await, code::ACCESS_REFUSED);
}

/// An internal exchange still routes what reaches it through an exchange-to-exchange binding.
async fn internal_exchange_routes_via_binding(b: TestBroker) {
    let (_conn, ch) = confirm_channel(&b).await;
    let internal = unique("ex.internal");
    declare(
        &ch,
        &internal,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
    )
    .await
    .expect("declare internal");
    let front = new_exchange(&ch, "ex.front", ExchangeKind::Fanout).await;
    let q = fresh_queue(&ch, "ex.internal.q").await;
    bind(&ch, &q, &internal, "", FieldTable::default()).await;
    ch.exchange_bind(
        internal.as_str().into(),
        front.as_str().into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.bind");
    publish(&ch, &front, "any", b"via front").await;
    settle(&ch).await;
    assert_eq!(drain(&ch, &q).await, vec![b"via front".to_vec()]);
}

async fn publish_to_missing_exchange_is_404(b: TestBroker) {
    let (conn, ch) = open(&b).await;
    let mut errors = Errors::watch(&conn);
    publish(&ch, &unique("ex.missing"), "k", b"lost").await;
    assert_eq!(errors.next_code().await, code::NOT_FOUND);
    within("channel to close", async {
        while ch.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        conn.status().connected(),
        "a soft error leaves the connection open"
    );
}

async fn direct_routes_by_exact_key(b: TestBroker) {
    let (_conn, ch) = confirm_channel(&b).await;
    let ex = new_exchange(&ch, "ex.direct", ExchangeKind::Direct).await;
    let qa = fresh_queue(&ch, "ex.direct.a").await;
    let qb = fresh_queue(&ch, "ex.direct.b").await;
    bind(&ch, &qa, &ex, "a", FieldTable::default()).await;
    bind(&ch, &qb, &ex, "b", FieldTable::default()).await;
    bind(&ch, &qb, &ex, "shared", FieldTable::default()).await;
    bind(&ch, &qa, &ex, "shared", FieldTable::default()).await;
    for key in ["a", "b", "shared", "A", "a.b", "", "c"] {
        publish(&ch, &ex, key, key.as_bytes()).await;
    }
    settle(&ch).await;
    assert_eq!(
        strings(drain(&ch, &qa).await),
        BTreeSet::from(["a".to_string(), "shared".to_string()])
    );
    assert_eq!(
        strings(drain(&ch, &qb).await),
        BTreeSet::from(["b".to_string(), "shared".to_string()])
    );
}

/// A queue bound twice with keys that both match still gets one copy.
async fn one_copy_per_queue(b: TestBroker) {
    let (_conn, ch) = confirm_channel(&b).await;
    let ex = new_exchange(&ch, "ex.topic.dup", ExchangeKind::Topic).await;
    let q = fresh_queue(&ch, "ex.dup.q").await;
    bind(&ch, &q, &ex, "a.*", FieldTable::default()).await;
    bind(&ch, &q, &ex, "#", FieldTable::default()).await;
    publish(&ch, &ex, "a.b", b"once").await;
    settle(&ch).await;
    assert_eq!(drain(&ch, &q).await, vec![b"once".to_vec()]);
}

async fn fanout_ignores_routing_key(b: TestBroker) {
    let (_conn, ch) = confirm_channel(&b).await;
    let ex = new_exchange(&ch, "ex.fanout", ExchangeKind::Fanout).await;
    let mut queues = Vec::new();
    for i in 0..3 {
        let q = fresh_queue(&ch, "ex.fanout.q").await;
        bind(&ch, &q, &ex, &format!("key{i}"), FieldTable::default()).await;
        queues.push(q);
    }
    publish(&ch, &ex, "whatever", b"m1").await;
    publish(&ch, &ex, "", b"m2").await;
    settle(&ch).await;
    for q in &queues {
        assert_eq!(
            drain(&ch, q).await,
            vec![b"m1".to_vec(), b"m2".to_vec()],
            "queue {q}"
        );
    }
}

async fn topic_wildcards(b: TestBroker) {
    // (binding pattern, routing keys that match, routing keys that do not)
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("a.b", &["a.b"], &["a", "a.b.c", "a.bb", "b.a"]),
        (
            "a.*.c",
            &["a.b.c", "a.xyz.c", "a..c"],
            &["a.c", "a.b.b.c", "a.b.c.d", "b.b.c"],
        ),
        ("#", &["a", "a.b.c", "", "."], &[]),
        ("a.#", &["a", "a.b", "a.b.c"], &["b.a", "ab", "b"]),
        ("#.c", &["c", "a.c", "a.b.c"], &["c.a", "ac", "a.c.d"]),
        (
            "a.#.c",
            &["a.c", "a.b.c", "a.b.b.c"],
            &["a.b", "ac", "a.c.d", "b.a.c"],
        ),
        ("*", &["a", "xyz"], &["", "a.b"]),
        ("*.*", &["a.b", "."], &["a", "a.b.c"]),
        (
            "*.b.#",
            &["a.b", "a.b.c", "x.b.c.d"],
            &["b", "a.a.b", "b.c"],
        ),
        (
            "#.b.#",
            &["b", "a.b", "b.c", "a.b.c", "b.b"],
            &["a.c", "ab"],
        ),
        ("a.*.#", &["a.b", "a.b.c"], &["a", "b.b"]),
        ("", &[""], &["a", "."]),
    ];
    let (_conn, ch) = confirm_channel(&b).await;
    let ex = new_exchange(&ch, "ex.topic", ExchangeKind::Topic).await;
    let mut queues = Vec::new();
    for (pattern, _, _) in cases {
        let q = fresh_queue(&ch, "ex.topic.q").await;
        bind(&ch, &q, &ex, pattern, FieldTable::default()).await;
        queues.push(q);
    }
    let keys: BTreeSet<&str> = cases
        .iter()
        .flat_map(|(_, yes, no)| yes.iter().chain(no.iter()).copied())
        .collect();
    for key in &keys {
        // The body carries the key in brackets so that the empty key is visible.
        publish(&ch, &ex, key, format!("[{key}]").as_bytes()).await;
    }
    settle(&ch).await;
    for ((pattern, yes, no), q) in cases.iter().zip(&queues) {
        let got = strings(drain(&ch, q).await);
        for key in *yes {
            assert!(
                got.contains(&format!("[{key}]")),
                "pattern {pattern:?} should match key {key:?}; got {got:?}"
            );
        }
        for key in *no {
            assert!(
                !got.contains(&format!("[{key}]")),
                "pattern {pattern:?} must not match key {key:?}"
            );
        }
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

async fn headers_exchange_all_and_any(b: TestBroker) {
    let (_conn, ch) = confirm_channel(&b).await;
    let ex = new_exchange(&ch, "ex.headers", ExchangeKind::Headers).await;
    let q_all = fresh_queue(&ch, "ex.h.all").await;
    let q_any = fresh_queue(&ch, "ex.h.any").await;
    let q_default = fresh_queue(&ch, "ex.h.default").await;
    let q_empty = fresh_queue(&ch, "ex.h.empty").await;
    let wanted = [("a", AMQPValue::LongInt(1)), ("b", s("x"))];
    let mut all = table(&wanted);
    all.insert("x-match".into(), s("all"));
    let mut any = table(&wanted);
    any.insert("x-match".into(), s("any"));
    bind(&ch, &q_all, &ex, "ignored", all).await;
    bind(&ch, &q_any, &ex, "", any).await;
    bind(&ch, &q_default, &ex, "", table(&wanted)).await;
    // x-match=all with nothing to match matches every message.
    bind(&ch, &q_empty, &ex, "", table(&[("x-match", s("all"))])).await;

    let messages: &[(&str, FieldTable)] = &[
        (
            "both",
            table(&[("a", AMQPValue::LongInt(1)), ("b", s("x"))]),
        ),
        (
            "both+extra",
            table(&[("a", AMQPValue::LongInt(1)), ("b", s("x")), ("c", s("z"))]),
        ),
        ("only-a", table(&[("a", AMQPValue::LongInt(1))])),
        ("only-b", table(&[("b", s("x"))])),
        (
            "a-wrong",
            table(&[("a", AMQPValue::LongInt(2)), ("b", s("x"))]),
        ),
        (
            "b-wrong",
            table(&[("a", AMQPValue::LongInt(1)), ("b", s("y"))]),
        ),
        ("other", table(&[("c", s("z"))])),
        ("none", FieldTable::default()),
    ];
    for (body, headers) in messages {
        publish_with(
            &ch,
            &ex,
            "rk",
            body.as_bytes(),
            BasicProperties::default().with_headers(headers.clone()),
        )
        .await;
    }
    // And one with no headers property at all.
    publish(&ch, &ex, "rk", b"no-headers").await;
    settle(&ch).await;

    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        strings(drain(&ch, &q_all).await),
        set(&["both", "both+extra"])
    );
    assert_eq!(
        strings(drain(&ch, &q_default).await),
        set(&["both", "both+extra"]),
        "x-match defaults to all"
    );
    assert_eq!(
        strings(drain(&ch, &q_any).await),
        set(&[
            "both",
            "both+extra",
            "only-a",
            "only-b",
            "a-wrong",
            "b-wrong"
        ])
    );
    assert_eq!(
        strings(drain(&ch, &q_empty).await),
        set(&[
            "both",
            "both+extra",
            "only-a",
            "only-b",
            "a-wrong",
            "b-wrong",
            "other",
            "none",
            "no-headers"
        ])
    );
}

/// Unbinding a queue stops routing to it; other bindings stay.
async fn unbind_stops_routing(b: TestBroker) {
    let (_conn, ch) = confirm_channel(&b).await;
    let ex = new_exchange(&ch, "ex.unbind", ExchangeKind::Direct).await;
    let q = fresh_queue(&ch, "ex.unbind.q").await;
    bind(&ch, &q, &ex, "k1", FieldTable::default()).await;
    bind(&ch, &q, &ex, "k2", FieldTable::default()).await;
    ch.queue_unbind(
        q.as_str().into(),
        ex.as_str().into(),
        "k1".into(),
        FieldTable::default(),
    )
    .await
    .expect("unbind");
    publish(&ch, &ex, "k1", b"k1").await;
    publish(&ch, &ex, "k2", b"k2").await;
    settle(&ch).await;
    assert_eq!(drain(&ch, &q).await, vec![b"k2".to_vec()]);
    // Re-publishing via the remaining binding is seen by a plain get too.
    publish(&ch, &ex, "k2", b"again").await;
    assert_eq!(get_eventually(&ch, &q).await, b"again");
}

conformance!(
    declare_each_type,
    passive_declare_of_missing_exchange_is_404,
    redeclare_with_other_type_is_406,
    redeclare_with_other_durability_is_406,
    redeclare_with_other_auto_delete_is_406,
    amq_prefixed_exchange_name_is_403,
    unknown_exchange_type_is_503,
    predeclared_exchanges_exist,
    default_exchange_routes_by_queue_name,
    binding_to_default_exchange_is_403,
    default_exchange_is_off_limits,
    deleting_predeclared_exchange_is_403,
    delete_exchange,
    delete_missing_exchange_is_ok,
    delete_if_unused_on_used_exchange_is_406,
    deleting_exchange_removes_its_bindings,
    exchange_to_exchange_binding,
    exchange_bind_to_missing_is_404,
    publish_to_internal_exchange_is_403,
    internal_exchange_routes_via_binding,
    publish_to_missing_exchange_is_404,
    direct_routes_by_exact_key,
    one_copy_per_queue,
    fanout_ignores_routing_key,
    topic_wildcards,
    headers_exchange_all_and_any,
    unbind_stops_routing,
);
