//! (in progress)
use std::sync::Arc;
#[derive(Debug)]
pub(crate) struct Vhost { pub name: String }
impl Vhost {
    pub fn new(name: &str) -> Arc<Self> { Arc::new(Self { name: name.into() }) }
    pub fn queue_count(&self) -> usize { 0 }
}
