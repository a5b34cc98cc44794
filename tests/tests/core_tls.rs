//! amqp-core over `amqps://`: a Template and a listener through the bundled broker's TLS port,
//! trusting a CA made here (rcgen) with `ConnectionFactory::tls_ca_pem` / `tls_ca_file` and
//! `App::tls_ca_file`; without the CA the connection fails with the certificate error, and a CA
//! file without a certificate is refused before connecting.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use amqp_broker::Broker;
use amqp_core::{App, ConnectionFactory, Error, Listener, ListenerError, Queue, rabbit_listener};
use common::within;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde::{Deserialize, Serialize};
use tests::unique;
use tokio::sync::mpsc;

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM files
/// in a fresh directory (the same as amqp-broker's tests/tls.rs makes).
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn generate(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("amqp-core-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "amqp-core test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let (ca_file, cert, key) = (
            dir.join("ca.pem"),
            dir.join("server.pem"),
            dir.join("server.key"),
        );
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(&cert, server.pem()).unwrap();
        std::fs::write(&key, server_key.serialize_pem()).unwrap();
        Self {
            dir,
            ca_pem: ca.pem(),
            ca_file,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
}

#[tokio::test]
async fn template_and_listener_work_over_amqps() {
    let pki = Pki::generate("template");
    let broker = pki.broker().await;
    let url = broker.amqps_url().unwrap();
    let conn = within(
        "connect over amqps",
        ConnectionFactory::new(&url)
            .tls_ca_pem(&pki.ca_pem)
            .connect(),
    )
    .await
    .expect("amqp-core connects over TLS");
    let queue = unique("core.tls.orders");
    conn.declare(Queue::transient(&queue)).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = Listener::on(&queue)
        .handler(move |order: Order| {
            let tx = tx.clone();
            async move {
                tx.send(order.id).ok();
                Ok::<_, ListenerError>(())
            }
        })
        .start(&conn)
        .await
        .unwrap();
    let template = amqp_core::Template::new(conn.clone());
    for id in 0..20 {
        template
            .convert_and_send("", &queue, &Order { id })
            .await
            .expect("confirmed over TLS");
    }
    for id in 0..20 {
        assert_eq!(within("a delivery", rx.recv()).await, Some(id));
    }
    // The broker lists it like any other connection.
    assert_eq!(broker.connections().len(), 1);
    listener.shutdown().await;
    conn.close().await;
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_the_ca_the_certificate_error_is_reported() {
    let pki = Pki::generate("untrusted");
    let broker = pki.broker().await;
    let err = ConnectionFactory::new(broker.amqps_url().unwrap())
        .unreachable_after(Duration::from_millis(500))
        .connect()
        .await
        .expect_err("the test CA is trusted nowhere");
    let Error::Unreachable { last_error, .. } = &err else {
        panic!("expected Unreachable, got {err:?}");
    };
    assert!(
        last_error.contains("invalid peer certificate") && last_error.contains("UnknownIssuer"),
        "{err}"
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_ca_file_without_a_certificate_is_refused_before_connecting() {
    let pki = Pki::generate("badca");
    let err = ConnectionFactory::new("amqps://guest:guest@127.0.0.1:1/%2f")
        .tls_ca_file(&pki.key)
        .expect_err("a key is not a CA certificate");
    assert!(
        matches!(&err, Error::Configuration(m) if m.contains("server.key") && m.contains("no CERTIFICATE")),
        "{err}"
    );
    let err = ConnectionFactory::new("amqps://guest:guest@127.0.0.1:1/%2f")
        .tls_ca_file(pki.dir.join("absent.pem"))
        .expect_err("no such file");
    assert!(
        matches!(&err, Error::Configuration(m) if m.contains("absent.pem")),
        "{err}"
    );
    let err = ConnectionFactory::new("amqps://guest:guest@127.0.0.1:1/%2f")
        .tls_ca_pem("not a certificate")
        .connect()
        .await
        .expect_err("checked before connecting");
    assert!(matches!(&err, Error::Configuration(_)), "{err}");
}

#[rabbit_listener(queue = "core.tls.app", durable = false, auto_delete = true)]
async fn on_tls_app(order: Order) {
    let _ = order;
}

#[tokio::test]
async fn an_app_trusts_the_ca_file_it_is_given() {
    let pki = Pki::generate("app");
    let broker = pki.broker().await;
    let app = within(
        "the app starts over amqps",
        App::new()
            .url(broker.amqps_url().unwrap())
            .tls_ca_file(&pki.ca_file)
            .listeners(["on_tls_app"])
            .start(),
    )
    .await
    .expect("the app connects with the CA file");
    app.template()
        .convert_and_send("", "core.tls.app", &Order { id: 1 })
        .await
        .expect("confirmed over TLS");
    assert!(app.connection().is_connected());
    app.shutdown().await;
    broker.shutdown().await.unwrap();
}
