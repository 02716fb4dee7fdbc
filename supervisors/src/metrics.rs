//! Supervision metrics: starts, restarts and exits by reason, messages handled and mailbox
//! depth, running children, per actor path; rendered straight from atomics in the Prometheus
//! text format or OpenMetrics ([`crate::exposition`]).
//!
//! ## Why not `prometheus`'s vectors
//! A node supervises 100,000 actors. `IntCounterVec::gather()` builds a protobuf-shaped
//! object with owned label strings for every series and sorts them, then `TextEncoder` walks
//! them: about 3 s for one scrape at that size. Here every label value (an actor path, or a
//! group of alike actors) owns one [`ActorSeries`] of plain atomics in a sorted table, and a
//! scrape copies the table's `Arc`s under its lock and writes each line straight into one
//! buffer. [`SupervisionMetrics`] is still a `prometheus::core::Collector`, so a caller
//! that keeps everything in a `prometheus::Registry` sees the same families through
//! `gather()`.
//!
//! ## Cardinality
//! - The `reason` label is the [`ExitClass`] (four values), never the free-text reason.
//! - Children of a dynamic supervisor share one series labelled `<supervisor path>/*` unless
//!   [`MetricsGranularity::PerChild`] is chosen; per-child series are removed with the child.
//! - Any child can be counted under a shared label instead of its own path
//!   (`ChildSpec::metrics_label`), and a supervisor can count its running children under one
//!   (`SupervisorConfig::metrics_label`): 100,000 alike actors then cost one series.
//! - A per-path series of restarts or exits appears with its first event (zeros of 100,000
//!   healthy actors are most of a scrape and tell nothing; a shared or a supervisor's series is
//!   always there, so `rate()` over a fleet works from the first scrape).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use crate::exit::ExitClass;
use crate::exposition::{write_family_header, write_label_value, Format};
use crate::path::ActorPath;

/// How children of a dynamic supervisor are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsGranularity {
    /// One series per child path.
    PerChild,
    /// One series for all children, labelled `<supervisor path>/*` (the default for dynamic
    /// supervisors).
    #[default]
    Aggregated,
}

/// The roles a label plays (which families it appears in).
const ROLE_CHILD: u8 = 1;
const ROLE_SUPERVISOR: u8 = 2;
const ROLE_MAILBOX: u8 = 4;
const ROLE_SHARED: u8 = 8;

const EXIT_CLASSES: [ExitClass; 4] = [
    ExitClass::Normal,
    ExitClass::Shutdown,
    ExitClass::Killed,
    ExitClass::Failed,
];

fn exit_index(class: ExitClass) -> usize {
    match class {
        ExitClass::Normal => 0,
        ExitClass::Shutdown => 1,
        ExitClass::Killed => 2,
        ExitClass::Failed => 3,
    }
}

/// The counters of one label value: one actor, or a group of alike actors counted together.
#[derive(Debug, Default)]
pub struct ActorSeries {
    starts: AtomicU64,
    restarts: AtomicU64,
    exits: [AtomicU64; 4],
    messages: AtomicU64,
    queued: AtomicI64,
    children: AtomicI64,
    intensity_exceeded: AtomicU64,
    roles: AtomicU8,
    /// The mailbox of the label's current incarnation, for [`MailboxCounters::reopen`].
    current: Mutex<Option<Arc<MailboxState>>>,
}

impl ActorSeries {
    fn add_role(&self, role: u8) {
        self.roles.fetch_or(role, Relaxed);
    }

    fn has(&self, role: u8) -> bool {
        self.roles.load(Relaxed) & role != 0
    }

    /// Zero-valued restarts and exits are written for shared labels and supervisors only.
    fn eager(&self) -> bool {
        self.has(ROLE_SHARED | ROLE_SUPERVISOR)
    }
}

/// The prefix of every family name unless a table is made with
/// [`SupervisionMetrics::with_prefix`].
pub const DEFAULT_PREFIX: &str = "gridvisor";

/// The family names (after the prefix and `_`), help texts and types, in the order they are
/// written.
const FAMILIES: [(&str, &str, MetricType); 7] = [
    (
        "actor_starts_total",
        "Actor starts (first starts and restarts)",
        MetricType::COUNTER,
    ),
    (
        "actor_restarts_total",
        "Restarts made by the supervisor",
        MetricType::COUNTER,
    ),
    (
        "actor_exits_total",
        "Actor exits by reason class",
        MetricType::COUNTER,
    ),
    (
        "actor_messages_total",
        "Messages handled by actors that count them",
        MetricType::COUNTER,
    ),
    (
        "actor_mailbox_depth",
        "Messages sent to an actor and not yet handled",
        MetricType::GAUGE,
    ),
    (
        "supervisor_children",
        "Running children of a supervisor",
        MetricType::GAUGE,
    ),
    (
        "supervisor_intensity_exceeded_total",
        "Times a supervisor gave up because it reached its restart intensity",
        MetricType::COUNTER,
    ),
];

/// The supervision metric families of one tree (cheap to clone: a shared table).
#[derive(Clone)]
pub struct SupervisionMetrics {
    table: Arc<Mutex<BTreeMap<Arc<str>, Arc<ActorSeries>>>>,
    descs: Arc<Vec<Desc>>,
    /// `FAMILIES`' names with the table's prefix.
    names: Arc<[String; FAMILIES.len()]>,
}

impl std::fmt::Debug for SupervisionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisionMetrics")
            .field("labels", &self.len())
            .finish()
    }
}

impl Default for SupervisionMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SupervisionMetrics {
    /// An empty table with the [`DEFAULT_PREFIX`], not registered anywhere: render it with
    /// [`SupervisionMetrics::encode`].
    pub fn new() -> Self {
        Self::with_prefix(DEFAULT_PREFIX).expect("the default prefix is a valid metric name")
    }

    /// An empty table whose family names start with `prefix` and `_`
    /// (`myapp_actor_restarts_total`). Fails if that makes an invalid metric name.
    ///
    /// ```
    /// use gridvisor_supervisors::{exposition::Format, SupervisionMetrics};
    ///
    /// assert!(SupervisionMetrics::with_prefix("9lives").is_err());
    /// let m = SupervisionMetrics::with_prefix("jobs").unwrap();
    /// let _ = m.mailbox("pool/worker-1"); // the worker's messages appear from now on
    /// let mut out = String::new();
    /// m.encode(Format::Text, &mut out);
    /// assert!(out.contains("jobs_actor_messages_total{path=\"pool/worker-1\"} 0\n"));
    /// ```
    pub fn with_prefix(prefix: &str) -> Result<Self, prometheus::Error> {
        let names: [String; FAMILIES.len()] =
            std::array::from_fn(|i| format!("{prefix}_{}", FAMILIES[i].0));
        let descs = names
            .iter()
            .zip(FAMILIES)
            .map(|(name, (_, help, _))| {
                let labels = if name.ends_with("exits_total") {
                    vec!["path".to_string(), "reason".to_string()]
                } else {
                    vec!["path".to_string()]
                };
                Desc::new(name.clone(), help.to_string(), labels, Default::default())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SupervisionMetrics {
            table: Arc::new(Mutex::new(BTreeMap::new())),
            descs: Arc::new(descs),
            names: Arc::new(names),
        })
    }

    /// A table registered in `registry` as a collector, so that `registry.gather()` includes
    /// the supervision families.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let m = Self::new();
        registry.register(Box::new(m.clone()))?;
        Ok(m)
    }

    /// How many label values the table holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Arc<str>, Arc<ActorSeries>>> {
        // A panic while holding this lock cannot leave a map half-updated in a way that
        // matters to counters, so a poisoned lock is used as is.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, label: &str, role: u8) -> Arc<ActorSeries> {
        let mut t = self.lock();
        let s = match t.get(label) {
            Some(s) => Arc::clone(s),
            None => {
                let s = Arc::new(ActorSeries::default());
                t.insert(Arc::from(label), Arc::clone(&s));
                s
            }
        };
        s.add_role(role);
        s
    }

    /// The message counters of the actor (or group of actors) labelled `label`: its handled
    /// messages and its mailbox depth appear from now on.
    pub fn mailbox(&self, label: &str) -> MailboxCounters {
        MailboxCounters(self.entry(label, ROLE_MAILBOX))
    }

    /// Counters for a child counted under `label`, resolved once and kept. `shared`: the
    /// label is a group's, not one actor's path.
    pub(crate) fn series(&self, label: &str, shared: bool) -> Series {
        let role = if shared {
            ROLE_CHILD | ROLE_SHARED
        } else {
            ROLE_CHILD
        };
        Series(self.entry(label, role))
    }

    /// Forget a per-child label (its child was removed).
    pub(crate) fn remove_series(&self, label: &str) {
        self.lock().remove(label);
    }

    pub(crate) fn intensity_exceeded(&self, supervisor: &ActorPath) {
        self.entry(supervisor.as_str(), 0)
            .intensity_exceeded
            .fetch_add(1, Relaxed);
    }

    /// The running-children gauge of a supervisor counted under `label`; several supervisors
    /// may share it (each adds its own count).
    pub(crate) fn children_gauge(&self, label: &str, shared: bool) -> ChildrenGauge {
        let role = if shared {
            ROLE_SUPERVISOR | ROLE_SHARED
        } else {
            ROLE_SUPERVISOR
        };
        ChildrenGauge {
            series: self.entry(label, role),
            last: AtomicI64::new(0),
        }
    }

    /// Call `sample(family, path, reason, value)` for every sample the table exposes, in
    /// label order; `family` indexes [`FAMILIES`]. The one place that decides which series
    /// appear (see the module docs), for both the direct encoder and the collector.
    fn samples(&self, mut sample: impl FnMut(usize, &str, Option<&'static str>, i64)) {
        // The lock is held only to copy the `Arc`s: a scrape never stops the tree.
        let rows: Vec<(Arc<str>, Arc<ActorSeries>)> = self
            .lock()
            .iter()
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect();
        let count = |a: &AtomicU64| i64::try_from(a.load(Relaxed)).unwrap_or(i64::MAX);
        for (path, s) in &rows {
            let roles = s.roles.load(Relaxed);
            let eager = s.eager();
            if roles & ROLE_CHILD != 0 {
                sample(0, path, None, count(&s.starts));
                let r = count(&s.restarts);
                if eager || r != 0 {
                    sample(1, path, None, r);
                }
                for (i, class) in EXIT_CLASSES.iter().enumerate() {
                    let e = count(&s.exits[i]);
                    if eager || e != 0 {
                        sample(2, path, Some(class.as_str()), e);
                    }
                }
            }
            if roles & ROLE_MAILBOX != 0 {
                sample(3, path, None, count(&s.messages));
                // A send and the handling of the same message race on the counter; a depth
                // below zero is such a race seen half-way, not a depth.
                sample(4, path, None, s.queued.load(Relaxed).max(0));
            }
            if roles & ROLE_SUPERVISOR != 0 {
                sample(5, path, None, s.children.load(Relaxed).max(0));
            }
            let x = count(&s.intensity_exceeded);
            if x != 0 {
                sample(6, path, None, x);
            }
        }
    }

    /// Append the table's families to `out` in `format` (without OpenMetrics' `# EOF`; see
    /// [`crate::exposition::finish`]).
    pub fn encode(&self, format: Format, out: &mut String) {
        // One buffer per family, filled in one pass over the rows (each family's samples must
        // be contiguous), then appended in order.
        let mut bufs: [String; FAMILIES.len()] = Default::default();
        self.samples(|family, path, reason, v| {
            let buf = &mut bufs[family];
            buf.push_str(&self.names[family]);
            buf.push_str("{path=\"");
            write_label_value(buf, path);
            buf.push('"');
            if let Some(reason) = reason {
                buf.push_str(",reason=\"");
                buf.push_str(reason);
                buf.push('"');
            }
            buf.push_str("} ");
            let _ = write!(buf, "{v}");
            buf.push('\n');
        });
        for ((buf, name), (_, help, kind)) in bufs.iter().zip(self.names.iter()).zip(FAMILIES) {
            if !buf.is_empty() {
                write_family_header(out, format, name, help, kind);
                out.push_str(buf);
            }
        }
    }

    fn families(&self) -> Vec<MetricFamily> {
        let mut fams: Vec<MetricFamily> = FAMILIES
            .iter()
            .zip(self.names.iter())
            .map(|((_, help, kind), name)| {
                let mut f = MetricFamily::default();
                f.set_name(name.clone());
                f.set_help(help.to_string());
                f.set_field_type(*kind);
                f
            })
            .collect();
        self.samples(|family, path, reason, v| {
            let mut labels = vec![label_pair("path", path)];
            if let Some(r) = reason {
                labels.push(label_pair("reason", r));
            }
            let mut m = proto::Metric::default();
            m.set_label(labels);
            if FAMILIES[family].2 == MetricType::COUNTER {
                let mut c = proto::Counter::default();
                c.set_value(v as f64);
                m.set_counter(c);
            } else {
                let mut g = proto::Gauge::default();
                g.set_value(v as f64);
                m.set_gauge(g);
            }
            fams[family].mut_metric().push(m);
        });
        fams.retain(|f| !f.get_metric().is_empty());
        fams
    }
}

fn label_pair(name: &str, value: &str) -> proto::LabelPair {
    let mut l = proto::LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

impl Collector for SupervisionMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families()
    }
}

/// Resolved counters for one child's label.
#[derive(Clone)]
pub(crate) struct Series(Arc<ActorSeries>);

impl Series {
    pub(crate) fn start(&self) {
        self.0.starts.fetch_add(1, Relaxed);
    }

    pub(crate) fn restart(&self) {
        self.0.restarts.fetch_add(1, Relaxed);
    }

    pub(crate) fn exit(&self, class: ExitClass) {
        self.0.exits[exit_index(class)].fetch_add(1, Relaxed);
    }
}

/// A supervisor's share of a running-children gauge: it adds the change of its own count,
/// and takes its count back out when dropped (a supervisor that stops no longer has
/// children, however it stopped).
pub(crate) struct ChildrenGauge {
    series: Arc<ActorSeries>,
    last: AtomicI64,
}

impl ChildrenGauge {
    pub(crate) fn set(&self, running: i64) {
        let previous = self.last.swap(running, Relaxed);
        self.series.children.fetch_add(running - previous, Relaxed);
    }
}

impl Drop for ChildrenGauge {
    fn drop(&mut self) {
        let last = *self.last.get_mut();
        self.series.children.fetch_sub(last, Relaxed);
    }
}

/// The message counters of one label (an actor, or a group counted together): messages
/// handled and the mailbox depth. Each incarnation of an actor opens its own [`Mailbox`] on
/// it.
#[derive(Clone, Debug)]
pub struct MailboxCounters(Arc<ActorSeries>);

impl MailboxCounters {
    /// A mailbox for a new incarnation (its depth starts at zero).
    pub fn open(&self) -> Mailbox {
        Mailbox {
            series: Arc::clone(&self.0),
            state: Arc::new(MailboxState::default()),
        }
    }

    /// A mailbox for a new incarnation of the one actor this label stands for, closing the
    /// previous incarnation's: a killed actor never runs its `post_stop`, and what was left
    /// in its mailbox must not stay in the depth for ever.
    pub fn reopen(&self) -> Mailbox {
        let mailbox = self.open();
        let previous = self
            .0
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(Arc::clone(&mailbox.state));
        if let Some(state) = previous {
            Mailbox {
                series: Arc::clone(&self.0),
                state,
            }
            .close();
        }
        mailbox
    }

    /// Messages handled so far, over every incarnation.
    pub fn messages(&self) -> u64 {
        self.0.messages.load(Relaxed)
    }

    /// The mailbox depth now, over every open mailbox of the label (never below zero).
    pub fn depth(&self) -> i64 {
        self.0.queued.load(Relaxed).max(0)
    }
}

#[derive(Debug, Default)]
struct MailboxState {
    depth: AtomicI64,
    closed: std::sync::atomic::AtomicBool,
}

/// One incarnation's mailbox count: what senders announced minus what the actor handled.
///
/// Senders call [`Mailbox::sent`] before each send and [`Mailbox::unsent`] when the send
/// failed; the actor calls [`Mailbox::handled`] for each message, and [`Mailbox::close`]
/// when it stops, which takes whatever was left (dropped with the incarnation) out of the
/// label's depth. After `close`, announcements change nothing, so a send racing the stop
/// cannot leave a phantom message behind. Clones share the count.
#[derive(Clone, Debug)]
pub struct Mailbox {
    series: Arc<ActorSeries>,
    state: Arc<MailboxState>,
}

impl Mailbox {
    fn closed(&self) -> bool {
        self.state.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A message is about to be sent to this incarnation.
    pub fn sent(&self) {
        if !self.closed() {
            self.state.depth.fetch_add(1, Relaxed);
            self.series.queued.fetch_add(1, Relaxed);
        }
    }

    /// A send announced with [`Mailbox::sent`] failed.
    pub fn unsent(&self) {
        if !self.closed() {
            self.state.depth.fetch_sub(1, Relaxed);
            self.series.queued.fetch_sub(1, Relaxed);
        }
    }

    /// The actor handled a message (counted whether or not it was announced: timers and
    /// self-sends are messages too, but only announced ones make up the depth).
    pub fn handled(&self) {
        self.series.messages.fetch_add(1, Relaxed);
        if !self.closed() {
            // Only announced messages are in the depth; a self-send the sender did not
            // announce would otherwise drive it below zero.
            let _ = self
                .state
                .depth
                .fetch_update(Relaxed, Relaxed, |d| (d > 0).then(|| d - 1))
                .map(|_| self.series.queued.fetch_sub(1, Relaxed));
        }
    }

    /// The incarnation stopped: what was left in its mailbox is gone.
    pub fn close(&self) {
        if !self
            .state
            .closed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let left = self.state.depth.swap(0, Relaxed);
            self.series.queued.fetch_sub(left, Relaxed);
        }
    }

    /// This incarnation's depth now.
    pub fn depth(&self) -> i64 {
        self.state.depth.load(Relaxed)
    }
}

/// An actor's address together with its incarnation's [`Mailbox`]: every send through it is
/// counted in the receiver's mailbox depth. Dereferences to the `ActorRef` for everything
/// else.
pub struct CountedRef<M> {
    actor: ractor::ActorRef<M>,
    mailbox: Mailbox,
}

impl<M> Clone for CountedRef<M> {
    fn clone(&self) -> Self {
        CountedRef {
            actor: self.actor.clone(),
            mailbox: self.mailbox.clone(),
        }
    }
}

impl<M> std::fmt::Debug for CountedRef<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedRef")
            .field("actor", &self.actor.get_id())
            .field("depth", &self.mailbox.depth())
            .finish()
    }
}

impl<M: ractor::Message> CountedRef<M> {
    /// `actor`'s address, counting sends in `mailbox` (the one its incarnation opened).
    pub fn new(actor: ractor::ActorRef<M>, mailbox: Mailbox) -> Self {
        CountedRef { actor, mailbox }
    }

    /// Send `message`, counted in the receiver's mailbox depth until it is handled.
    pub fn send_message(&self, message: M) -> Result<(), ractor::MessagingErr<M>> {
        self.mailbox.sent();
        let r = self.actor.send_message(message);
        if r.is_err() {
            self.mailbox.unsent();
        }
        r
    }

    /// The plain address.
    pub fn actor(&self) -> &ractor::ActorRef<M> {
        &self.actor
    }
}

impl<M> std::ops::Deref for CountedRef<M> {
    type Target = ractor::ActorRef<M>;
    fn deref(&self) -> &Self::Target {
        &self.actor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::encode_families;

    /// The fast path (straight from the table) and the collector path (`gather()` and the
    /// generic encoder) must write the same exposition.
    #[test]
    fn the_table_writes_what_the_collector_gathers() {
        let m = SupervisionMetrics::new();
        let leaf = m.series("a/b", false);
        leaf.start();
        let quiet = m.series("a/c", false);
        quiet.start();
        let shared = m.series("a/*/s", true);
        shared.start();
        shared.start();
        leaf.exit(ExitClass::Failed);
        leaf.restart();
        let gauge = m.children_gauge("a", false);
        gauge.set(2);
        let mailbox = m.mailbox("a/b").open();
        mailbox.sent();
        mailbox.sent();
        mailbox.handled();
        m.intensity_exceeded(&ActorPath::from("a"));
        for format in [Format::Text, Format::OpenMetrics] {
            let mut fast = String::new();
            m.encode(format, &mut fast);
            let mut slow = String::new();
            encode_families(&m.families(), format, &mut slow);
            assert_eq!(fast, slow, "{format:?}");
        }
        let mut text = String::new();
        m.encode(Format::Text, &mut text);
        // Lazy per-path series: the quiet child has a start and nothing else.
        assert!(text.contains("actor_starts_total{path=\"a/c\"} 1\n"));
        assert!(!text.contains("actor_restarts_total{path=\"a/c\"}"));
        // Eager shared series: zeros are written.
        assert!(text.contains("actor_restarts_total{path=\"a/*/s\"} 0\n"));
        assert!(text.contains("actor_exits_total{path=\"a/*/s\",reason=\"killed\"} 0\n"));
        assert!(text.contains("actor_exits_total{path=\"a/b\",reason=\"failed\"} 1\n"));
        assert!(text.contains("actor_messages_total{path=\"a/b\"} 1\n"));
        assert!(text.contains("actor_mailbox_depth{path=\"a/b\"} 1\n"));
        assert!(text.contains("supervisor_children{path=\"a\"} 2\n"));
        assert!(text.contains("supervisor_intensity_exceeded_total{path=\"a\"} 1\n"));
        let mut om = String::new();
        m.encode(Format::OpenMetrics, &mut om);
        assert!(om.contains("# TYPE gridvisor_actor_starts counter\n"));
    }

    #[test]
    fn shared_gauges_add_and_a_dropped_supervisor_takes_its_share_out() {
        let m = SupervisionMetrics::new();
        let a = m.children_gauge("sups/*", true);
        let b = m.children_gauge("sups/*", true);
        a.set(2);
        b.set(1);
        a.set(1);
        let depth = || m.lock().get("sups/*").unwrap().children.load(Relaxed);
        assert_eq!(depth(), 2);
        drop(b);
        assert_eq!(depth(), 1);
    }

    #[test]
    fn a_closed_mailbox_takes_what_was_left_and_ignores_late_sends() {
        let m = SupervisionMetrics::new();
        let counters = m.mailbox("x");
        let first = counters.open();
        first.sent();
        first.sent();
        first.sent();
        first.handled();
        assert_eq!(counters.depth(), 2);
        first.close();
        assert_eq!(counters.depth(), 0);
        first.sent();
        first.unsent();
        assert_eq!(counters.depth(), 0);
        let second = counters.open();
        second.sent();
        assert_eq!(counters.depth(), 1);
        // A timer's message, never announced, does not drive the depth below zero.
        second.handled();
        second.handled();
        assert_eq!(counters.depth(), 0);
        assert_eq!(second.depth(), 0);
        assert_eq!(counters.messages(), 3);
    }

    #[test]
    fn reopening_closes_a_killed_incarnations_mailbox() {
        let m = SupervisionMetrics::new();
        let counters = m.mailbox("link");
        let killed = counters.reopen();
        killed.sent();
        killed.sent();
        // Killed: no post_stop, no close. The next incarnation takes its leftovers out.
        let next = counters.reopen();
        assert_eq!(counters.depth(), 0);
        next.sent();
        assert_eq!(counters.depth(), 1);
        killed.sent();
        assert_eq!(counters.depth(), 1, "the old incarnation is closed");
    }
}
