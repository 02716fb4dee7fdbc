//! A simulated network for nodes run in one process: the other [`Network`] implementation.
//!
//! Every ordered pair of nodes is a link with its own [`LinkFaults`]: a delay drawn between
//! `delay_min` and `delay_max`, and the chances that a message is lost, duplicated or
//! reordered (held back by up to `reorder_window` more, so later messages overtake it).
//! Without reordering a link is FIFO, as a TCP link is. Links can be cut one way
//! ([`SimNet::cut`]) or both ([`SimNet::partition`]) and healed; a message sent into a cut
//! is lost silently, as on a real network that blackholes it (the sender learns nothing).
//!
//! All randomness comes from one seeded generator drawn in the order of the sends, and all
//! time from tokio's clock: on a current-thread runtime with the clock paused, a run is the
//! same for the same seed. Bounds: [`SimNetConfig::link_queue`] messages in flight per link
//! (beyond, `send` answers `QueueFull`), [`SimNetConfig::inbound_queue`] per receiving node
//! (beyond, a delivery is dropped and counted in [`SimStats::overflowed`]).

use gridvisor_supervisors::intensity::SplitMix64;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridvisor_cluster::transport::{Inbound, SendError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::network::Network;
use crate::Wire;

/// How one link behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Shortest delay.
    pub delay_min: Duration,
    /// Longest delay (at least `delay_min`).
    pub delay_max: Duration,
    /// Chance a message is lost, 0..=1.
    pub loss: f64,
    /// Chance a message arrives twice, 0..=1.
    pub duplicate: f64,
    /// Chance a message is held back by up to `reorder_window` (later ones overtake it).
    pub reorder: f64,
    /// The longest hold-back of a reordered message.
    pub reorder_window: Duration,
}

impl Default for LinkFaults {
    /// A quiet link: 1 ms, nothing lost, duplicated or reordered.
    fn default() -> LinkFaults {
        LinkFaults {
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(1),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_window: Duration::ZERO,
        }
    }
}

/// The network's seed and bounds.
#[derive(Debug, Clone, Copy)]
pub struct SimNetConfig {
    /// Seeds every draw.
    pub seed: u64,
    /// How links behave unless [`SimNet::set_link`] says otherwise.
    pub links: LinkFaults,
    /// Messages in flight on one link, at most.
    pub link_queue: usize,
    /// Messages waiting for one receiving node, at most.
    pub inbound_queue: usize,
}

impl SimNetConfig {
    /// Quiet links, the runtime's own inbound bound.
    pub fn seeded(seed: u64) -> SimNetConfig {
        SimNetConfig {
            seed,
            links: LinkFaults::default(),
            link_queue: 4096,
            inbound_queue: crate::INBOUND_QUEUE,
        }
    }
}

/// What the network did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages accepted by `send`.
    pub sent: u64,
    /// Lost to `loss`.
    pub lost: u64,
    /// Lost in a cut.
    pub cut: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Held back to be overtaken.
    pub reordered: u64,
    /// Delivered.
    pub delivered: u64,
    /// Dropped at a full receiver.
    pub overflowed: u64,
    /// Dropped because the receiver left (crashed or stopped) before it arrived.
    pub gone: u64,
}

/// The network's random draws: the supervisors crate's SplitMix64 (small, seeded, the same
/// everywhere), with the two draws a link needs.
struct Rng(SplitMix64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_nanos() as u64;
        lo + Duration::from_nanos(if span == 0 {
            0
        } else {
            self.0.next_u64() % (span + 1)
        })
    }
}

/// One link's FIFO of (deliver at, message).
type LinkQueue = mpsc::Sender<(Instant, Wire)>;

struct State {
    config: SimNetConfig,
    rng: Rng,
    faults: BTreeMap<(String, String), LinkFaults>,
    cuts: BTreeSet<(String, String)>,
    inboxes: BTreeMap<String, mpsc::Sender<Inbound<Wire>>>,
    links: BTreeMap<(String, String), LinkQueue>,
    down: BTreeSet<String>,
    stats: SimStats,
}

/// The simulated network. Cheap to clone.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<State>>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimNet {
    /// An empty network.
    pub fn new(config: SimNetConfig) -> SimNet {
        let state = State {
            rng: Rng(SplitMix64::new(config.seed)),
            config,
            faults: BTreeMap::new(),
            cuts: BTreeSet::new(),
            inboxes: BTreeMap::new(),
            links: BTreeMap::new(),
            down: BTreeSet::new(),
            stats: SimStats::default(),
        };
        SimNet {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Attach node `name` (again, after a crash: its old inbox is replaced): its sending end
    /// and what it receives.
    pub fn join(&self, name: &str) -> (SimEndpoint, mpsc::Receiver<Inbound<Wire>>) {
        let mut s = lock(&self.state);
        let (tx, rx) = mpsc::channel(s.config.inbound_queue);
        s.inboxes.insert(name.to_string(), tx);
        s.down.remove(name);
        let endpoint = SimEndpoint {
            name: name.to_string(),
            net: self.clone(),
        };
        (endpoint, rx)
    }

    /// How the link `from` → `to` behaves from now on.
    pub fn set_link(&self, from: &str, to: &str, faults: LinkFaults) {
        lock(&self.state)
            .faults
            .insert((from.to_string(), to.to_string()), faults);
    }

    /// Cut `from` → `to` only (a one-way partition).
    pub fn cut(&self, from: &str, to: &str) {
        lock(&self.state)
            .cuts
            .insert((from.to_string(), to.to_string()));
    }

    /// Cut every link between `a` and `b`, both ways.
    pub fn partition(&self, a: &[&str], b: &[&str]) {
        let mut s = lock(&self.state);
        for x in a {
            for y in b {
                s.cuts.insert((x.to_string(), y.to_string()));
                s.cuts.insert((y.to_string(), x.to_string()));
            }
        }
    }

    /// Heal every cut.
    pub fn heal(&self) {
        lock(&self.state).cuts.clear();
    }

    /// What the network did so far.
    pub fn stats(&self) -> SimStats {
        lock(&self.state).stats
    }

    fn send(&self, from: &str, to: &str, msg: Wire) -> Result<(), SendError> {
        let mut s = lock(&self.state);
        if s.down.contains(from) || !s.inboxes.contains_key(to) {
            return Err(SendError::NotConnected(to.to_string()));
        }
        let key = (from.to_string(), to.to_string());
        let f = s.faults.get(&key).copied().unwrap_or(s.config.links);
        s.stats.sent += 1;
        if s.cuts.contains(&key) {
            s.stats.cut += 1;
            return Ok(());
        }
        if s.rng.unit() < f.loss {
            s.stats.lost += 1;
            return Ok(());
        }
        let copies = if s.rng.unit() < f.duplicate { 2 } else { 1 };
        s.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let mut at = Instant::now() + s.rng.between(f.delay_min, f.delay_max);
            if s.rng.unit() < f.reorder {
                s.stats.reordered += 1;
                at += s.rng.between(Duration::ZERO, f.reorder_window);
                // Off the FIFO: it arrives when its own delay ends, overtaken meanwhile.
                let me = self.clone();
                let (from, to, msg) = (from.to_string(), to.to_string(), msg.clone());
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    me.deliver(&to, from, msg);
                });
                continue;
            }
            let link = self.link(&mut s, &key);
            if link.try_send((at, msg.clone())).is_err() {
                let limit = s.config.link_queue;
                return Err(SendError::QueueFull {
                    peer: to.to_string(),
                    limit,
                });
            }
        }
        Ok(())
    }

    /// The FIFO task of one link (started at its first message).
    fn link(&self, s: &mut State, key: &(String, String)) -> LinkQueue {
        if let Some(q) = s.links.get(key).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, mut rx) = mpsc::channel::<(Instant, Wire)>(s.config.link_queue);
        let me = self.clone();
        let (from, to) = key.clone();
        tokio::spawn(async move {
            let mut last = Instant::now();
            while let Some((at, msg)) = rx.recv().await {
                // FIFO: never before the message ahead of it.
                last = last.max(at);
                tokio::time::sleep_until(last).await;
                me.deliver(&to, from.clone(), msg);
            }
        });
        s.links.insert(key.clone(), tx.clone());
        tx
    }

    fn deliver(&self, to: &str, from: String, msg: Wire) {
        let mut s = lock(&self.state);
        let Some(inbox) = s.inboxes.get(to) else {
            s.stats.gone += 1;
            return;
        };
        match inbox.try_send(Inbound { from, msg }) {
            Ok(()) => s.stats.delivered += 1,
            Err(mpsc::error::TrySendError::Full(_)) => s.stats.overflowed += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => s.stats.gone += 1,
        }
    }
}

/// One node's end of the simulated network.
pub struct SimEndpoint {
    name: String,
    net: SimNet,
}

impl Network for SimEndpoint {
    fn send(&self, to: &str, msg: Wire) -> Result<(), SendError> {
        self.net.send(&self.name, to, msg)
    }

    /// Every attached peer not cut from this node either way.
    fn connected(&self) -> BTreeSet<String> {
        let s = lock(&self.net.state);
        (s.inboxes.keys())
            .filter(|p| **p != self.name && !s.down.contains(*p))
            .filter(|p| {
                !s.cuts.contains(&(self.name.clone(), p.to_string()))
                    && !s.cuts.contains(&(p.to_string(), self.name.clone()))
            })
            .cloned()
            .collect()
    }

    /// The node leaves (crashes or stops): its sends fail until it joins again.
    fn shutdown(&self) {
        let mut s = lock(&self.net.state);
        s.down.insert(self.name.clone());
        s.inboxes.remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(round: u64) -> Wire {
        Wire::Heartbeat {
            round,
            epoch: 0,
            driving: Vec::new(),
        }
    }

    fn round(w: &Wire) -> u64 {
        match w {
            Wire::Heartbeat { round, .. } => *round,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Sends `n` numbered heartbeats a → b, 1 ms apart, and returns what b received (round
    /// numbers, arrival times since the first send).
    async fn trace(net: &SimNet, n: u64) -> Vec<(u64, Duration)> {
        let (a, _ra) = net.join("a");
        let (_b, mut rb) = net.join("b");
        let t0 = Instant::now();
        for i in 0..n {
            a.send("b", hb(i)).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Longer than any delay of these tests: everything in flight has arrived.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut got = Vec::new();
        while let Ok(m) = rb.try_recv() {
            assert_eq!(m.from, "a");
            got.push((round(&m.msg), t0.elapsed()));
        }
        got
    }

    fn lossy(seed: u64) -> SimNetConfig {
        let mut c = SimNetConfig::seeded(seed);
        c.links = LinkFaults {
            delay_min: Duration::from_millis(5),
            delay_max: Duration::from_millis(50),
            loss: 0.2,
            duplicate: 0.1,
            reorder: 0.2,
            reorder_window: Duration::from_millis(100),
        };
        c
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_link_delivers_everything_in_order_after_its_delay() {
        let mut c = SimNetConfig::seeded(1);
        c.links.delay_min = Duration::from_millis(10);
        c.links.delay_max = Duration::from_millis(30);
        let net = SimNet::new(c);
        let got = trace(&net, 100).await;
        let rounds: Vec<u64> = got.iter().map(|(r, _)| *r).collect();
        assert_eq!(rounds, (0..100).collect::<Vec<_>>());
        for (r, at) in &got {
            let sent = Duration::from_millis(*r);
            assert!(*at >= sent + Duration::from_millis(10), "{r} at {at:?}");
        }
        assert_eq!(net.stats().delivered, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn faults_happen_at_their_rates_and_a_seed_replays_them() {
        let net = SimNet::new(lossy(7));
        let got = trace(&net, 1000).await;
        let st = net.stats();
        assert_eq!(st.sent, 1000);
        assert!((120..=280).contains(&st.lost), "{st:?}");
        assert!((40..=160).contains(&st.duplicated), "{st:?}");
        assert!(st.reordered > 100, "{st:?}");
        assert_eq!(got.len() as u64, 1000 - st.lost + st.duplicated);
        assert!(
            got.windows(2).any(|w| w[1].0 < w[0].0),
            "something overtaken"
        );
        // The same seed: the same arrivals, at the same times; another seed: others.
        assert_eq!(trace(&SimNet::new(lossy(7)), 1000).await, got);
        assert_ne!(trace(&SimNet::new(lossy(8)), 1000).await, got);
    }

    #[tokio::test(start_paused = true)]
    async fn one_way_and_two_way_partitions_cut_and_heal() {
        let net = SimNet::new(SimNetConfig::seeded(3));
        let (a, mut ra) = net.join("a");
        let (b, mut rb) = net.join("b");
        let wait = || tokio::time::sleep(Duration::from_millis(10));
        net.cut("a", "b");
        a.send("b", hb(1)).unwrap();
        b.send("a", hb(2)).unwrap();
        wait().await;
        assert!(rb.try_recv().is_err(), "a → b is cut");
        assert_eq!(round(&ra.try_recv().unwrap().msg), 2, "b → a still passes");
        assert!(!a.connected().contains("b"));
        net.heal();
        net.partition(&["a"], &["b"]);
        a.send("b", hb(3)).unwrap();
        b.send("a", hb(4)).unwrap();
        wait().await;
        assert!(rb.try_recv().is_err() && ra.try_recv().is_err());
        assert_eq!(net.stats().cut, 3);
        net.heal();
        a.send("b", hb(5)).unwrap();
        wait().await;
        assert_eq!(round(&rb.try_recv().unwrap().msg), 5);
        assert!(a.connected().contains("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_left_neither_sends_nor_receives_until_it_joins_again() {
        let net = SimNet::new(SimNetConfig::seeded(4));
        let (a, _ra) = net.join("a");
        let (b, _rb) = net.join("b");
        a.send("b", hb(1)).unwrap();
        b.shutdown();
        assert!(matches!(
            b.send("a", hb(2)),
            Err(SendError::NotConnected(_))
        ));
        assert!(matches!(
            a.send("b", hb(3)),
            Err(SendError::NotConnected(_))
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(net.stats().gone, 1, "the message in flight is lost");
        let (_b, mut rb) = net.join("b");
        a.send("b", hb(4)).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(round(&rb.try_recv().unwrap().msg), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_link_or_receiver_is_bounded() {
        let mut c = SimNetConfig::seeded(5);
        c.link_queue = 2;
        c.inbound_queue = 3;
        c.links.delay_min = Duration::from_millis(100);
        c.links.delay_max = Duration::from_millis(100);
        let net = SimNet::new(c);
        let (a, _ra) = net.join("a");
        let (_b, _rb) = net.join("b");
        a.send("b", hb(0)).unwrap();
        // The link task takes one message off the queue at once and waits with it.
        tokio::task::yield_now().await;
        a.send("b", hb(1)).unwrap();
        a.send("b", hb(2)).unwrap();
        let full = a.send("b", hb(3));
        assert!(
            matches!(full, Err(SendError::QueueFull { limit: 2, .. })),
            "{full:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 4..6 {
            a.send("b", hb(i)).unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let st = net.stats();
        assert_eq!((st.delivered, st.overflowed), (3, 2), "{st:?}");
    }
}
