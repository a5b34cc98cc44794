//! Helpers for the tests that run the `amqp-broker` binary (each such file has `mod common;`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A port free at the moment (the broker binary is told it with `--port`).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The broker process's exit status; kills it and fails the test if it runs past `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("broker did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
