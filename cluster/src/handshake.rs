//! The cluster port's handshake budget: which inbound connections may be in their TLS or
//! hello handshake at once, so that a flood of connections that never finish it cannot keep
//! real peers out.
//!
//! Three bounds, all in [`crate::transport::TransportLimits`]:
//! - at most `pending_handshakes` connections are in a handshake at once (memory and tasks
//!   stay bounded whatever arrives);
//! - at most `pending_handshakes_per_ip` of them come from one remote IP address: a new one
//!   past that is refused at once, so one address can never hold the whole budget;
//! - when the whole budget is taken (a flood from many addresses), a new connection evicts
//!   the *oldest* pending one instead of being refused. A real peer finishes its handshake in
//!   milliseconds, a flood's connection never does, so the oldest pending one is the likeliest
//!   to be an attacker's and a real peer always gets a slot; an attacker must then open
//!   `pending_handshakes` connections within one real handshake to push a peer out;
//! - every handshake (TLS, hello, welcome) ends within `handshake_timeout` (the transport's
//!   deadline, not kept here).
//!
//! This module is the pure bookkeeping: no I/O, no clock. The transport keeps one
//! [`HandshakeBudget`] behind a lock, holding each pending handshake's cancel handle as `T`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// What [`HandshakeBudget::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<T> {
    /// The connection may start its handshake. `evicted` is the oldest pending handshake,
    /// taken out to make room (the caller cancels it); `None` when there was room.
    Admitted {
        /// This handshake's id, for [`HandshakeBudget::finish`].
        id: u64,
        /// The handshake given up for it: its address and its handle.
        evicted: Option<(IpAddr, T)>,
    },
    /// This address already has its share of pending handshakes: refuse the connection.
    PerAddressFull {
        /// The per-address limit.
        limit: usize,
    },
}

/// The pending handshakes, oldest first, and how many each address has.
#[derive(Debug)]
pub struct HandshakeBudget<T> {
    total: usize,
    per_ip: usize,
    next_id: u64,
    pending: VecDeque<(u64, IpAddr, T)>,
    by_ip: HashMap<IpAddr, usize>,
}

impl<T> HandshakeBudget<T> {
    /// A budget of `total` pending handshakes, `per_ip` of them from one address (both at
    /// least 1; the transport validates its limits before it builds one).
    pub fn new(total: usize, per_ip: usize) -> Self {
        HandshakeBudget {
            total: total.max(1),
            per_ip: per_ip.max(1),
            next_id: 0,
            pending: VecDeque::new(),
            by_ip: HashMap::new(),
        }
    }

    /// How many handshakes are pending now.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// How many handshakes from `ip` are pending now.
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.by_ip.get(&ip).copied().unwrap_or(0)
    }

    /// A new connection from `ip` whose handshake `handle` cancels.
    pub fn admit(&mut self, ip: IpAddr, handle: T) -> Admission<T> {
        if self.from_ip(ip) >= self.per_ip {
            return Admission::PerAddressFull { limit: self.per_ip };
        }
        let evicted = if self.pending.len() >= self.total {
            self.pending.pop_front().map(|(_, old_ip, old)| {
                self.forget(old_ip);
                (old_ip, old)
            })
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back((id, ip, handle));
        *self.by_ip.entry(ip).or_insert(0) += 1;
        Admission::Admitted { id, evicted }
    }

    /// The handshake `id` ended (done, failed or timed out). Returns its handle, or `None`
    /// when it was already evicted or finished.
    pub fn finish(&mut self, id: u64) -> Option<T> {
        let at = self.pending.iter().position(|(i, _, _)| *i == id)?;
        let (_, ip, handle) = self.pending.remove(at)?;
        self.forget(ip);
        Some(handle)
    }

    fn forget(&mut self, ip: IpAddr) {
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn admitted<T: std::fmt::Debug>(a: Admission<T>) -> (u64, Option<(IpAddr, T)>) {
        match a {
            Admission::Admitted { id, evicted } => (id, evicted),
            other => panic!("expected admission, got {other:?}"),
        }
    }

    #[test]
    fn one_address_gets_its_share_and_no_more() {
        let mut b = HandshakeBudget::new(8, 2);
        admitted(b.admit(ip(2), "a"));
        admitted(b.admit(ip(2), "b"));
        assert_eq!(b.admit(ip(2), "c"), Admission::PerAddressFull { limit: 2 });
        // Another address still gets in.
        assert_eq!(admitted(b.admit(ip(3), "d")).1, None);
        assert_eq!((b.len(), b.from_ip(ip(2)), b.from_ip(ip(3))), (3, 2, 1));
    }

    #[test]
    fn a_full_budget_evicts_the_oldest_pending_handshake() {
        let mut b = HandshakeBudget::new(3, 3);
        let (first, _) = admitted(b.admit(ip(2), "old"));
        admitted(b.admit(ip(3), "mid"));
        admitted(b.admit(ip(4), "new"));
        let (_, evicted) = admitted(b.admit(ip(1), "peer"));
        assert_eq!(evicted, Some((ip(2), "old")));
        assert_eq!((b.len(), b.from_ip(ip(2))), (3, 0));
        // The evicted one finishing later changes nothing.
        assert_eq!(b.finish(first), None);
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn finishing_frees_the_slot_and_the_address_share() {
        let mut b = HandshakeBudget::new(2, 1);
        let (id, _) = admitted(b.admit(ip(2), 7));
        assert_eq!(b.admit(ip(2), 8), Admission::PerAddressFull { limit: 1 });
        assert_eq!(b.finish(id), Some(7));
        assert_eq!(b.finish(id), None);
        assert!(b.is_empty());
        assert_eq!(admitted(b.admit(ip(2), 9)).1, None);
    }
}
