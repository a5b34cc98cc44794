//! A minimal HTTP/1.1 client for the management API: one request per connection
//! (`Connection: close`), plain `http://` only, no request bodies, JSON answers. Enough for `ctl`, without
//! giving the broker's library users an HTTP client dependency.

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the API is and who to authenticate as.
#[derive(Debug)]
pub struct Client {
    /// `host:port`.
    authority: String,
    /// Path prefix from the URL (usually empty).
    prefix: String,
    /// `Basic ...`.
    authorization: String,
}

/// An answer: status code and the body parsed as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// A client for `url` (`http://host:port[/prefix]`).
    pub fn new(url: &str, user: &str, password: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs are supported, got '{url}'"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("no host in '{url}'");
        }
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Self {
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
            authorization: format!("Basic {credentials}"),
        })
    }

    /// Sends one request without a body; `path` starts with `/api/`, its segments already encoded.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot reach the management API at {}", self.authority))?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.prefix, self.authority, self.authorization,
        );
        for (name, value) in headers {
            if value.contains(['\r', '\n']) {
                bail!("header {name} must be one line");
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
    }
}

/// Splits a whole response (the server closed the connection after it) into status and
/// JSON body, undoing chunked transfer encoding.
fn parse_response(raw: &[u8]) -> anyhow::Result<Answer> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete HTTP response"))?;
    let head = std::str::from_utf8(&raw[..end]).context("HTTP head is not text")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let mut body = &raw[end + 4..];
    let decoded;
    if chunked {
        decoded = dechunk(body)?;
        body = &decoded;
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body).context("the answer is not JSON")?
    };
    Ok(Answer { status, body })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("malformed chunk"))?;
        let size = std::str::from_utf8(&data[..line_end])?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("malformed chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n[1,2,3]";
        let a = parse_response(plain).unwrap();
        assert_eq!((a.status, a.body), (200, serde_json::json!([1, 2, 3])));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let a = parse_response(chunked).unwrap();
        assert_eq!((a.status, a.body), (404, serde_json::json!({"a": 1})));
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_response(empty).unwrap().body, Value::Null);
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn urls() {
        assert!(Client::new("https://h:1", "u", "p").is_err());
        let c = Client::new("http://127.0.0.1:15672/", "u", "p").unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("127.0.0.1:15672", "")
        );
    }
}
