//! `/metrics` through a real HTTP client, after a real AMQP client (lapin) published, consumed,
//! acked, nacked and dead-lettered known numbers of messages: every counter equals what was done,
//! and the text is well-formed Prometheus exposition format (checked by a small parser here).

mod common;

use common::dead_letter_args;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use amqp_broker::Broker;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

async fn broker(data_dir: Option<std::path::PathBuf>) -> Broker {
    let mut builder = Broker::builder().port(0).management_port(0);
    if let Some(dir) = data_dir {
        builder = builder.data_dir(dir);
    }
    builder.start().await.expect("broker starts")
}

/// One sample: the metric's name and its labels (sorted).
type Key = (String, BTreeMap<String, String>);

/// A parsed exposition: every sample's value, and each family's type.
#[derive(Debug)]
struct Scrape {
    samples: HashMap<Key, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// The value of `name` with exactly these labels; fails the test if there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = (
            name.to_owned(),
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        *self
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// A per-queue sample in the default vhost.
    fn queue(&self, name: &str, queue: &str) -> f64 {
        self.value(name, &[("vhost", "/"), ("queue", queue)])
    }

    /// A per-vhost sample of the default vhost.
    fn vhost(&self, name: &str) -> f64 {
        self.value(name, &[("vhost", "/")])
    }
}

/// GETs `/metrics` without credentials and parses it, checking the format as it goes: every
/// sample belongs to the family declared by the last `# TYPE` (a histogram's `_bucket`, `_sum`
/// and `_count` included), each family appears once and has `# HELP`, label values are quoted
/// and escaped, values are numbers, and each histogram's buckets are cumulative, end with
/// `le="+Inf"`, and that bucket equals `_count`.
async fn scrape(broker: &Broker) -> Scrape {
    parse(&scrape_text(broker).await)
}

/// `GET /metrics` without credentials: the text as served.
async fn scrape_text(broker: &Broker) -> String {
    let url = format!("{}/metrics", broker.management_url().unwrap());
    let response = reqwest::get(&url).await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.unwrap()
}

/// Runs Prometheus' own checker, `promtool check metrics`, on `text` when the environment
/// variable `PROMTOOL` names the binary (CI fetches it; see `.ci/run`).
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let Some(promtool) = std::env::var_os("PROMTOOL") else {
        eprintln!("PROMTOOL is not set: promtool check metrics skipped");
        return;
    };
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {promtool:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn parse(text: &str) -> Scrape {
    let mut samples = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = Vec::new();
    let mut family: Option<(String, String)> = None;
    let mut buckets: HashMap<BTreeMap<String, String>, Vec<(f64, f64)>> = HashMap::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a text");
            assert!(!help.is_empty(), "{line}");
            helped.push(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family {name} declared twice"
            );
            assert_eq!(
                helped.last().map(String::as_str),
                Some(name),
                "HELP before TYPE"
            );
            check_histogram(&family, &buckets);
            buckets.clear();
            family = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (name, labels, value) = sample(line);
        let (fam, kind) = family.as_ref().expect("a sample after a TYPE");
        let base = if kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or_else(|| panic!("{name} is no histogram sample"))
        } else {
            name.as_str()
        };
        assert_eq!(base, fam, "sample {name} outside its family's block");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} ends with _total");
        }
        if name.ends_with("_bucket") {
            let mut series = labels.clone();
            let le = series.remove("le").expect("a bucket has le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            buckets.entry(series).or_default().push((le, value));
        }
        assert!(
            samples.insert((name.clone(), labels), value).is_none(),
            "{name} twice with the same labels"
        );
    }
    check_histogram(&family, &buckets);
    let scrape = Scrape { samples, types };
    for ((name, labels), value) in &scrape.samples {
        if let Some(base) = name.strip_suffix("_count") {
            if scrape.types.get(base).map(String::as_str) == Some("histogram") {
                let mut inf = labels.clone();
                inf.insert("le".into(), "+Inf".into());
                let top = scrape.samples[&(format!("{base}_bucket"), inf)];
                assert_eq!(top, *value, "{base}: +Inf bucket equals _count");
            }
        }
    }
    scrape
}

/// A finished histogram family's buckets: increasing bounds, cumulative counts, `+Inf` last.
fn check_histogram(
    family: &Option<(String, String)>,
    buckets: &HashMap<BTreeMap<String, String>, Vec<(f64, f64)>>,
) {
    let Some((name, kind)) = family else { return };
    if kind != "histogram" {
        return;
    }
    for (series, b) in buckets {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{name}{series:?}: bounds increase and counts are cumulative"
        );
        assert_eq!(
            b.last().map(|l| l.0),
            Some(f64::INFINITY),
            "{name} ends with +Inf"
        );
    }
}

/// `name{label="value",...} number`, with `\\`, `\"` and `\n` escapes in values.
fn sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line.find(['{', ' ']).expect("a sample has a value");
    let name = &line[..name_end];
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "metric name {name:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        loop {
            let (start, c) = chars.next().expect("labels are closed");
            if c == '}' {
                rest = &inner[start + 1..];
                break;
            }
            let eq = inner[start..].find('=').expect("label=value") + start;
            let label = &inner[start..eq];
            assert!(
                label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label name {label:?}"
            );
            while chars.next().expect("label value").0 < eq {}
            assert_eq!(
                chars.next().map(|c| c.1),
                Some('"'),
                "label value is quoted"
            );
            let mut value = String::new();
            loop {
                match chars.next().expect("label value is closed").1 {
                    '"' => break,
                    '\\' => match chars.next().expect("an escape").1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => panic!("bad escape \\{c}"),
                    },
                    c => value.push(c),
                }
            }
            labels.insert(label.to_owned(), value);
            match chars.next().expect("labels are closed") {
                (_, ',') => {}
                (end, '}') => {
                    rest = &inner[end + 1..];
                    break;
                }
                (_, c) => panic!("unexpected {c:?} after a label"),
            }
        }
    }
    let value = rest.strip_prefix(' ').expect("one space before the value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("value {v:?}")),
    };
    (name.to_owned(), labels, value)
}

async fn declare(ch: &Channel, name: &str, durable: bool, arguments: FieldTable) {
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    ch.queue_declare(name.into(), options, arguments)
        .await
        .expect("queue.declare");
}

/// Publishes `n` messages of `body` to `queue` with confirms, and waits for every confirm.
async fn publish_confirmed(ch: &Channel, queue: &str, n: usize, body: &[u8], persistent: bool) {
    let properties = if persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await
            .expect("basic.publish");
        assert!(confirm.await.expect("confirm").is_ack());
    }
}

/// Waits until the broker's view satisfies `done` (the broker ends a connection's task
/// shortly after the client's close; nothing else here is asynchronous). Fails after a minute.
async fn scrape_until(broker: &Broker, done: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..600 {
        let s = scrape(broker).await;
        if done(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the metrics never reached the expected state");
}

#[tokio::test]
async fn counters_equal_what_the_clients_did() {
    let broker = broker(None).await;
    let work = "work";
    let dlq = "work.dlq";
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let publisher = conn.create_channel().await.unwrap();
    let consumer = conn.create_channel().await.unwrap();
    declare(&publisher, work, false, dead_letter_args(dlq)).await;
    declare(&publisher, dlq, false, FieldTable::default()).await;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    // 10 messages of 100 bytes in; all 10 delivered; 6 acked, 2 requeued (so delivered again
    // and acked), 2 rejected to the dead-letter queue; one of those fetched with basic.get.
    publish_confirmed(&publisher, work, 10, &[b'x'; 100], false).await;
    consumer
        .basic_qos(20, BasicQosOptions::default())
        .await
        .unwrap();
    let mut deliveries = consumer
        .basic_consume(
            work.into(),
            "metrics".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..12 {
        let d = deliveries.next().await.unwrap().unwrap();
        assert_eq!(d.redelivered, i >= 10, "delivery {i}");
        let requeue = match i {
            0..6 | 10.. => {
                d.ack(BasicAckOptions::default()).await.unwrap();
                continue;
            }
            6..8 => true,
            _ => false,
        };
        let options = BasicNackOptions {
            requeue,
            ..Default::default()
        };
        d.nack(options).await.unwrap();
    }
    let got = consumer
        .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a dead-lettered message");
    // A method with a reply on the same channel: the acks and nacks before it were handled.
    declare(&consumer, dlq, false, FieldTable::default()).await;

    let s = scrape(&broker).await;
    let q = |name: &str| s.queue(name, work);
    assert_eq!(q("amqp_broker_queue_messages_published_total"), 10.0);
    assert_eq!(q("amqp_broker_queue_messages_delivered_total"), 12.0);
    assert_eq!(q("amqp_broker_queue_messages_redelivered_total"), 2.0);
    assert_eq!(q("amqp_broker_queue_messages_acked_total"), 8.0);
    assert_eq!(q("amqp_broker_queue_messages_dead_lettered_total"), 2.0);
    assert_eq!(q("amqp_broker_queue_messages_ready"), 0.0);
    assert_eq!(q("amqp_broker_queue_messages_unacked"), 0.0);
    assert_eq!(q("amqp_broker_queue_consumers"), 1.0);
    let d = |name: &str| s.queue(name, dlq);
    assert_eq!(d("amqp_broker_queue_messages_published_total"), 2.0);
    assert_eq!(d("amqp_broker_queue_messages_delivered_total"), 1.0);
    assert_eq!(d("amqp_broker_queue_messages_dead_lettered_total"), 0.0);
    assert_eq!(d("amqp_broker_queue_messages_ready"), 1.0);
    assert_eq!(d("amqp_broker_queue_messages_unacked"), 1.0);
    assert_eq!(d("amqp_broker_queue_consumers"), 0.0);
    // Bytes are the bodies' (not the x-death headers dead-lettering added).
    assert_eq!(d("amqp_broker_queue_messages_ready_bytes"), 100.0);
    assert_eq!(d("amqp_broker_queue_messages_unacked_bytes"), 100.0);
    assert_eq!(s.vhost("amqp_broker_queues"), 2.0);
    assert_eq!(s.vhost("amqp_broker_connections"), 1.0);
    assert_eq!(s.vhost("amqp_broker_connections_opened_total"), 1.0);
    assert_eq!(s.vhost("amqp_broker_channels"), 2.0);
    assert_eq!(s.vhost("amqp_broker_channels_opened_total"), 2.0);
    assert_eq!(s.vhost("amqp_broker_vhost_messages_published_total"), 12.0);
    assert_eq!(s.vhost("amqp_broker_vhost_messages_delivered_total"), 13.0);
    assert_eq!(s.vhost("amqp_broker_vhost_messages_acked_total"), 8.0);
    // Every publish was confirmed; nothing was stored, so there is no sync histogram.
    assert_eq!(s.vhost("amqp_broker_confirm_latency_seconds_count"), 10.0);
    assert!(s.vhost("amqp_broker_confirm_latency_seconds_sum") > 0.0);
    assert!(!s.types.contains_key("amqp_broker_store_sync_seconds"));

    // Deleting a queue removes its series but not what the vhost's totals counted.
    got.ack(BasicAckOptions::default()).await.unwrap();
    declare(&consumer, dlq, false, FieldTable::default()).await;
    publisher
        .queue_delete(dlq.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let s = scrape(&broker).await;
    assert!(
        !s.samples
            .keys()
            .any(|(_, labels)| labels.get("queue").map(String::as_str) == Some(dlq))
    );
    assert_eq!(s.vhost("amqp_broker_queues"), 1.0);
    assert_eq!(s.vhost("amqp_broker_vhost_messages_published_total"), 12.0);
    assert_eq!(s.vhost("amqp_broker_vhost_messages_acked_total"), 9.0);

    consumer.close(200, "bye".into()).await.unwrap();
    conn.close(200, "bye".into()).await.unwrap();
    let s = scrape_until(&broker, |s| s.vhost("amqp_broker_connections") == 0.0).await;
    assert_eq!(s.vhost("amqp_broker_connections_opened_total"), 1.0);
    assert_eq!(s.vhost("amqp_broker_connections_closed_total"), 1.0);
    assert_eq!(s.vhost("amqp_broker_channels"), 0.0);
    assert_eq!(s.vhost("amqp_broker_channels_closed_total"), 2.0);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn persisted_confirms_fill_the_confirm_and_sync_histograms() {
    let dir = std::env::temp_dir().join(format!("amqp-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = broker(Some(dir.clone())).await;
    let queue = "kept";
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, queue, true, FieldTable::default()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, queue, 5, b"kept", true).await;

    let text = scrape_text(&broker).await;
    promtool_check(&text);
    let s = parse(&text);
    assert_eq!(s.vhost("amqp_broker_confirm_latency_seconds_count"), 5.0);
    assert_eq!(s.types["amqp_broker_store_sync_seconds"], "histogram");
    // Each confirm waited for a sync (one per publish here, as each waited for the last).
    let syncs = s.value("amqp_broker_store_sync_seconds_count", &[]);
    assert!(syncs >= 5.0, "{syncs} syncs");
    assert!(s.value("amqp_broker_store_sync_seconds_sum", &[]) > 0.0);
    assert_eq!(s.queue("amqp_broker_queue_messages_ready", queue), 5.0);
    assert_eq!(
        s.queue("amqp_broker_queue_messages_ready_bytes", queue),
        20.0
    );
    eprintln!(
        "5 persisted confirms: confirm latency {:.3} ms on average, {syncs} syncs of {:.3} ms",
        s.vhost("amqp_broker_confirm_latency_seconds_sum") * 1e3 / 5.0,
        s.value("amqp_broker_store_sync_seconds_sum", &[]) * 1e3 / syncs,
    );
    conn.close(200, "bye".into()).await.unwrap();
    broker.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn metrics_need_no_credentials_while_the_api_still_does() {
    let broker = broker(None).await;
    let base = broker.management_url().unwrap();
    let client = reqwest::Client::new();
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let wrong = client
        .get(format!("{base}/metrics"))
        .basic_auth("guest", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 200, "credentials are not looked at");
    let api = client
        .get(format!("{base}/api/overview"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    broker.shutdown().await.unwrap();
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{q=\"x\\\"y\"} 3\n";
    assert_eq!(parse(ok).value("a_total", &[("q", "x\"y")]), 3.0);
    for bad in [
        "a_total 3\n",                                            // no TYPE
        "# HELP a_total A.\n# TYPE a_total counter\nb_total 3\n", // outside its family
        "# HELP a A.\n# TYPE a counter\na 3\n",                   // counter without _total
        "# HELP a A.\n# TYPE a gauge\na{q=x} 3\n",                // unquoted label value
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",
    ] {
        let parsed = std::panic::catch_unwind(|| parse(bad));
        assert!(parsed.is_err(), "accepted {bad:?}");
    }
}
