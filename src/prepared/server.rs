//! The statement instances one server connection holds: found by name, or by text and shape
//! for a client whose own instance the server lacks; least recently used evicted past the
//! capacity, and retired when a newer instance of the same text and shape is described.
//!
//! May import: [`super`] only.

use super::NameMap;
use std::sync::Arc;

/// An instance of a statement on a server.
#[derive(Debug)]
struct Instance {
    tick: u64,
    base: Arc<str>,
    /// The fingerprint of its shape (0 until its Describe is answered).
    shape: u64,
}

/// The statement instances one server holds, least recently used first out.
#[derive(Debug)]
pub struct ServerStatements {
    used: NameMap<Arc<str>, Instance>,
    /// The instances of each base name.
    bases: NameMap<Arc<str>, Vec<Arc<str>>>,
    tick: u64,
    capacity: usize,
    /// Evicted statements still to be closed on the server.
    pub to_close: Vec<Arc<str>>,
}

impl ServerStatements {
    pub fn new(capacity: usize) -> Self {
        ServerStatements {
            used: NameMap::default(),
            bases: NameMap::default(),
            tick: 0,
            capacity: capacity.max(1),
            to_close: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// Whether the server holds `name`; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.used.get_mut(name) {
            Some(i) => {
                i.tick = self.tick;
                true
            }
            None => false,
        }
    }

    /// An instance of `base` whose shape has fingerprint `shape` (with 0, any instance), the
    /// most recently used first; marks it used.
    pub fn find(&mut self, base: &str, shape: u64) -> Option<Arc<str>> {
        let names = self.bases.get(base)?;
        let best = names
            .iter()
            .filter_map(|n| self.used.get(n).map(|i| (n, i)))
            .filter(|(_, i)| if shape == 0 { true } else { i.shape == shape })
            .max_by_key(|(_, i)| i.tick)
            .map(|(n, _)| n.clone())?;
        self.touch(&best);
        Some(best)
    }

    /// Records that `name`, an instance of `base`, is being prepared; evicts the least
    /// recently used beyond capacity.
    pub fn insert(&mut self, name: Arc<str>, base: Arc<str>) {
        // A name still waiting in `to_close` exists on the server: it is closed before being
        // prepared again, in the same batch.
        self.tick += 1;
        self.bases.entry(base.clone()).or_default().push(name.clone());
        if let Some(old) = self.used.insert(name.clone(), Instance { tick: self.tick, base, shape: 0 }) {
            self.unlink(&name, &old.base);
            self.bases.entry(old.base).or_default().push(name);
        }
        while self.used.len() > self.capacity {
            let oldest = self.used.iter().min_by_key(|(_, i)| i.tick).map(|(n, _)| n.clone());
            match oldest {
                Some(n) => {
                    self.forget(&n);
                    self.to_close.push(n);
                }
                None => break,
            }
        }
    }

    /// The instance's Describe was answered. Older instances of the same text and shape are
    /// retired (closed before the next Parse): clients that used them find this one, and a
    /// server keeps about one instance per text and shape however many clients prepare it.
    pub fn set_shape(&mut self, name: &str, shape: u64) {
        let Some(i) = self.used.get_mut(name) else { return };
        i.shape = shape;
        let base = i.base.clone();
        let same: Vec<Arc<str>> = self
            .bases
            .get(&base)
            .into_iter()
            .flatten()
            .filter(|n| &***n != name && self.used.get(*n).is_some_and(|i| i.shape == shape))
            .cloned()
            .collect();
        for n in same {
            self.forget(&n);
            self.to_close.push(n);
        }
    }

    fn unlink(&mut self, name: &str, base: &str) {
        if let Some(names) = self.bases.get_mut(base) {
            names.retain(|n| &**n != name);
            if names.is_empty() {
                self.bases.remove(base);
            }
        }
    }

    /// The server does not hold `name` (its Parse failed).
    pub fn forget(&mut self, name: &str) {
        if let Some(i) = self.used.remove(name) {
            self.unlink(name, &i.base);
        }
    }

    /// Every statement is to be closed and prepared afresh on next use (after DDL changed a
    /// result type).
    pub fn invalidate_all(&mut self) {
        let names: Vec<Arc<str>> = self.used.drain().map(|(n, _)| n).collect();
        self.bases.clear();
        self.to_close.extend(names);
    }

    /// The server's statements are gone (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.used.clear();
        self.bases.clear();
        self.to_close.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_cache_evicts_least_recently_used() {
        let mut s = ServerStatements::new(2);
        s.insert("a".into(), "x".into());
        s.insert("b".into(), "x".into());
        assert!(s.touch("a"));
        s.insert("c".into(), "y".into());
        assert!(s.touch("a") && s.touch("c") && !s.touch("b"));
        assert_eq!(s.to_close, vec![Arc::<str>::from("b")]);
        s.insert("b".into(), "x".into());
        assert!(s.to_close.iter().any(|n| &**n == "b"), "closed before it is prepared again");
    }

    #[test]
    fn instances_are_found_by_base_and_shape() {
        let mut s = ServerStatements::new(10);
        s.insert("x_1".into(), "x".into());
        s.insert("x_2".into(), "x".into());
        assert_eq!(s.find("x", 7), None, "no shape known yet");
        s.set_shape("x_1", 7);
        s.set_shape("x_2", 9);
        assert_eq!(s.find("x", 7).as_deref(), Some("x_1"));
        assert_eq!(s.find("x", 9).as_deref(), Some("x_2"));
        assert_eq!(s.find("x", 0).as_deref(), Some("x_2"), "any shape: the latest used");
        s.forget("x_2");
        assert_eq!(s.find("x", 9), None);
        // A newer instance of the same shape retires the older one.
        s.insert("x_3".into(), "x".into());
        s.set_shape("x_3", 7);
        assert_eq!(s.find("x", 7).as_deref(), Some("x_3"));
        assert!(!s.touch("x_1") && s.to_close == [Arc::<str>::from("x_1")]);
        s.to_close.clear();
        s.invalidate_all();
        assert_eq!(s.find("x", 7), None);
        assert_eq!(s.to_close.len(), 1);
    }
}
