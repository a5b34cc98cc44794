//! The data directory's lock: one broker per `--data-dir`.
//!
//! Two brokers appending to the same segment files would interleave records and corrupt each
//! other's logs, so the store takes an exclusive OS file lock (`flock` on Unix, `LockFileEx` on
//! Windows) on `<data dir>/lock` before it reads anything. The OS drops the lock when the holder
//! exits, however it exits, so a broker killed with `kill -9` never blocks the next start: no
//! stale-lock clean-up is needed. The holder writes its pid into the file, only so that a second
//! broker can say who holds the directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;

/// The lock file's name inside the data directory.
pub(crate) const LOCK_FILE: &str = "lock";

/// Another process holds the data directory.
#[derive(Debug)]
pub(crate) struct Locked {
    /// The data directory.
    pub dir: PathBuf,
    /// The holder's pid, as it wrote it (absent if it had not written it yet).
    pub pid: Option<u32>,
}

/// Holds the data directory until dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    /// Kept open: closing it releases the lock.
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another process holds it.
    Locked(Locked),
    /// The lock file could not be opened or written.
    Io(io::Error),
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist) without waiting.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LockError::Io)?;
        if let Err(e) = file.try_lock_exclusive() {
            if e.kind() != fs2::lock_contended_error().kind() {
                return Err(LockError::Io(e));
            }
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(LockError::Locked(Locked {
                dir: dir.to_owned(),
                pid,
            }));
        }
        file.set_len(0).map_err(LockError::Io)?;
        file.seek(SeekFrom::Start(0)).map_err(LockError::Io)?;
        writeln!(file, "{}", std::process::id()).map_err(LockError::Io)?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("amqp-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let dir = temp_dir("second");
        let first = DirLock::acquire(&dir).expect("first lock");
        match DirLock::acquire(&dir) {
            Err(LockError::Locked(l)) => {
                assert_eq!(l.dir, dir);
                assert_eq!(l.pid, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        DirLock::acquire(&dir).expect("free again once dropped");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
