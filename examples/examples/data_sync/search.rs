//! The search index: one JSON file with every product and, for each word of their names, the
//! ids of the products whose name has it. Kept in sync by its own listener and queue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::replica::{Replica, apply_with, write_atomically};
use super::{Product, ProductChanged};

/// The file's content.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexFile {
    pub products: BTreeMap<i64, Product>,
    pub words: BTreeMap<String, Vec<i64>>,
}

impl IndexFile {
    fn build<'a>(products: impl Iterator<Item = &'a Product>) -> Self {
        let mut index = IndexFile {
            products: BTreeMap::new(),
            words: BTreeMap::new(),
        };
        for p in products {
            for word in p
                .name
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                index
                    .words
                    .entry(word.to_lowercase())
                    .or_default()
                    .push(p.id);
            }
            index.products.insert(p.id, p.clone());
        }
        index
    }

    /// Reads the index in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(
            dir.join("search-index.json"),
        )?)?)
    }

    /// The products whose name has `word`.
    pub fn search(&self, word: &str) -> Vec<&Product> {
        let ids = self
            .words
            .get(&word.to_lowercase())
            .map(Vec::as_slice)
            .unwrap_or_default();
        ids.iter().filter_map(|id| self.products.get(id)).collect()
    }
}

/// The index's folder and its replica.
#[derive(Debug)]
pub struct SearchIndex {
    dir: PathBuf,
    replica: Mutex<Replica>,
}

impl SearchIndex {
    pub fn open(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let replica = Mutex::new(Replica::load(&dir.join(".replica.json"))?);
        Ok(Self { dir, replica })
    }

    /// Rewrites the index with the change, unless it is older than what the index has.
    pub fn apply(&self, change: &ProductChanged) -> anyhow::Result<bool> {
        apply_with(
            &self.replica,
            &self.dir.join(".replica.json"),
            change,
            |replica| {
                let json = serde_json::to_vec_pretty(&IndexFile::build(replica.products()))?;
                write_atomically(&self.dir.join("search-index.json"), &json)
            },
        )
    }
}

/// Whether the index in `dir` has exactly `products`.
pub fn check(dir: &Path, products: &[Product]) -> Result<(), String> {
    let index = IndexFile::read(dir).map_err(|e| format!("search index: {e}"))?;
    match index == IndexFile::build(products.iter()) {
        true => Ok(()),
        false => Err(format!(
            "search index has {} products, not the catalog's {}",
            index.products.len(),
            products.len()
        )),
    }
}
