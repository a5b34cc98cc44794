//! The `amqp-broker` binary as DESIGN.md's contract describes it: `--port`, `--data-dir`, logs to
//! stderr, serves AMQP within a second or two, exits cleanly on SIGTERM, and names the port when
//! it is taken.

mod common;

use common::{free_port, wait_exit};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_amqp-broker");

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

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn serves_amqp_and_exits_cleanly_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("amqp-broker-bin-{}", std::process::id()));
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "--port",
            &port.to_string(),
            "--management-port",
            "0",
            "--data-dir",
        ])
        .arg(&dir)
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
        "--max-message-bytes",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}:\n{help}");
    }
}
