//! What the comparison reads about a broker process from the operating system (Linux `/proc`):
//! resident memory and CPU time; and where RabbitMQ's process is.

use std::path::Path;

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on every Linux this runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// The resident set size of `pid`, in bytes (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/status: {e}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unreadable VmRSS line '{line}'"))?;
    Ok(kib * 1024)
}

/// CPU seconds (user + system) `pid` has used so far; `None` when unreadable.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // state (3), …, utime (14), stime (15).
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// The pid of RabbitMQ's Erlang VM (`beam.smp`) on this machine, if there is exactly one.
pub fn rabbitmq_pid() -> Option<u32> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "beam.smp" && is_rabbitmq(&entry.path()) {
            if found.is_some() {
                return None;
            }
            found = Some(pid);
        }
    }
    found
}

fn is_rabbitmq(proc_dir: &Path) -> bool {
    std::fs::read(proc_dir.join("cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("rabbit"))
        .unwrap_or(false)
}

/// RabbitMQ's own accounting of memory held by connections (the `connection_*` lines of
/// `rabbitmq-diagnostics memory_breakdown`), in bytes; `None` when the tool is not available.
pub async fn rabbitmq_connection_memory() -> Option<u64> {
    let output = tokio::process::Command::new("rabbitmq-diagnostics")
        .args(["-q", "memory_breakdown", "--unit", "bytes"])
        .output()
        .await
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(parse_connection_memory(&String::from_utf8_lossy(
        &output.stdout,
    )))
}

/// How many more sockets RabbitMQ will accept (`Sockets: USED, limit: LIMIT` in
/// `rabbitmq-diagnostics status`; the limit follows its `ulimit -n`); `None` when unknown.
pub async fn rabbitmq_free_sockets() -> Option<u64> {
    let output = tokio::process::Command::new("rabbitmq-diagnostics")
        .args(["-q", "status"])
        .output()
        .await
        .ok()?;
    parse_free_sockets(&String::from_utf8_lossy(&output.stdout))
}

fn parse_free_sockets(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Sockets:"))?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().ok());
    let used = numbers.next()??;
    let limit = numbers.next()??;
    Some(limit.saturating_sub(used))
}

fn parse_connection_memory(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("connection_"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// The load average over the last minute (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_secs(me).is_some());
    }

    #[test]
    fn connection_lines_of_a_memory_breakdown_are_summed() {
        let text = "code: 31311478 bytes (24.87%)\n\
                    connection_readers: 1000 bytes (0.0%)\n\
                    connection_writers: 200 bytes (0.0%)\n\
                    connection_channels: 30 bytes (0.0%)\n\
                    connection_other: 4 bytes (0.0%)\n\
                    queue_procs: 0 bytes (0.0%)\n";
        assert_eq!(parse_connection_memory(text), 1234);
    }

    #[test]
    fn free_sockets_are_the_limit_less_those_used() {
        let text = "File Descriptors\n\nTotal: 6, limit: 927\nSockets: 12, limit: 832\n";
        assert_eq!(parse_free_sockets(text), Some(820));
        assert_eq!(parse_free_sockets("nothing"), None);
    }
}
