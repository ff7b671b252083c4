//! One client's statement names, each mapped to the proxy-wide statement it prepared.
//!
//! May import: [`super`] and [`crate::wire`] (the errors a Parse is refused with).

use super::{NameMap, Statement, MAX_PER_CLIENT};
use std::sync::Arc;

/// One client's statement names. The map is boxed and made at the first name: most clients
/// name none, and every idle client keeps this (8 B instead of a 48 B empty map).
#[derive(Debug, Default)]
pub struct ClientStatements {
    // The extra allocation is the point: 8 B inline until a client names a statement.
    #[allow(clippy::box_collection)]
    map: Option<Box<NameMap<Vec<u8>, Arc<Statement>>>>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.map.as_ref()?.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.map.as_ref().is_some_and(|m| m.contains_key(name))
    }

    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn insert(&mut self, name: Vec<u8>, s: Arc<Statement>) {
        self.map.get_or_insert_default().insert(name, s);
    }

    /// Why the client may not prepare `name` now: it exists (42P05, as Postgres says), or
    /// the client holds [`MAX_PER_CLIENT`] statements already (53400).
    pub fn refuse_parse(&self, name: &[u8]) -> Option<crate::wire::messages::PgError> {
        use crate::wire::messages::PgError;
        if self.contains(name) {
            return Some(PgError::error(
                "42P05",
                format!("prepared statement \"{}\" already exists", String::from_utf8_lossy(name)),
            ));
        }
        (self.len() >= MAX_PER_CLIENT).then(|| {
            PgError::error(
                "53400",
                format!(
                    "pgsidecar: this connection holds {MAX_PER_CLIENT} prepared statements, the most it may"
                ),
            )
            .with_hint("close statements the application no longer uses")
        })
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.take(name).is_some()
    }

    pub fn take(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.map.as_mut()?.remove(name)
    }

    pub fn clear(&mut self) {
        if let Some(m) = &mut self.map {
            m.clear();
        }
    }

    /// Every name and its statement (the client's map is left as it is).
    pub fn into_entries(self) -> impl Iterator<Item = (Vec<u8>, Arc<Statement>)> {
        self.map.into_iter().flat_map(|m| m.into_iter())
    }
}
