//! The tool works: a one-second run against an embedded broker publishes, consumes and prints a
//! JSON report; bad input and an unreachable broker end in a clear error, not a panic or a hang.
//! No figure is asserted beyond "more than zero": timings depend on the machine.

use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// The bundled broker on a free port.
async fn broker() -> amqp_broker::Broker {
    amqp_broker::Broker::builder()
        .port(0)
        .start()
        .await
        .expect("broker")
}

async fn amqp_perf(args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_amqp-perf"))
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("amqp-perf finished within 60 s")
        .expect("amqp-perf started")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_run_publishes_consumes_and_reports_json() {
    let broker = broker().await;
    let url = broker.amqp_url();
    let out = amqp_perf(&[
        "run", "--client", "lapin", "--uri", &url, "-z", "1", "-x", "1", "-y", "1", "-s", "64",
        "-c", "100", "-q", "200", "-A", "20", "--json",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "amqp-perf failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let number = |key: &str| {
        report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key} in {report}"))
    };
    assert!(number("published") > 0.0, "{report}");
    assert!(number("consumed") > 0.0, "{report}");
    assert!(number("confirmed") > 0.0, "{report}");
    assert_eq!(number("nacked"), 0.0, "{report}");
    assert!(number("publish_rate") > 0.0 && number("consume_rate") > 0.0);
    let latency = &report["latency_us"];
    assert!(latency["count"].as_u64().unwrap() > 0, "{report}");
    let (p50, p99, max) = (
        latency["p50"].as_f64().unwrap(),
        latency["p99"].as_f64().unwrap(),
        latency["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{latency}");
    assert!(
        !report["uri"].as_str().unwrap().contains("guest:guest"),
        "the password is not printed"
    );
    assert!(
        report["settings"]
            .as_str()
            .unwrap()
            .contains("lapin client"),
        "{report}"
    );
    broker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_names_every_figure_and_idle_connections_are_held() {
    let broker = broker().await;
    let out = amqp_perf(&[
        "run",
        "--uri",
        &broker.amqp_url(),
        "-z",
        "0.5",
        "--auto-ack",
        "--idle-connections",
        "3",
        "--quiet",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for word in ["published", "consumed", "p99", "3 idle connections"] {
        assert!(stdout.contains(word), "no '{word}' in:\n{stdout}");
    }
    broker.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_body_too_small_for_the_stamp_is_refused() {
    let out = amqp_perf(&["run", "-s", "4", "-z", "1"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--size 4 is too small"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again when the listener drops
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let out = amqp_perf(&["run", "--uri", &uri, "-z", "1"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn compare_refuses_an_unknown_scenario() {
    let out = amqp_perf(&[
        "compare",
        "--scenarios",
        "1,7",
        "--broker-bin",
        "/nonexistent",
    ])
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("there is no scenario 7"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_client_is_the_default_and_publishes_with_confirms_and_consumes_split_bodies() {
    let broker = broker().await;
    // frame_max 4096 with 10 KB bodies: every message is three body frames each way.
    let uri = format!("{}?frame_max=4096", broker.amqp_url());
    let out = amqp_perf(&[
        "run", "--uri", &uri, "-z", "1", "-x", "2", "-y", "2", "-s", "10000", "-c", "50", "-q",
        "100", "-A", "10", "--json",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "amqp-perf failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let number = |key: &str| {
        report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {report}"))
    };
    assert!(number("published") > 0, "{report}");
    assert!(number("consumed") > 0, "{report}");
    assert_eq!(
        number("confirmed"),
        number("published"),
        "all confirmed: {report}"
    );
    assert_eq!(number("nacked"), 0, "{report}");
    assert!(
        report["latency_us"]["count"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        report["settings"].as_str().unwrap().contains("raw client"),
        "{report}"
    );
    broker.shutdown().await.expect("shutdown");
}

/// A raw consumer whose queue is deleted under it ends the run with an error (it asked for
/// `consumer_cancel_notify`), instead of waiting for deliveries that never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_consumer_whose_queue_is_deleted_ends_the_run_with_an_error() {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    let broker = broker().await;
    let url = broker.amqp_url();
    let queue = "amqp-perf-smoke-cancel";
    let run = Command::new(env!("CARGO_BIN_EXE_amqp-perf"))
        .args([
            "run", "--uri", &url, "-u", queue, "-x", "0", "-y", "1", "-z", "60", "--quiet",
        ])
        .kill_on_drop(true)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("amqp-perf started");
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    // Wait (polling, no timing asserted) until the tool's consumer is on the queue; a passive
    // declare of a queue not there yet closes the channel (404), so take a new one then.
    let mut channel = connection.create_channel().await.expect("channel");
    let subscribed = async {
        loop {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match channel
                .queue_declare(queue.into(), passive, Default::default())
                .await
            {
                Ok(q) if q.consumer_count() > 0 => return,
                Ok(_) => {}
                Err(_) => channel = connection.create_channel().await.expect("channel"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), subscribed)
        .await
        .expect("the tool's consumer subscribed within 30 s");
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    let out = tokio::time::timeout(Duration::from_secs(30), run.wait_with_output())
        .await
        .expect("amqp-perf ended well before its 60 s")
        .expect("amqp-perf output");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cancelled the consumer"), "{stderr}");
    broker.shutdown().await.expect("shutdown");
}
