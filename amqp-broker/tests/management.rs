//! The management HTTP API through a real HTTP client: authentication and the overview.

mod common;

use amqp_broker::Broker;
use common::management_broker;
use serde_json::Value;

#[tokio::test]
async fn overview_answers_an_authenticated_user() {
    let broker = management_broker().await;
    let url = format!("{}/api/overview", broker.management_url().unwrap());
    let response = reqwest::Client::new()
        .get(&url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["product_name"], "amqp-broker");
    assert_eq!(body["listeners"][0]["protocol"], "amqp");
    assert_eq!(body["listeners"][0]["port"], broker.port());
    assert_eq!(body["object_totals"]["connections"], 0);
    let whoami: Value = reqwest::Client::new()
        .get(format!("{}/api/whoami", broker.management_url().unwrap()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["name"], "guest");
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401_with_a_challenge() {
    let broker = management_broker().await;
    let url = format!("{}/api/overview", broker.management_url().unwrap());
    let client = reqwest::Client::new();
    for request in [
        client.get(&url),
        client.get(&url).basic_auth("guest", Some("wrong")),
        client
            .get(&url)
            .header("Authorization", "Basic !!not-base64!!"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"RabbitMQ Management\""
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_authorised");
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_management_port_unless_asked_for() {
    let broker = Broker::builder().port(0).start().await.unwrap();
    assert_eq!(broker.management_port(), None);
    broker.shutdown().await.unwrap();
}
