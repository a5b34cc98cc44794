//! amqp-core's declarations (exchanges, queues, bindings, conflicts) and the tracing span each
//! delivery gets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use amqp_core::{
    Binding, Connection, ConnectionFactory, Error, Exchange, Listener, ListenerError, Queue,
    Template, text,
};
use common::within;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tests::{TestBroker, conformance, unique};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    text: String,
}

async fn connect(b: &TestBroker) -> Connection {
    let factory = ConnectionFactory::new(b.url()).connection_name(unique("core.declare"));
    within("amqp-core connect", factory.connect())
        .await
        .expect("connect")
}

/// Exchanges of each type, queues and bindings (queue and exchange-to-exchange) route as
/// declared.
async fn declared_topology_routes(b: TestBroker) {
    let conn = connect(&b).await;
    let topic = unique("core.decl.topic");
    let fanout = unique("core.decl.fanout");
    let headers = unique("core.decl.headers");
    let (q_topic, q_fanout, q_headers) = (
        unique("core.decl.qt"),
        unique("core.decl.qf"),
        unique("core.decl.qh"),
    );
    conn.declare(vec![
        Exchange::topic(&topic)
            .durable(false)
            .auto_delete(true)
            .into(),
        Exchange::fanout(&fanout)
            .durable(false)
            .auto_delete(true)
            .into(),
        Exchange::headers(&headers)
            .durable(false)
            .auto_delete(true)
            .into(),
        Queue::transient(&q_topic).into(),
        Queue::transient(&q_fanout).into(),
        Queue::transient(&q_headers).into(),
        Binding::queue(&q_topic).to(&topic).key("login.*").into(),
        Binding::exchange(&fanout).to(&topic).key("login.#").into(),
        Binding::queue(&q_fanout).to(&fanout).into(),
        Binding::queue(&q_headers)
            .to(&headers)
            .argument("x-match", text("all"))
            .argument("kind", text("audit"))
            .into(),
    ])
    .await
    .expect("declare");
    let template = Template::new(conn.clone());
    template
        .convert_and_send(
            &topic,
            "login.ok",
            &Note {
                text: "hello".into(),
            },
        )
        .await
        .expect("send");
    let mut props = amqp_core::types::FieldTable::default();
    props.insert("kind".into(), text("audit"));
    let message = amqp_core::Message::new(&b"{\"text\":\"audit\"}"[..])
        .with_properties(amqp_core::types::BasicProperties::default().with_headers(props));
    template.send(&headers, "", message).await.expect("send");
    for q in [&q_topic, &q_fanout] {
        let got: Option<Note> = template
            .receive_and_convert(q, Duration::from_secs(2))
            .await
            .expect("receive");
        assert_eq!(
            got,
            Some(Note {
                text: "hello".into()
            }),
            "queue {q}"
        );
    }
    let got: Option<Note> = template
        .receive_and_convert(&q_headers, Duration::from_secs(2))
        .await
        .expect("receive");
    assert_eq!(
        got,
        Some(Note {
            text: "audit".into()
        })
    );
    let (_c, ch) = common::open(&b).await;
    for q in [&q_topic, &q_fanout, &q_headers] {
        common::delete_queue(&ch, q).await;
    }
    conn.close().await;
}

/// A declaration that conflicts with what the broker has is reported with the names and the
/// property that differs, and is not remembered for re-declaration.
async fn a_conflicting_declaration_names_what_differs(b: TestBroker) {
    let conn = connect(&b).await;
    let q = unique("core.decl.conflict");
    conn.declare(Queue::transient(&q)).await.expect("declare");
    let err = conn.declare(Queue::durable(&q)).await.unwrap_err();
    match &err {
        Error::DeclarationConflict { kind, name, detail } => {
            assert_eq!((*kind, name.as_str()), ("queue", q.as_str()));
            assert!(detail.contains("durable"), "{detail}");
        }
        other => panic!("expected DeclarationConflict, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&q) && text.contains("durable"), "{text}");

    let x = unique("core.decl.xconflict");
    conn.declare(Exchange::direct(&x).durable(false).auto_delete(true))
        .await
        .expect("declare");
    let err = conn
        .declare(Exchange::topic(&x).durable(false).auto_delete(true))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::DeclarationConflict { kind: "exchange", detail, .. } if detail.contains("type")),
        "{err:?}"
    );
    let (_c, ch) = common::open(&b).await;
    common::delete_queue(&ch, &q).await;
    conn.close().await;
}

conformance!(
    declared_topology_routes,
    a_conflicting_declaration_names_what_differs
);

/// Each delivery runs in a `delivery` span that records the queue, routing key, message id,
/// outcome and duration. (One thread, so that the listener's tasks see this test's subscriber.)
#[tokio::test(flavor = "current_thread")]
async fn each_delivery_has_a_tracing_span() {
    use tracing_subscriber::layer::SubscriberExt;

    let spans: Arc<Mutex<Vec<String>>> = Arc::default();
    let subscriber = tracing_subscriber::registry().with(SpanRecorder(spans.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let b = TestBroker::bundled().await;
    let conn = connect(&b).await;
    let q = unique("core.span");
    conn.declare(Queue::transient(&q).auto_delete())
        .await
        .expect("declare");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = Listener::on(&q)
        .handler(move |n: Note| {
            let tx = tx.clone();
            async move {
                tx.send(()).ok();
                if n.text == "bad" {
                    Err(ListenerError::reject("bad note"))
                } else {
                    Ok(())
                }
            }
        })
        .start(&conn)
        .await
        .expect("start");
    let template = Template::new(conn.clone());
    template
        .convert_and_send(
            "",
            &q,
            &Note {
                text: "good".into(),
            },
        )
        .await
        .expect("send");
    template
        .convert_and_send("", &q, &Note { text: "bad".into() })
        .await
        .expect("send");
    within("two deliveries", async {
        rx.recv().await;
        rx.recv().await;
    })
    .await;
    within("both spans closed", async {
        while spans.lock().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    listener.shutdown().await;
    let spans = spans.lock().clone();
    assert!(spans.iter().any(|s| s.contains("outcome=ok")), "{spans:?}");
    assert!(
        spans.iter().any(|s| s.contains("outcome=rejected")),
        "{spans:?}"
    );
    for s in &spans {
        for field in ["queue=", "routing_key=", "message_id=", "duration_ms="] {
            assert!(s.contains(field), "{field} in {s}");
        }
        assert!(s.contains(&q));
    }
}

/// Records the fields of every closed `delivery` span as `name=value` text.
struct SpanRecorder(Arc<Mutex<Vec<String>>>);

#[derive(Default)]
struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!("{}={} ", field.name(), value));
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanRecorder
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() != "delivery" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(fields) = span.extensions().get::<Fields>()
        {
            self.0.lock().push(fields.0.clone());
        }
    }
}
