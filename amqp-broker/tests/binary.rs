//! The `amqp-broker` binary as DESIGN.md's contract describes it: `--port`, `--data-dir`, logs to
//! stderr, serves AMQP within a second or two, exits cleanly on SIGTERM, and names the port when
//! it is taken.

mod common;

use common::{BIN, broker_command, free_port, non_loopback_ip, sigterm, wait_exit};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Connects and reads the start of `connection.start` after sending the protocol header.
fn speaks_amqp(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut head = [0u8; 11];
    // Method frame (1) on channel 0 carrying class 10, method 10: connection.start.
    s.read_exact(&mut head).is_ok() && head[0] == 1 && head[7..11] == [0, 10, 0, 10]
}

fn wait_until_serving(child: &mut Child, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !speaks_amqp(port) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "broker exited before serving"
        );
        assert!(
            Instant::now() < deadline,
            "broker did not serve AMQP on {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serves_amqp_and_exits_cleanly_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("amqp-broker-bin-{}", std::process::id()));
    let port = free_port();
    let mut child = broker_command(port, &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_serving(&mut child, port);
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit status {status}, stderr:\n{stderr}");
    assert!(stderr.contains("listening"), "logs go to stderr:\n{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_port_in_use_is_an_error_naming_the_port() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["--port", &port.to_string(), "--management-port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&port.to_string()),
        "stderr names the port:\n{stderr}"
    );
}

#[test]
fn users_from_the_command_line_replace_guest() {
    // --user is parsed; a malformed one is refused with a message.
    let out = Command::new(BIN)
        .args(["--user", "no-colon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME:PASSWORD"));
}

#[test]
fn help_describes_the_options() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port",
        "--bind",
        "--data-dir",
        "--user",
        "--loopback-users",
        "--definitions",
        "--max-message-bytes",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}:\n{help}");
    }
}

/// Logs in with lapin; the error's text when refused.
fn login(url: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    })
}

#[test]
fn definitions_and_loopback_users_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("amqp-broker-bin-defs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("definitions.json");
    // RabbitMQ's hash of the password "guest".
    std::fs::write(
        &file,
        r#"{"users": [{"name": "bin-user", "password_hash": "MP8P3KWPS1jzFFh7FA6imL+7V9AvKLpVKuw/bcBgMRTD8/o7",
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}],
            "permissions": [{"user": "bin-user", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]}"#,
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "--port",
            &port.to_string(),
            "--no-management",
            "--bind",
            "0.0.0.0",
        ])
        .arg("--definitions")
        .arg(&file)
        // Without a value: no loopback-only users, guest may log in from anywhere.
        .arg("--loopback-users")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_serving(&mut child, port);
    login(&format!("amqp://bin-user:guest@127.0.0.1:{port}/%2f")).expect("imported user");
    let host = non_loopback_ip().map_or("127.0.0.1".to_owned(), |ip| ip.to_string());
    login(&format!("amqp://guest:guest@{host}:{port}/%2f")).expect("guest from anywhere");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());

    // A definitions file that is not one: the broker does not start, and says why.
    std::fs::write(&file, "{not json").unwrap();
    let out = Command::new(BIN)
        .args(["--port", &free_port().to_string(), "--no-management"])
        .arg("--definitions")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("definitions.json") && stderr.contains("invalid definitions"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
