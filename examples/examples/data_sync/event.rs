//! The event the product service publishes, one per change, through the outbox.

use serde::{Deserialize, Serialize};

/// A product, as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    /// 1 when created, one more at each change.
    pub version: i64,
}

/// The event: the product as saved, or its deletion (with the version after its last one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ProductChanged {
    Saved(Product),
    Deleted { id: i64, version: i64 },
}

impl ProductChanged {
    pub fn id(&self) -> i64 {
        match self {
            ProductChanged::Saved(p) => p.id,
            ProductChanged::Deleted { id, .. } => *id,
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            ProductChanged::Saved(p) => p.version,
            ProductChanged::Deleted { version, .. } => *version,
        }
    }

    pub(crate) fn into_product(self) -> Option<Product> {
        match self {
            ProductChanged::Saved(p) => Some(p),
            ProductChanged::Deleted { .. } => None,
        }
    }
}
