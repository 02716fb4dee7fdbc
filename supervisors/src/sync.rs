//! The synchronisation primitives shared state is built from, swapped for loom's under
//! `--cfg gridvisor_loom` (tokio breaks under a plain `--cfg loom`) so that the loom models in `tests/loom.rs` explore every interleaving of the
//! real protocol code (the registry's table and its change signal).
//!
//! Only the primitives differ: under loom the concurrent map is a `Mutex<HashMap>` (DashMap's
//! own locks are DashMap's business, not ours) and the change signal is a condition variable;
//! in production they are DashMap and `tokio::sync::Notify`.

#[cfg(gridvisor_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize};
#[cfg(not(gridvisor_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize};

/// A concurrent map with the few operations the registry needs.
#[cfg(not(gridvisor_loom))]
pub(crate) struct Map<K: Eq + std::hash::Hash, V>(dashmap::DashMap<K, V>);

#[cfg(not(gridvisor_loom))]
impl<K: Eq + std::hash::Hash, V: Clone> Map<K, V> {
    pub(crate) fn new() -> Self {
        Map(dashmap::DashMap::new())
    }
    pub(crate) fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        self.0.get(k).map(|v| v.clone())
    }
    /// Insert the value `f` makes, calling `f` while `k`'s entry is locked, so that values
    /// made for one key are stored in the order they were made.
    pub(crate) fn insert_with(&self, k: K, f: impl FnOnce() -> V) {
        let entry = self.0.entry(k);
        entry.insert(f());
    }
    /// Apply `f` to the value at `k` if present; returns what `f` returned.
    pub(crate) fn update<Q>(&self, k: &Q, f: impl FnOnce(&mut V) -> bool) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        self.0.get_mut(k).is_some_and(|mut v| f(&mut v))
    }
    pub(crate) fn remove_if<Q>(&self, k: &Q, f: impl FnOnce(&V) -> bool) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        self.0.remove_if(k, |_, v| f(v)).is_some()
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
    pub(crate) fn collect<T>(&self, mut f: impl FnMut(&K, &V) -> Option<T>) -> Vec<T> {
        self.0
            .iter()
            .filter_map(|e| f(e.key(), e.value()))
            .collect()
    }
}

#[cfg(gridvisor_loom)]
pub(crate) struct Map<K, V>(loom::sync::Mutex<std::collections::HashMap<K, V>>);

#[cfg(gridvisor_loom)]
impl<K: Eq + std::hash::Hash, V: Clone> Map<K, V> {
    pub(crate) fn new() -> Self {
        Map(loom::sync::Mutex::new(std::collections::HashMap::new()))
    }
    pub(crate) fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        self.0.lock().unwrap().get(k).cloned()
    }
    pub(crate) fn insert_with(&self, k: K, f: impl FnOnce() -> V) {
        let mut m = self.0.lock().unwrap();
        let v = f();
        m.insert(k, v);
    }
    pub(crate) fn update<Q>(&self, k: &Q, f: impl FnOnce(&mut V) -> bool) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        self.0.lock().unwrap().get_mut(k).is_some_and(f)
    }
    pub(crate) fn remove_if<Q>(&self, k: &Q, f: impl FnOnce(&V) -> bool) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        let mut m = self.0.lock().unwrap();
        if m.get(k).is_some_and(f) {
            m.remove(k);
            true
        } else {
            false
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub(crate) fn collect<T>(&self, mut f: impl FnMut(&K, &V) -> Option<T>) -> Vec<T> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| f(k, v))
            .collect()
    }
}

/// Wakes tasks waiting for the registry to change. Waiters take a ticket (the epoch they saw)
/// and wait until the epoch moves on; a writer bumps the epoch and wakes waiters, if any.
#[cfg(not(gridvisor_loom))]
pub(crate) struct ChangeSignal {
    pub(crate) notify: tokio::sync::Notify,
}

#[cfg(not(gridvisor_loom))]
impl ChangeSignal {
    pub(crate) fn new() -> Self {
        ChangeSignal {
            notify: tokio::sync::Notify::new(),
        }
    }
    pub(crate) fn wake_all(&self) {
        self.notify.notify_waiters();
    }
}

#[cfg(gridvisor_loom)]
pub(crate) struct ChangeSignal {
    lock: loom::sync::Mutex<()>,
    cv: loom::sync::Condvar,
}

#[cfg(gridvisor_loom)]
impl ChangeSignal {
    pub(crate) fn new() -> Self {
        ChangeSignal {
            lock: loom::sync::Mutex::new(()),
            cv: loom::sync::Condvar::new(),
        }
    }
    pub(crate) fn wake_all(&self) {
        let _g = self.lock.lock().unwrap();
        self.cv.notify_all();
    }
    /// Block until `epoch` differs from `ticket`.
    pub(crate) fn wait_past(&self, epoch: &AtomicU64, ticket: u64) {
        let mut g = self.lock.lock().unwrap();
        while epoch.load(std::sync::atomic::Ordering::SeqCst) == ticket {
            g = self.cv.wait(g).unwrap();
        }
    }
}
