//! The demo's HTTP client: one `POST` with a JSON body over a fresh HTTP/1.1 connection. Enough to
//! call the login service without a client library.

/// Logs in `n` times, round-robin over `users` (name, password); returns each login's id and
/// how long the answer took.
pub async fn log_in(
    addr: SocketAddr,
    users: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<Vec<(String, Duration)>> {
    let mut logins = Vec::new();
    for (user, password) in users.iter().cycle().take(n) {
        let started = Instant::now();
        let body = serde_json::json!({ "user": user, "password": password }).to_string();
        let (status, answer) = post_json(addr, "/login", &body).await?;
        let took = started.elapsed();
        anyhow::ensure!(status == 200, "login of {user}: {status} {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer)?;
        let id = answer["login_id"].as_str().unwrap_or_default().to_owned();
        println!(
            "[web] {user} logged in: HTTP {status} in {:.1} ms",
            took.as_secs_f64() * 1e3
        );
        logins.push((id, took));
    }
    Ok(logins)
}

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Posts `body` as JSON to `path`; returns the status code and the response body.
pub async fn post_json(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}
