//! One broker per data directory: a second one refuses to start, naming the directory and the
//! holder's pid; the lock goes with the holder, whether it shuts down or is killed with SIGKILL.

mod common;

use common::{broker_command, free_port, sigterm, wait_exit};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amqp-lock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A broker process on `dir`, serving once `TcpStream::connect` succeeds.
fn spawn(dir: &Path) -> (Child, u16) {
    let port = free_port();
    let mut child = broker_command(port, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the broker");
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "broker exited early");
        assert!(Instant::now() < deadline, "broker did not listen in 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

#[test]
fn a_second_binary_on_the_same_data_dir_refuses_naming_the_dir_and_the_pid() {
    let dir = data_dir("bin");
    let (mut first, _) = spawn(&dir);
    let out = broker_command(free_port(), &dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second broker must not start");
    assert!(
        stderr.contains(&dir.display().to_string()),
        "names the directory:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", first.id())),
        "names the holder's pid {}:\n{stderr}",
        first.id()
    );

    // Killed with SIGKILL: the OS drops the lock, so a restart is not blocked by it.
    first.kill().unwrap();
    first.wait().unwrap();
    let (mut second, _) = spawn(&dir);

    // Released on an orderly exit too.
    sigterm(&second);
    assert!(wait_exit(&mut second, Duration::from_secs(10)).success());
    let (mut third, _) = spawn(&dir);
    third.kill().unwrap();
    third.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_embedded_broker_refuses_a_locked_dir_until_the_holder_shuts_down() {
    let dir = data_dir("embedded");
    let first = amqp_broker::Broker::builder()
        .port(0)
        .data_dir(&dir)
        .start()
        .await
        .unwrap();
    let refused = amqp_broker::Broker::builder()
        .port(0)
        .data_dir(&dir)
        .start()
        .await
        .expect_err("the directory is locked");
    match &refused {
        amqp_broker::Error::DataDirLocked { dir: d, pid } => {
            assert_eq!(d, &dir);
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("expected DataDirLocked, got {other}"),
    }
    assert!(refused.to_string().contains("in use by another broker"));
    first.shutdown().await.unwrap();
    let again = amqp_broker::Broker::builder()
        .port(0)
        .data_dir(&dir)
        .start()
        .await
        .expect("free once the holder shut down");
    again.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
