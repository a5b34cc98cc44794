//! The bundled broker as the comparison runs it: the `amqp-broker` binary (a release build) on a
//! free port with a fresh temporary `--data-dir`, stopped with SIGTERM and its directory removed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// How long the binary may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `amqp-broker` process.
#[derive(Debug)]
pub struct BundledBroker {
    child: Child,
    pid: u32,
    port: u16,
    data_dir: PathBuf,
}

/// Where the comparison looks for the broker binary by default: beside this one, so that
/// `cargo build --release -p amqp-broker -p amqp-perf` puts both in place.
pub fn default_binary() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    Some(me.parent()?.join("amqp-broker"))
}

impl BundledBroker {
    /// Starts `binary` and waits until it accepts connections.
    pub async fn start(binary: &Path) -> anyhow::Result<Self> {
        if !binary.is_file() {
            anyhow::bail!(
                "no broker binary at {}: build it with `cargo build --release -p amqp-broker`, \
                 or pass --broker-bin",
                binary.display()
            );
        }
        let port = free_port()?;
        let data_dir =
            std::env::temp_dir().join(format!("amqp-perf-broker-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let log = std::fs::File::create(data_dir.join("broker.log"))?;
        let child = Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--management-port",
                "0",
                "--data-dir",
            ])
            .arg(data_dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the broker exited at once")?;
        let mut broker = Self {
            child,
            pid,
            port,
            data_dir,
        };
        broker.wait_ready().await?;
        Ok(broker)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let log =
                    std::fs::read_to_string(self.data_dir.join("broker.log")).unwrap_or_default();
                anyhow::bail!("the broker exited ({status}) before accepting connections:\n{log}");
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("the broker did not accept connections within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its AMQP URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Its process id (for memory and CPU readings).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops it with SIGTERM (SIGKILL after 10 s) and removes its data directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await.ok();
        }
        std::fs::remove_dir_all(&self.data_dir).ok();
        Ok(())
    }
}

/// A port nothing listens on now (the OS picks it; the tiny window before the broker binds it is
/// acceptable for a benchmark).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
