//! File I/O behind a small trait: [`FileStorage`] for the real thing, [`MemStorage`] for tests,
//! which can "crash" at the N-th sync (everything not yet synced is lost) or fail an fsync.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// What the store needs from a file system. Paths are full paths under the data directory.
pub(crate) trait Storage: Send + Sync + fmt::Debug {
    /// The whole file (`NotFound` if it does not exist).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Up to `len` bytes from `offset` (fewer at the end of the file), including bytes appended
    /// but not yet synced: how paged-out message bodies are read back.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Names of the entries of a directory (empty if it does not exist).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new empty file for appending; its directory entry is durable on return.
    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Cuts a file to `len` bytes, durably.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Replaces a file's contents atomically and durably (temp file, fsync, rename, fsync dir).
    fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
}

/// A file open for appending.
pub(crate) trait AppendFile: Send + fmt::Debug {
    /// Appends bytes (they reach the OS, not yet the disk).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FileStorage;

fn sync_dir(dir: &Path) -> io::Result<()> {
    // Directories can be fsynced on Unix; elsewhere renames are durable enough or unsupported.
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or_else(|| Path::new("."))
}

impl Storage for FileStorage {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = File::open(path)?;
        let mut buf = vec![0; len];
        let mut filled = 0;
        while filled < len {
            match read_at(&file, &mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        match fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        sync_dir(parent(dir))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        sync_dir(parent(path))?;
        Ok(Box::new(OsFile { file }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(parent(path))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// A positioned read that leaves no shared file position behind.
#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[derive(Debug)]
struct OsFile {
    file: File,
}

impl AppendFile for OsFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// An in-memory file system for tests. Clones share the same files.
///
/// `crash_at_sync(n)`: the n-th sync (counting from 1) never completes: from then on every
/// operation fails, as if the machine had stopped. [`MemStorage::restart`] then gives what a
/// fresh process would find on disk: each file as of its last completed sync.
/// `fail_sync_at(n)`: the n-th sync reports an error (and nothing else changes).
#[derive(Debug, Default, Clone)]
pub(crate) struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    files: BTreeMap<PathBuf, MemFile>,
    syncs: u64,
    crash_at: Option<u64>,
    fail_at: Option<u64>,
    crashed: bool,
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    /// What reads see now.
    data: Vec<u8>,
    /// How much of `data` survives a crash.
    durable_len: usize,
}

#[allow(dead_code)] // Some helpers exist for tests only.
impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// The n-th sync from now (1 = the next) crashes the "machine".
    pub fn crash_at_sync(&self, n: u64) {
        let mut st = self.state.lock();
        st.crash_at = Some(st.syncs + n);
    }

    /// The n-th sync from now reports an I/O error.
    pub fn fail_sync_at(&self, n: u64) {
        let mut st = self.state.lock();
        st.fail_at = Some(st.syncs + n);
    }

    /// What a new process finds after a crash (or after a clean stop): synced bytes only.
    pub fn restart(&self) -> MemStorage {
        let st = self.state.lock();
        let files = st
            .files
            .iter()
            .map(|(p, f)| {
                let data = f.data[..f.durable_len].to_vec();
                let durable_len = data.len();
                (p.clone(), MemFile { data, durable_len })
            })
            .collect();
        MemStorage {
            state: Arc::new(Mutex::new(MemState {
                files,
                ..MemState::default()
            })),
        }
    }

    /// Files whose path contains `part`, in path order.
    pub fn paths(&self, part: &str) -> Vec<PathBuf> {
        let st = self.state.lock();
        st.files
            .keys()
            .filter(|p| p.to_string_lossy().contains(part))
            .cloned()
            .collect()
    }

    /// Changes a file in place, durably (for corruption tests).
    pub fn edit(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut st = self.state.lock();
        let file = st.files.get_mut(path).expect("file exists");
        f(&mut file.data);
        file.durable_len = file.data.len();
    }

    fn check(st: &MemState) -> io::Result<()> {
        if st.crashed {
            return Err(io::Error::other("the machine crashed"));
        }
        Ok(())
    }
}

impl Storage for MemStorage {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.state.lock();
        Self::check(&st)?;
        st.files
            .get(path)
            .map(|f| f.data.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let st = self.state.lock();
        Self::check(&st)?;
        let data = &st
            .files
            .get(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))?
            .data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(len).min(data.len());
        Ok(data[start..end].to_vec())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        Self::check(&st)?;
        let mut names: Vec<String> = st
            .files
            .keys()
            .filter_map(|p| p.strip_prefix(dir).ok())
            .filter_map(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        names.dedup();
        Ok(names)
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Self::check(&self.state.lock())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut st = self.state.lock();
        Self::check(&st)?;
        if st.files.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                path.display().to_string(),
            ));
        }
        st.files.insert(path.to_owned(), MemFile::default());
        Ok(Box::new(MemAppend {
            storage: self.clone(),
            path: path.to_owned(),
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        Self::check(&st)?;
        let f = st.files.get_mut(path).ok_or(io::ErrorKind::NotFound)?;
        f.data.truncate(len as usize);
        f.durable_len = f.durable_len.min(f.data.len());
        Ok(())
    }

    fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        Self::check(&st)?;
        st.files.insert(
            path.to_owned(),
            MemFile {
                data: bytes.to_vec(),
                durable_len: bytes.len(),
            },
        );
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        Self::check(&st)?;
        st.files
            .remove(path)
            .map(|_| ())
            .ok_or(io::ErrorKind::NotFound.into())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        Self::check(&st)?;
        st.files.retain(|p, _| !p.starts_with(path));
        Ok(())
    }
}

#[derive(Debug)]
struct MemAppend {
    storage: MemStorage,
    path: PathBuf,
}

impl AppendFile for MemAppend {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.storage.state.lock();
        MemStorage::check(&st)?;
        let f = st
            .files
            .get_mut(&self.path)
            .ok_or(io::ErrorKind::NotFound)?;
        f.data.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut st = self.storage.state.lock();
        MemStorage::check(&st)?;
        st.syncs += 1;
        if st.crash_at == Some(st.syncs) {
            st.crashed = true;
            return Err(io::Error::other("the machine crashed during fsync"));
        }
        if st.fail_at == Some(st.syncs) {
            return Err(io::Error::other("injected fsync failure"));
        }
        let f = st
            .files
            .get_mut(&self.path)
            .ok_or(io::ErrorKind::NotFound)?;
        f.durable_len = f.data.len();
        Ok(())
    }
}
