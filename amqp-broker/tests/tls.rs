//! amqps: the broker's TLS listener with a CA and server certificate made here (rcgen), used by
//! lapin exactly as against RabbitMQ's port 5671; a client that does not trust the CA, plain AMQP
//! on the TLS port and bad PEM files all fail cleanly, and the binary takes `--tls-*` flags.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use amqp_broker::{Broker, Error};
use common::{BIN, consume_no_ack, declare_queue, exclusive};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, DefaultConnectionBuilder};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM files
/// in a fresh directory.
struct Pki {
    dir: PathBuf,
    /// The CA certificate, the one clients must trust.
    ca_pem: String,
    /// The server's certificate chain (leaf, then CA).
    cert: PathBuf,
    /// The server's private key (PKCS#8).
    key: PathBuf,
}

impl Pki {
    fn generate(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("amqp-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "amqp-broker test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        std::fs::write(&cert, format!("{}{}", server.pem(), ca.pem())).unwrap();
        std::fs::write(&key, server_key.serialize_pem()).unwrap();
        Self {
            dir,
            ca_pem: ca.pem(),
            cert,
            key,
        }
    }

    async fn broker(&self) -> Broker {
        Broker::builder()
            .port(0)
            .tls(&self.cert, &self.key)
            .tls_port(0)
            .start()
            .await
            .expect("broker with TLS starts")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// lapin over amqps, trusting `ca_pem` (none: Mozilla's root CAs only).
async fn connect_tls(url: &str, ca_pem: Option<&str>) -> lapin::Result<Connection> {
    DefaultConnectionBuilder::new()?
        .with_uri_str(url.to_owned())
        .with_properties(ConnectionProperties::default())
        .with_tls_config(OwnedTLSConfig {
            identity: None,
            cert_chain: ca_pem.map(str::to_owned),
        })
        .connect()
        .await
}

/// Publishes `count` confirmed messages to a fresh queue and consumes them back.
async fn round_trip(conn: &Connection, count: usize) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = declare_queue(&ch, "", exclusive()).await;
    for i in 0..count {
        ch.basic_publish(
            "".into(),
            queue.name().clone(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            queue.name().clone(),
            "tls".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..count {
        let delivery = consumer.next().await.unwrap().unwrap();
        assert_eq!(delivery.data, format!("m{i}").as_bytes());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
}

#[tokio::test]
async fn lapin_publishes_and_consumes_over_amqps() {
    let pki = Pki::generate("roundtrip");
    let broker = pki.broker().await;
    let url = broker.amqps_url().expect("TLS is configured");
    assert_ne!(broker.tls_port(), Some(broker.port()));
    let conn = connect_tls(&url, Some(&pki.ca_pem)).await.unwrap();
    round_trip(&conn, 100).await;
    // A body larger than one TLS record (16 KiB) and than one frame crosses intact.
    let ch = conn.create_channel().await.unwrap();
    let queue = declare_queue(&ch, "", exclusive()).await;
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    ch.basic_publish(
        "".into(),
        queue.name().clone(),
        BasicPublishOptions::default(),
        &big,
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let mut consumer = consume_no_ack(&ch, queue.name().as_str(), "big").await;
    let delivery = consumer.next().await.unwrap().unwrap();
    assert!(delivery.data == big, "the 1 MB body arrives intact");
    // The plain port serves as before, beside the TLS one.
    let plain = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    round_trip(&plain, 10).await;
    conn.close(200, "bye".into()).await.unwrap();
    plain.close(200, "bye".into()).await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let pki = Pki::generate("untrusted");
    let broker = pki.broker().await;
    let url = broker.amqps_url().unwrap();
    let err = connect_tls(&url, None)
        .await
        .expect_err("the test CA is in no trust store");
    let text = err.to_string();
    assert!(
        text.contains("certificate") && text.contains("UnknownIssuer"),
        "the error says why: {text}"
    );
    // The broker logged the failed handshake and serves the next client.
    let conn = connect_tls(&url, Some(&pki.ca_pem)).await.unwrap();
    round_trip(&conn, 1).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn plain_amqp_on_the_tls_port_is_closed_and_others_are_served() {
    let pki = Pki::generate("plain");
    let broker = pki.broker().await;
    let url = broker.amqps_url().unwrap();
    // A TLS client stays connected throughout.
    let bystander = connect_tls(&url, Some(&pki.ca_pem)).await.unwrap();
    for garbage in [
        &b"AMQP\x00\x00\x09\x01"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
    ] {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", broker.tls_port().unwrap()))
            .await
            .unwrap();
        socket.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        // The broker ends the stream (after a TLS alert): read_to_end returns.
        let _ = socket.read_to_end(&mut answer).await;
        assert!(
            answer.first().is_none_or(|&b| b == 0x15),
            "nothing but a TLS alert record comes back: {answer:?}"
        );
    }
    round_trip(&bystander, 5).await;
    let fresh = connect_tls(&url, Some(&pki.ca_pem)).await.unwrap();
    round_trip(&fresh, 5).await;
    broker.shutdown().await.unwrap();
}

/// `max_connections` counts both listeners: with the only slot taken by a plain client, a TLS
/// client waits (unanswered, as on the plain port), and is served once the slot frees.
#[tokio::test]
async fn both_listeners_share_the_connection_limit() {
    let pki = Pki::generate("limit");
    let broker = Broker::builder()
        .port(0)
        .tls(&pki.cert, &pki.key)
        .tls_port(0)
        .max_connections(1)
        .start()
        .await
        .unwrap();
    let plain = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let url = broker.amqps_url().unwrap();
    let ca = pki.ca_pem.clone();
    let waiting = tokio::spawn(async move { connect_tls(&url, Some(&ca)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "no TLS connection while the only slot is taken"
    );
    plain.close(200, "bye".into()).await.unwrap();
    let tls = waiting.await.unwrap().expect("served once the slot freed");
    round_trip(&tls, 1).await;
    broker.shutdown().await.unwrap();
}

/// The error of starting a broker with these files.
async fn start_error(cert: &Path, key: &Path) -> String {
    let err = Broker::builder()
        .port(0)
        .tls(cert, key)
        .tls_port(0)
        .start()
        .await
        .expect_err("bad TLS files are refused at start");
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    err.to_string()
}

#[tokio::test]
async fn missing_or_bad_pem_files_are_clear_errors_at_start() {
    let pki = Pki::generate("badfiles");
    let missing = pki.dir.join("missing.pem");
    let text = start_error(&missing, &pki.key).await;
    assert!(
        text.contains("missing.pem") && text.contains("No such file"),
        "{text}"
    );

    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let text = start_error(&garbage, &pki.key).await;
    assert!(
        text.contains("garbage.pem") && text.contains("no CERTIFICATE"),
        "{text}"
    );

    // The certificate given as the key: no private key in it.
    let text = start_error(&pki.cert, &pki.cert).await;
    assert!(
        text.contains("server.pem") && text.contains("no private key"),
        "{text}"
    );

    // A key that does not belong to the certificate.
    let other = Pki::generate("badfiles-other");
    let text = start_error(&pki.cert, &other.key).await;
    assert!(
        text.contains(&*other.key.to_string_lossy()) && text.contains("KeyMismatch"),
        "{text}"
    );
}

#[tokio::test]
async fn the_binary_serves_amqps_with_tls_flags() {
    let pki = Pki::generate("binary");
    let port = common::free_port();
    let tls_port = common::free_port();
    let mut child = Command::new(BIN)
        .args(["--port", &port.to_string(), "--no-management"])
        .args(["--tls-port", &tls_port.to_string()])
        .arg("--tls-cert")
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("amqps://guest:guest@localhost:{tls_port}/%2f");
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match connect_tls(&url, Some(&pki.ca_pem)).await {
            Ok(conn) => break conn,
            Err(e) => {
                assert!(child.try_wait().unwrap().is_none(), "broker exited: {e}");
                assert!(Instant::now() < deadline, "no amqps within 10 s: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    round_trip(&conn, 3).await;
    conn.close(200, "bye".into()).await.unwrap();
    common::sigterm(&child);
    assert!(common::wait_exit(&mut child, Duration::from_secs(10)).success());

    // A missing key file: the process exits with a message naming it.
    let out = Command::new(BIN)
        .args(["--port", "0", "--no-management", "--tls-port", "0"])
        .arg("--tls-cert")
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(pki.dir.join("nope.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nope.key"),
        "stderr names the file:\n{stderr}"
    );
}
