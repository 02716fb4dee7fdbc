//! Actor paths: the stable, human-readable address of a place in the tree.
//!
//! A path names a position (`site/tx-17/evse-3/session`), not an incarnation: it survives
//! restarts, which is what makes it a stable address. Paths are cheap to clone (`Arc<str>`).

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// A `/`-separated path from the root supervisor to an actor.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorPath(Arc<str>);

impl ActorPath {
    /// A root path (a supervisor started on its own).
    pub fn root(name: &str) -> Self {
        ActorPath(Arc::from(name))
    }

    /// The path of a child named `id` under this path.
    pub fn child(&self, id: &str) -> Self {
        let mut s = String::with_capacity(self.0.len() + 1 + id.len());
        s.push_str(&self.0);
        s.push('/');
        s.push_str(id);
        ActorPath(Arc::from(s))
    }

    /// The path as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment (the child id).
    pub fn leaf(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &ActorPath) -> bool {
        self.0.len() >= other.0.len()
            && self.0.starts_with(&*other.0)
            && (self.0.len() == other.0.len() || self.0.as_bytes()[other.0.len()] == b'/')
    }
}

impl fmt::Display for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl From<&str> for ActorPath {
    fn from(s: &str) -> Self {
        ActorPath(Arc::from(s))
    }
}

impl From<String> for ActorPath {
    fn from(s: String) -> Self {
        ActorPath(Arc::from(s))
    }
}

impl std::borrow::Borrow<str> for ActorPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for ActorPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_and_prefix() {
        let site = ActorPath::root("site");
        let tx = site.child("tx-17");
        assert_eq!(tx.as_str(), "site/tx-17");
        assert_eq!(tx.leaf(), "tx-17");
        assert!(tx.starts_with(&site));
        assert!(!ActorPath::root("site2").starts_with(&site));
        assert!(site.starts_with(&site));
    }
}
