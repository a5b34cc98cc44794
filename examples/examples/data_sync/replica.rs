//! A listener's copy of the catalog: the newest version it has applied of each product, kept in
//! a JSON file next to what it generates. A deleted product stays as a tombstone (its version,
//! no product), so that an older event arriving late (a redelivery after a broker restart, say)
//! is recognised as older and cannot overwrite a newer page or bring a deleted one back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Product, ProductChanged};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Replica {
    entries: BTreeMap<i64, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    version: i64,
    /// `None`: deleted.
    product: Option<Product>,
}

impl Replica {
    /// The replica saved at `path`, or an empty one if there is none yet.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Saves it whole (written aside, then renamed over the old file).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        write_atomically(path, &serde_json::to_vec_pretty(self)?)
    }

    /// Applies a change if it is newer than what this replica has; returns whether it was.
    pub fn apply(&mut self, change: &ProductChanged) -> bool {
        let (id, version) = (change.id(), change.version());
        if self.entries.get(&id).is_some_and(|e| e.version >= version) {
            return false;
        }
        let product = match change {
            ProductChanged::Saved(p) => Some(p.clone()),
            ProductChanged::Deleted { .. } => None,
        };
        self.entries.insert(id, Entry { version, product });
        true
    }

    /// The products that exist, by id.
    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.entries.values().filter_map(|e| e.product.as_ref())
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so that a reader
/// (or a crash) never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Applies `change` to the replica in `slot` if it is newer, then runs `write` (which updates the
/// generated files from the new replica). The new replica is saved to `state_file` and kept only
/// if `write` succeeded, so a failed write is retried in full on redelivery. Returns whether the
/// change was new.
pub fn apply_with(
    slot: &Mutex<Replica>,
    state_file: &Path,
    change: &ProductChanged,
    write: impl FnOnce(&Replica) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let mut replica = slot.lock().expect("not poisoned");
    let mut next = replica.clone();
    if !next.apply(change) {
        return Ok(false);
    }
    write(&next)?;
    next.save(state_file)?;
    *replica = next;
    Ok(true)
}
