//! Consumer processes for the tests that kill one (SIGKILL) mid-stream: the test starts a binary
//! of this crate (`src/bin/`), reads what it did from its stdout, one line per event, and kills
//! or stops it.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::UnboundedSender;

/// One message of a partitioned stream: the `seq`-th event of `key`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// The partition key.
    pub key: String,
    /// Its position among the key's events, from 0.
    pub seq: u32,
}

/// The next command-line argument, or an error naming it.
pub fn arg(args: &mut impl Iterator<Item = String>, name: &str) -> Result<String, String> {
    args.next()
        .ok_or_else(|| format!("missing argument {name}"))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn wait_for_sigterm() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Every line still to come, once the processes writing to `lines` have exited (up to 5 s).
pub async fn drain(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<(&'static str, String)>,
) -> Vec<(&'static str, String)> {
    let mut rest = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), lines.recv()).await {
        rest.push(line);
    }
    rest
}

/// A running child process; killed if dropped (a failing test leaves none behind).
#[derive(Debug)]
pub struct Process {
    name: &'static str,
    child: tokio::process::Child,
}

impl Process {
    /// Starts `program` with `args`; each stdout line arrives on `lines` as `(name, line)`, in
    /// the order the process wrote them. Its stderr goes to the test's.
    pub fn spawn(
        name: &'static str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        lines: UnboundedSender<(&'static str, String)>,
    ) -> Self {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if lines.send((name, line)).is_err() {
                    break;
                }
            }
        });
        Self { name, child }
    }

    /// The name given at spawn.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// SIGKILL: the process dies at once, without closing anything (the OS closes its sockets).
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits (up to 20 s) for it to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within 20 s of SIGTERM", self.name))
            .expect("wait")
    }
}
