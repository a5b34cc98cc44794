//! The web dashboard's serving: the page and its assets over HTTP, and the auth answer its script
//! gets. (The page itself is tested in headless Chromium by tests/dashboard/run-dashboard-test.sh.)

mod common;

use common::management_broker;
use serde_json::Value;

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_credentials() {
    let broker = management_broker().await;
    let base = broker.management_url().unwrap();
    let client = reqwest::Client::new();
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = page.text().await.unwrap();
    for (asset, content_type, marker) in [
        (
            "/dashboard/dashboard.js",
            "text/javascript; charset=utf-8",
            "/api/overview",
        ),
        (
            "/dashboard/dashboard.css",
            "text/css; charset=utf-8",
            ".chart",
        ),
    ] {
        assert!(html.contains(asset), "the page links {asset}");
        let response = client.get(format!("{base}{asset}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(response.headers()["content-type"], content_type, "{asset}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(response.text().await.unwrap().contains(marker), "{asset}");
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_api_stays_behind_auth_and_spares_scripts_the_browser_dialog() {
    let broker = management_broker().await;
    let url = format!("{}/api/overview", broker.management_url().unwrap());
    let client = reqwest::Client::new();

    let plain = client.get(&url).send().await.unwrap();
    assert_eq!(plain.status(), 401);
    assert!(plain.headers().contains_key("www-authenticate"));

    let from_script = client
        .get(&url)
        .basic_auth("guest", Some("wrong"))
        .header("X-Requested-With", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(from_script.status(), 401);
    assert!(!from_script.headers().contains_key("www-authenticate"));
    let body: Value = from_script.json().await.unwrap();
    assert_eq!(body["error"], "not_authorised");

    let logged_in = client
        .get(&url)
        .basic_auth("guest", Some("guest"))
        .header("X-Requested-With", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(logged_in.status(), 200);
    broker.shutdown().await.unwrap();
}
