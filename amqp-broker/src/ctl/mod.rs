//! `amqp-broker ctl`: what `rabbitmqctl` users reach for (listing queues, exchanges, bindings
//! and connections, closing a connection, purging and deleting a queue), speaking the
//! management HTTP API of a running broker. Part of the binary, not of the library.
//!
//! Listings print a header line and one tab-separated line per object on stdout, as
//! `rabbitmqctl` does; `--json` prints a JSON array instead. Progress lines ("Listing queues
//! ...") go to stderr so that stdout stays parseable.

mod http;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use amqp_broker::encode_path_segment;

use self::http::Client;

/// Options of `amqp-broker ctl`.
#[derive(Debug, Args)]
pub struct Ctl {
    /// Base URL of the broker's management API.
    #[arg(long, default_value = "http://127.0.0.1:15672", global = true)]
    url: String,
    /// User to authenticate as.
    #[arg(long, default_value = "guest", global = true)]
    user: String,
    /// Its password.
    #[arg(long, default_value = "guest", global = true)]
    password: String,
    /// Print listings as a JSON array of objects.
    #[arg(long, global = true)]
    json: bool,
    /// Virtual host (as `rabbitmqctl -p`).
    #[arg(short = 'p', long, default_value = "/", global = true)]
    vhost: String,
    #[command(subcommand)]
    command: Command,
}

/// The verbs, named as `rabbitmqctl`'s.
#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
enum Command {
    /// Queues: name and messages by default, or the columns given (any field of
    /// /api/queues: messages_ready, messages_unacknowledged, consumers, durable, ...).
    ListQueues { columns: Vec<String> },
    /// Exchanges: name and type by default, or the columns given.
    ListExchanges { columns: Vec<String> },
    /// Bindings: source_name, source_kind, destination_name, destination_kind, routing_key,
    /// arguments by default, or the columns given.
    ListBindings { columns: Vec<String> },
    /// Connections: name, user, peer_host, peer_port, state by default, or the columns given.
    ListConnections { columns: Vec<String> },
    /// Closes a connection (named as list_connections shows it) with 320 CONNECTION_FORCED.
    CloseConnection {
        name: String,
        /// The reason the client is told (default: "Closed via management plugin").
        reason: Option<String>,
    },
    /// Drops a queue's ready messages.
    PurgeQueue { name: String },
    /// Deletes a queue.
    DeleteQueue {
        name: String,
        /// Only if it has no messages.
        #[arg(short = 'e', long = "if-empty")]
        if_empty: bool,
        /// Only if it has no consumers.
        #[arg(short = 'u', long = "if-unused")]
        if_unused: bool,
    },
}

impl Ctl {
    /// Runs the command; an error says what went wrong (the API's reason included).
    pub async fn run(self) -> anyhow::Result<()> {
        let client = Client::new(&self.url, &self.user, &self.password)?;
        let vhost = encode_path_segment(&self.vhost);
        match &self.command {
            Command::ListQueues { columns } => {
                eprintln!("Listing queues for vhost {} ...", self.vhost);
                let list = get(&client, &format!("/api/queues/{vhost}")).await?;
                self.print(&list, columns, &["name", "messages"], |row, c| {
                    row.get(c).cloned()
                });
            }
            Command::ListExchanges { columns } => {
                eprintln!("Listing exchanges for vhost {} ...", self.vhost);
                let list = get(&client, &format!("/api/exchanges/{vhost}")).await?;
                self.print(&list, columns, &["name", "type"], |row, c| {
                    row.get(c).cloned()
                });
            }
            Command::ListBindings { columns } => {
                eprintln!("Listing bindings for vhost {} ...", self.vhost);
                let list = get(&client, &format!("/api/bindings/{vhost}")).await?;
                let defaults = [
                    "source_name",
                    "source_kind",
                    "destination_name",
                    "destination_kind",
                    "routing_key",
                    "arguments",
                ];
                self.print(&list, columns, &defaults, binding_column);
            }
            Command::ListConnections { columns } => {
                eprintln!("Listing connections ...");
                let list = get(&client, "/api/connections").await?;
                let defaults = ["name", "user", "peer_host", "peer_port", "state"];
                self.print(&list, columns, &defaults, |row, c| row.get(c).cloned());
            }
            Command::CloseConnection { name, reason } => {
                eprintln!("Closing connection {name} ...");
                let path = format!("/api/connections/{}", encode_path_segment(name));
                // Without a reason the broker says "Closed via management plugin".
                let headers: Vec<_> = reason.iter().map(|r| ("X-Reason", r.as_str())).collect();
                call(&client, "DELETE", &path, &headers).await?;
            }
            Command::PurgeQueue { name } => {
                eprintln!("Purging queue '{name}' in vhost '{}' ...", self.vhost);
                let path = format!("/api/queues/{vhost}/{}/contents", encode_path_segment(name));
                call(&client, "DELETE", &path, &[]).await?;
            }
            Command::DeleteQueue {
                name,
                if_empty,
                if_unused,
            } => {
                eprintln!("Deleting queue '{name}' on vhost '{}' ...", self.vhost);
                let path = format!(
                    "/api/queues/{vhost}/{}?if-empty={if_empty}&if-unused={if_unused}",
                    encode_path_segment(name)
                );
                call(&client, "DELETE", &path, &[]).await?;
            }
        }
        Ok(())
    }

    /// Prints `list` with `columns` (or `defaults`), each read from a row by `column`.
    fn print(
        &self,
        list: &Value,
        columns: &[String],
        defaults: &[&str],
        column: impl Fn(&Value, &str) -> Option<Value>,
    ) {
        let columns: Vec<&str> = if columns.is_empty() {
            defaults.to_vec()
        } else {
            columns.iter().map(String::as_str).collect()
        };
        let rows = list.as_array().map(Vec::as_slice).unwrap_or_default();
        if self.json {
            let out: Vec<Value> = rows
                .iter()
                .map(|row| {
                    let fields: Map<String, Value> = columns
                        .iter()
                        .map(|c| ((*c).to_owned(), column(row, c).unwrap_or(Value::Null)))
                        .collect();
                    Value::Object(fields)
                })
                .collect();
            println!("{}", Value::Array(out));
            return;
        }
        println!("{}", columns.join("\t"));
        for row in rows {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| cell(column(row, c).as_ref()))
                .collect();
            println!("{}", cells.join("\t"));
        }
    }
}

/// A binding's field under `rabbitmqctl list_bindings`' column names.
fn binding_column(row: &Value, column: &str) -> Option<Value> {
    match column {
        "source_name" => row.get("source").cloned(),
        "source_kind" => Some(Value::from("exchange")),
        "destination_name" => row.get("destination").cloned(),
        "destination_kind" => row.get("destination_type").cloned(),
        other => row.get(other).cloned(),
    }
}

/// A value as one tab-separated cell: strings bare, absent values empty, the rest as JSON
/// (`rabbitmqctl` prints tables as `[]` too).
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.replace(['\t', '\n'], " "),
        Some(Value::Object(m)) if m.is_empty() => "[]".to_owned(),
        Some(other) => other.to_string(),
    }
}

async fn get(client: &Client, path: &str) -> anyhow::Result<Value> {
    call(client, "GET", path, &[]).await
}

/// One request; a status other than 2xx is an error carrying the API's reason.
async fn call(
    client: &Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let answer = client.request(method, path, headers).await?;
    if (200..300).contains(&answer.status) {
        return Ok(answer.body);
    }
    let reason = answer
        .body
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    let error = answer
        .body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("error");
    bail!("{method} {path}: {} {error}: {reason}", answer.status)
}
