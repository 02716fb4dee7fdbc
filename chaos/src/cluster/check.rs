//! The cluster invariants, each a pure function of what the runner saw, testable alone:
//!
//! | name | what must hold |
//! | --- | --- |
//! | `one_driver_per_segment` | no two nodes drive a segment at once (from the nodes' typed events, gridvisor-cluster-node's `events` file: `adopting` to `released` or to the lease's end (`lease` to `Stopped`: the lease gate commands nothing after it), a killed process's intervals ending at its kill; never from log text) |
//! | `charge_only_when_cut_off` | a node cut off from a majority has its lease leave Driving within `charge_only_s` |
//! | `takeover` | after a kill or a cut, every segment is driven by exactly one node of the majority within `takeover_s` |
//! | `settles` | after a heal or a restart, the majority agrees on its members, holds its leases and drives every segment once, within `settle_limit_s` |
//! | `acknowledged_not_lost` | at the end, each segment's chargers show applied dispatch ids no older than the newest one acknowledged for it |
//! | `acknowledged_monotone` | (unless `acknowledged_monotone = false`) a segment's acknowledged dispatch ids never go back: a request sent after an acknowledgement gets a larger id |
//! | `handoffs` | (with `max_handoffs`) adoptions after the first settle, at most that many |

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use gridvisor_cluster_node::events::{ClusterEvent, EventRecord, LeaseState};

use super::scenario::Bounds;

/// The invariants' names.
pub const ONE_DRIVER: &str = "one_driver_per_segment";
/// See the module table.
pub const CHARGE_ONLY: &str = "charge_only_when_cut_off";
/// See the module table.
pub const TAKEOVER: &str = "takeover";
/// See the module table.
pub const SETTLES: &str = "settles";
/// See the module table.
pub const ACKNOWLEDGED: &str = "acknowledged_not_lost";
/// See the module table.
pub const MONOTONE: &str = "acknowledged_monotone";
/// See the module table.
pub const HANDOFFS: &str = "handoffs";

/// One node's `/api/cluster`, the parts the checks use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    /// Its lease: Driving, ChargeOnly, Stopped.
    pub lease: String,
    /// The committed members it sees.
    pub members: BTreeSet<String>,
    /// The segments it drives (`driven_here`).
    pub driving: BTreeSet<String>,
    /// When its answer came, ms after the run's start.
    pub at_ms: u64,
}

/// Every node's view, polled one after the other.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Round {
    /// When the first poll started, ms.
    pub t_ms: u64,
    /// When the last answer came, ms.
    pub end_ms: u64,
    /// Per node; None: no answer (killed, or not up yet).
    pub nodes: BTreeMap<String, Option<NodeView>>,
}

/// Who can reach whom after the faults so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reach {
    /// Processes running.
    pub live: BTreeSet<String>,
    /// The live nodes linked to a majority of the configured nodes (None: no majority).
    pub majority: Option<BTreeSet<String>>,
    /// Live nodes outside the majority.
    pub cut_off: BTreeSet<String>,
}

impl Reach {
    /// Components of the live nodes, two linked when `linked(x, y)` (both directions).
    pub fn compute(
        nodes: &[String],
        live: &BTreeSet<String>,
        linked: impl Fn(&str, &str) -> bool,
    ) -> Reach {
        let need = nodes.len() / 2 + 1;
        let mut left: BTreeSet<String> = live.clone();
        let mut majority = None;
        while let Some(first) = left.iter().next().cloned() {
            let mut comp = BTreeSet::from([first.clone()]);
            let mut todo = vec![first];
            while let Some(x) = todo.pop() {
                for y in live {
                    if !comp.contains(y) && linked(&x, y) && linked(y, &x) {
                        comp.insert(y.clone());
                        todo.push(y.clone());
                    }
                }
            }
            for c in &comp {
                left.remove(c);
            }
            if comp.len() >= need {
                majority = Some(comp);
            }
        }
        let cut_off = live
            .iter()
            .filter(|n| !majority.as_ref().is_some_and(|m| m.contains(*n)))
            .cloned()
            .collect();
        Reach {
            live: live.clone(),
            majority,
            cut_off,
        }
    }
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// Which.
    pub invariant: &'static str,
    /// When, ms after the run's start.
    pub t_ms: i64,
    /// What was seen.
    pub message: String,
}

/// One invariant's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Its name.
    pub name: &'static str,
    /// Its bound, as the scenario set it.
    pub bound: String,
    /// It held.
    pub held: bool,
    /// How many times it was put to the test (obligations, handoffs, segments).
    pub checks: u64,
    /// The smallest margin to its bound (negative: broken), in `unit`.
    pub worst_margin: Option<f64>,
    /// The margin's unit.
    pub unit: &'static str,
    /// Its first violation.
    pub first_violation: Option<Violation>,
}

impl Summary {
    fn new(name: &'static str, bound: String, unit: &'static str) -> Summary {
        Summary {
            name,
            bound,
            held: true,
            checks: 0,
            worst_margin: None,
            unit,
            first_violation: None,
        }
    }

    fn margin(&mut self, m: f64) {
        self.checks += 1;
        self.worst_margin = Some(self.worst_margin.map_or(m, |w| w.min(m)));
    }

    fn violate(&mut self, t_ms: i64, message: String) {
        self.held = false;
        if self.first_violation.is_none() {
            self.first_violation = Some(Violation {
                invariant: self.name,
                t_ms,
                message,
            });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ChargeOnly,
    Takeover,
    Settles,
}

#[derive(Debug, Clone)]
struct Obligation {
    kind: Kind,
    node: Option<String>,
    opened_ms: u64,
    deadline_ms: u64,
    cause: String,
    /// Its deadline passed: broken, still followed for the real latency (the margin).
    late: bool,
}

/// The obligations faults open (ChargeOnly of a cut-off node, takeover, settling again),
/// discharged or broken by the rounds that follow.
pub struct Checks {
    bounds: Bounds,
    settle_limit_s: f64,
    segments: BTreeSet<String>,
    reach: Reach,
    open: Vec<Obligation>,
    charge_only: Summary,
    takeover: Summary,
    settles: Summary,
}

/// Every segment driven by exactly one node of `m` in `round`. A node that did not answer
/// (one just restarted, still starting) counts as driving nothing: the logs' check catches a
/// driver that hid that way.
fn one_driver_each(
    round: &Round,
    m: &BTreeSet<String>,
    segments: &BTreeSet<String>,
) -> Result<(), String> {
    let mut count: BTreeMap<&str, Vec<&str>> =
        segments.iter().map(|s| (s.as_str(), vec![])).collect();
    for n in m {
        let Some(Some(v)) = round.nodes.get(n) else {
            continue;
        };
        for s in &v.driving {
            count.entry(s).or_default().push(n);
        }
    }
    let wrong: Vec<String> = count
        .iter()
        .filter(|(_, d)| d.len() != 1)
        .map(|(s, d)| format!("{s} driven by [{}]", d.join(", ")))
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

fn settled(round: &Round, m: &BTreeSet<String>, segments: &BTreeSet<String>) -> Result<(), String> {
    for n in m {
        let Some(Some(v)) = round.nodes.get(n) else {
            return Err(format!("{n} did not answer"));
        };
        if &v.members != m {
            return Err(format!("{n} sees members {:?}", v.members));
        }
        if v.lease != "Driving" {
            return Err(format!("{n}'s lease is {}", v.lease));
        }
    }
    one_driver_each(round, m, segments)
}

impl Checks {
    /// Checks for a cluster that settled with `segments` driven, every node reachable.
    pub fn new(
        bounds: Bounds,
        settle_limit_s: f64,
        segments: BTreeSet<String>,
        reach: Reach,
    ) -> Checks {
        Checks {
            charge_only: Summary::new(CHARGE_ONLY, format!("{} s", bounds.charge_only_s), "s"),
            takeover: Summary::new(TAKEOVER, format!("{} s", bounds.takeover_s), "s"),
            settles: Summary::new(SETTLES, format!("{settle_limit_s} s"), "s"),
            bounds,
            settle_limit_s,
            segments,
            reach,
            open: Vec::new(),
        }
    }

    /// What the faults so far left.
    pub fn reach(&self) -> &Reach {
        &self.reach
    }

    /// A fault at `t_ms` left `after`. `killed`: it killed a node; `rejoined`: a heal or a
    /// restart (the cluster must settle again).
    pub fn fault(&mut self, t_ms: u64, cause: &str, after: Reach, killed: bool, rejoined: bool) {
        let ms = |s: f64| (s * 1_000.0).round() as u64;
        let newly_cut: Vec<String> = after
            .cut_off
            .difference(&self.reach.cut_off)
            .cloned()
            .collect();
        for n in &newly_cut {
            self.open.push(Obligation {
                kind: Kind::ChargeOnly,
                node: Some(n.clone()),
                opened_ms: t_ms,
                deadline_ms: t_ms + ms(self.bounds.charge_only_s),
                cause: cause.to_string(),
                late: false,
            });
        }
        // A node healed or killed before its lease aged has nothing left to prove.
        self.open.retain(|o| {
            o.kind != Kind::ChargeOnly || o.node.as_ref().is_some_and(|n| after.cut_off.contains(n))
        });
        if after.majority.is_some() && (killed || !newly_cut.is_empty()) {
            self.open.push(Obligation {
                kind: Kind::Takeover,
                node: None,
                opened_ms: t_ms,
                deadline_ms: t_ms + ms(self.bounds.takeover_s),
                cause: cause.to_string(),
                late: false,
            });
        }
        if after.majority.is_some() && rejoined {
            self.open.push(Obligation {
                kind: Kind::Settles,
                node: None,
                opened_ms: t_ms,
                deadline_ms: t_ms + ms(self.settle_limit_s),
                cause: cause.to_string(),
                late: false,
            });
        }
        self.reach = after;
    }

    /// A round of samples.
    pub fn round(&mut self, r: &Round) {
        let mut keep = Vec::new();
        for o in std::mem::take(&mut self.open) {
            let (ok, at_ms, bound_s) = match o.kind {
                Kind::ChargeOnly => {
                    let n = o.node.clone().unwrap_or_default();
                    match r.nodes.get(&n) {
                        Some(Some(v)) if v.lease != "Driving" => {
                            (Ok(()), v.at_ms, self.bounds.charge_only_s)
                        }
                        Some(Some(v)) => (
                            Err(format!("{n}'s lease still Driving")),
                            v.at_ms,
                            self.bounds.charge_only_s,
                        ),
                        _ => (
                            Err(format!("{n} did not answer")),
                            r.end_ms,
                            self.bounds.charge_only_s,
                        ),
                    }
                }
                Kind::Takeover | Kind::Settles => {
                    let bound = if o.kind == Kind::Takeover {
                        self.bounds.takeover_s
                    } else {
                        self.settle_limit_s
                    };
                    let res = match &self.reach.majority {
                        None => Err("no majority".to_string()),
                        Some(m) if o.kind == Kind::Takeover => {
                            one_driver_each(r, m, &self.segments)
                        }
                        Some(m) => settled(r, m, &self.segments),
                    };
                    (res, r.end_ms, bound)
                }
            };
            let summary = match o.kind {
                Kind::ChargeOnly => &mut self.charge_only,
                Kind::Takeover => &mut self.takeover,
                Kind::Settles => &mut self.settles,
            };
            let latency_s = at_ms.saturating_sub(o.opened_ms) as f64 / 1_000.0;
            match ok {
                Ok(()) => {
                    let margin = bound_s - latency_s;
                    summary.margin(margin);
                    if margin < 0.0 {
                        summary.violate(
                            o.deadline_ms as i64,
                            format!(
                                "after {} at {:.3} s{}: first seen after {latency_s:.3} s, bound {bound_s} s",
                                o.cause,
                                o.opened_ms as f64 / 1e3,
                                o.node.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
                            ),
                        );
                    }
                }
                Err(seen) if r.t_ms > o.deadline_ms && !o.late => {
                    summary.violate(
                        o.deadline_ms as i64,
                        format!(
                            "after {} at {:.3} s: not within {bound_s} s; at {:.3} s: {seen}",
                            o.cause,
                            o.opened_ms as f64 / 1e3,
                            r.t_ms as f64 / 1e3
                        ),
                    );
                    keep.push(Obligation { late: true, ..o });
                }
                Err(_) => keep.push(o),
            }
        }
        self.open = keep;
    }

    /// The latest deadline of an open obligation, ms.
    pub fn last_deadline(&self) -> Option<u64> {
        self.open
            .iter()
            .filter(|o| !o.late)
            .map(|o| o.deadline_ms)
            .max()
    }

    /// The run is over at `t_ms`: whatever is still open broke its bound.
    pub fn finish(mut self, t_ms: u64) -> Vec<Summary> {
        for o in std::mem::take(&mut self.open) {
            let (summary, bound) = match o.kind {
                Kind::ChargeOnly => (&mut self.charge_only, self.bounds.charge_only_s),
                Kind::Takeover => (&mut self.takeover, self.bounds.takeover_s),
                Kind::Settles => (&mut self.settles, self.settle_limit_s),
            };
            summary.margin(bound - t_ms.saturating_sub(o.opened_ms) as f64 / 1e3);
            if o.late {
                continue;
            }
            summary.violate(
                o.deadline_ms as i64,
                format!(
                    "after {} at {:.3} s: not seen by the end of the run ({:.3} s), bound {bound} s",
                    o.cause,
                    o.opened_ms as f64 / 1e3,
                    t_ms as f64 / 1e3
                ),
            );
        }
        vec![self.charge_only, self.takeover, self.settles]
    }
}

/// A node's typed events and the times (seconds since the epoch) its processes were killed,
/// in order.
pub struct NodeEvents<'a> {
    /// The node.
    pub node: &'a str,
    /// Its event records (every process of it, appended: gridvisor-cluster-node's
    /// `events::read_events` of its data dir's events file).
    pub records: &'a [EventRecord],
    /// SIGKILL times.
    pub kills: &'a [f64],
}

/// A node drove a segment from..to (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    /// The segment.
    pub segment: String,
    /// The node.
    pub node: String,
    /// From.
    pub from: f64,
    /// To (infinite: still driving at the end).
    pub to: f64,
}

/// Every driving interval in the nodes' events, and the adoption times; an error when an
/// event log cannot be trusted (a record with a bad time, a truncated file).
pub fn intervals(nodes: &[NodeEvents<'_>]) -> Result<(Vec<Interval>, Vec<f64>), String> {
    let mut out = Vec::new();
    let mut adoptions = Vec::new();
    for n in nodes {
        let mut open: BTreeMap<String, f64> = BTreeMap::new();
        let mut kills = n.kills.iter();
        let mut started = false;
        let close_all = |out: &mut Vec<Interval>, open: &mut BTreeMap<String, f64>, at: f64| {
            for (segment, from) in std::mem::take(open) {
                let node = n.node.to_string();
                out.push(Interval {
                    segment,
                    node,
                    from,
                    to: at,
                });
            }
        };
        for r in n.records {
            let at = parse_time(&r.at)
                .ok_or_else(|| format!("{}: event {} has a bad time {:?}", n.node, r.seq, r.at))?;
            match &r.event {
                ClusterEvent::Adopting { segment, .. } => {
                    adoptions.push(at);
                    open.insert(segment.clone(), at);
                }
                ClusterEvent::Released { segment, .. } => {
                    if let Some(from) = open.remove(segment) {
                        let (segment, node) = (segment.clone(), n.node.to_string());
                        out.push(Interval {
                            segment,
                            node,
                            from,
                            to: at,
                        });
                    }
                }
                ClusterEvent::Lease {
                    to: LeaseState::Stopped,
                    ..
                } => {
                    // The lease gate commands nothing from the lease's end (this record comes
                    // at the first heartbeat period after it), even if the reconcile pass
                    // releases the segments later; nothing is driven again before the next
                    // `adopting` (a lease back while segments are held is `lapsed`).
                    close_all(&mut out, &mut open, at);
                }
                ClusterEvent::Started { .. } => {
                    // A process after the first: the one before was killed.
                    if started {
                        let killed = kills.next().copied().unwrap_or(at);
                        close_all(&mut out, &mut open, killed);
                    }
                    started = true;
                }
                ClusterEvent::Truncated { bytes } => {
                    return Err(format!(
                        "{}: the events file was truncated at {bytes} bytes: its intervals are incomplete",
                        n.node
                    ));
                }
                _ => {}
            }
        }
        let end = kills.next().copied().unwrap_or(f64::INFINITY);
        close_all(&mut out, &mut open, end);
    }
    Ok((out, adoptions))
}

/// `one_driver_per_segment` when the events could not be read: broken, saying why.
pub fn unreadable_events(why: String) -> Summary {
    let mut s = Summary::new(ONE_DRIVER, "no overlap".into(), "s");
    s.violate(0, why);
    s
}

/// `one_driver_per_segment` over `intervals`; `t0` (epoch seconds) is the run's start, for
/// the violation's time. The margin is the smallest gap between one node's release and the
/// next node's adoption of a segment, s (negative: an overlap).
pub fn one_driver(intervals: &[Interval], t0: f64) -> Summary {
    let mut s = Summary::new(ONE_DRIVER, "no overlap".into(), "s");
    let mut by: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
    for i in intervals {
        by.entry(&i.segment).or_default().push(i);
    }
    for (seg, mut list) in by {
        list.sort_by(|a, b| a.from.total_cmp(&b.from));
        for (k, b) in list.iter().enumerate() {
            // Every earlier interval of another node must have ended before b began.
            for a in &list[..k] {
                if a.node == b.node {
                    continue;
                }
                let gap = b.from - a.to;
                s.margin(if gap.is_finite() { gap } else { -1e9 });
                if gap < 0.0 {
                    s.violate(
                        ((b.from - t0) * 1e3).round() as i64,
                        format!(
                            "{seg} driven by {} ({:.3}..{}) and {} (from {:.3}) at once",
                            a.node,
                            a.from - t0,
                            if a.to.is_finite() {
                                format!("{:.3}", a.to - t0)
                            } else {
                                "the end".into()
                            },
                            b.node,
                            b.from - t0
                        ),
                    );
                }
            }
        }
    }
    s
}

/// `handoffs`: adoptions (epoch seconds) after `t0` at most `max`.
pub fn handoffs(adoptions: &[f64], t0: f64, max: u64) -> Summary {
    let mut s = Summary::new(HANDOFFS, format!("at most {max}"), "adoptions");
    let after: Vec<f64> = adoptions.iter().copied().filter(|a| *a > t0).collect();
    s.checks = after.len() as u64;
    s.worst_margin = Some(max as f64 - after.len() as f64);
    if after.len() as u64 > max {
        let mut sorted = after.clone();
        sorted.sort_by(f64::total_cmp);
        s.violate(
            ((sorted[max as usize] - t0) * 1e3).round() as i64,
            format!(
                "{} adoptions after the cluster settled, at most {max} allowed",
                after.len()
            ),
        );
    }
    s
}

/// The newest acknowledged dispatch of a segment: its id, and how many devices acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Acked {
    /// The dispatch id.
    pub dispatch: u64,
    /// Devices that applied it (or had).
    pub devices: u64,
    /// When the runner got the receipt, ms.
    pub t_ms: u64,
}

/// `acknowledged_not_lost`: per segment, at least `devices` chargers show an applied
/// dispatch id no older than the acknowledged one. (Ids of different nodes are comparable:
/// an adopting node moves its ids past the adopted ones; revisions are not.) `applied` is
/// each segment's chargers' applied dispatch ids at the end, or why they could not be read.
pub fn acknowledged(
    acked: &BTreeMap<String, Acked>,
    applied: &BTreeMap<String, Result<BTreeMap<String, u64>, String>>,
    end_ms: u64,
) -> Summary {
    let mut s = Summary::new(
        ACKNOWLEDGED,
        "applied >= acknowledged".into(),
        "dispatch ids",
    );
    for (seg, a) in acked {
        match applied.get(seg) {
            Some(Ok(chargers)) => {
                let newer = chargers.values().filter(|d| **d >= a.dispatch).count() as u64;
                let oldest = chargers.values().copied().min().unwrap_or(0);
                s.margin(oldest as f64 - a.dispatch as f64);
                if newer < a.devices {
                    s.violate(
                        end_ms as i64,
                        format!(
                            "{seg}: dispatch {} was acknowledged by {} devices at {:.3} s, but only {newer} show it or newer: {chargers:?}",
                            a.dispatch,
                            a.devices,
                            a.t_ms as f64 / 1e3
                        ),
                    );
                }
            }
            Some(Err(e)) => s.violate(
                end_ms as i64,
                format!("{seg}: cannot read its applied keys: {e}"),
            ),
            None => s.violate(
                end_ms as i64,
                format!("{seg}: its applied keys were not read"),
            ),
        }
    }
    s
}

/// A fully acknowledged segment receipt.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// The segment.
    pub segment: String,
    /// Its dispatch id.
    pub dispatch: u64,
    /// The request was sent, ms.
    pub sent_ms: u64,
    /// Its answer came, ms.
    pub answered_ms: u64,
    /// The node the request went to.
    pub node: String,
}

/// `acknowledged_monotone`: a segment's acknowledged dispatch ids never go back. A request
/// sent after another's acknowledgement came must get a larger id for the same segment
/// (an adopting node moves its ids past the adopted state's): a smaller one means the
/// segment's new driver started from state older than an acknowledged setpoint, which was
/// lost in between even if later ids climb past it again. The margin is the smallest step
/// between such ordered pairs, in ids.
pub fn monotone(receipts: &[Receipt]) -> Summary {
    let mut s = Summary::new(MONOTONE, "ids never go back".into(), "dispatch ids");
    let mut by: BTreeMap<&str, Vec<&Receipt>> = BTreeMap::new();
    for r in receipts {
        by.entry(&r.segment).or_default().push(r);
    }
    for (seg, mut list) in by {
        list.sort_by_key(|r| r.sent_ms);
        for (k, later) in list.iter().enumerate() {
            let Some(before) = list[..k]
                .iter()
                .filter(|e| e.answered_ms < later.sent_ms)
                .max_by_key(|e| e.dispatch)
            else {
                continue;
            };
            let step = later.dispatch as f64 - before.dispatch as f64;
            s.margin(step);
            if step <= 0.0 {
                s.violate(
                    later.answered_ms as i64,
                    format!(
                        "{seg}: dispatch {} acknowledged (via {}, answered at {:.3} s) after dispatch {} had been (via {}, at {:.3} s): its driver went back to older state",
                        later.dispatch,
                        later.node,
                        later.answered_ms as f64 / 1e3,
                        before.dispatch,
                        before.node,
                        before.answered_ms as f64 / 1e3
                    ),
                );
            }
        }
    }
    s
}

/// `2026-12-02T11:48:09.518350Z` (RFC 3339) → seconds since the epoch; None when it is not
/// a date-time that exists.
pub fn parse_time(t: &str) -> Option<f64> {
    let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some((at - time::OffsetDateTime::UNIX_EPOCH).as_seconds_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["node-a", "node-b", "node-c"].map(String::from).to_vec()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn view(lease: &str, members: &[&str], driving: &[&str], at_ms: u64) -> Option<NodeView> {
        Some(NodeView {
            lease: lease.into(),
            members: set(members),
            driving: set(driving),
            at_ms,
        })
    }

    #[test]
    fn reach_finds_the_majority_and_the_cut_off() {
        let all = set(&["node-a", "node-b", "node-c"]);
        let r = Reach::compute(&names(), &all, |x, y| x != "node-a" && y != "node-a");
        assert_eq!(r.majority, Some(set(&["node-b", "node-c"])));
        assert_eq!(r.cut_off, set(&["node-a"]));
        let r = Reach::compute(&names(), &set(&["node-a"]), |_, _| true);
        assert_eq!(r.majority, None);
        // One direction cut is a cut.
        let r = Reach::compute(&names(), &all, |x, y| {
            x != "node-a" || (y != "node-b" && y != "node-c")
        });
        assert_eq!(r.cut_off, set(&["node-a"]));
    }

    #[test]
    fn a_takeover_too_slow_breaks_its_bound_and_a_fast_one_holds() {
        let all = set(&["node-a", "node-b", "node-c"]);
        let segs = set(&["tx-1", "tx-2"]);
        let bounds = Bounds {
            charge_only_s: 1.0,
            takeover_s: 2.0,
            max_handoffs: None,
            acknowledged_monotone: true,
        };
        let full = Reach::compute(&names(), &all, |_, _| true);
        let mut c = Checks::new(bounds, 10.0, segs.clone(), full);
        let two = set(&["node-a", "node-b"]);
        c.fault(
            1_000,
            "kill_node node-c",
            Reach::compute(&names(), &two, |_, _| true),
            true,
            false,
        );
        let round = |t: u64, b: &[&str]| Round {
            t_ms: t,
            end_ms: t + 5,
            nodes: BTreeMap::from([
                (
                    "node-a".to_string(),
                    view("Driving", &["node-a", "node-b"], &["tx-1"], t),
                ),
                (
                    "node-b".to_string(),
                    view("Driving", &["node-a", "node-b"], b, t),
                ),
                ("node-c".to_string(), None),
            ]),
        };
        c.round(&round(1_500, &[]));
        assert_eq!(c.last_deadline(), Some(3_000));
        c.round(&round(2_500, &["tx-2"]));
        assert_eq!(c.last_deadline(), None);
        // Too slow this time.
        c.fault(
            4_000,
            "restart",
            Reach::compute(&names(), &all, |_, _| true),
            false,
            true,
        );
        c.fault(
            5_000,
            "kill_node node-a",
            Reach::compute(&names(), &set(&["node-b", "node-c"]), |_, _| true),
            true,
            false,
        );
        let late = Round {
            t_ms: 7_100,
            end_ms: 7_105,
            nodes: BTreeMap::from([
                ("node-a".to_string(), None),
                (
                    "node-b".to_string(),
                    view("Driving", &["node-b", "node-c"], &["tx-2"], 7_100),
                ),
                (
                    "node-c".to_string(),
                    view("Driving", &["node-b", "node-c"], &[], 7_100),
                ),
            ]),
        };
        c.round(&late);
        let s = c.finish(8_000);
        let t = s.iter().find(|s| s.name == TAKEOVER).unwrap();
        assert!(!t.held);
        assert!(t
            .first_violation
            .as_ref()
            .unwrap()
            .message
            .contains("tx-1 driven by []"));
        assert_eq!(t.first_violation.as_ref().unwrap().t_ms, 7_000);
        // Never taken over: the margin runs to the end of the run.
        assert!((t.worst_margin.unwrap() - -1.0).abs() < 1e-9, "{t:?}");
        // The settle after the restart never came: broken at the end.
        let st = s.iter().find(|s| s.name == SETTLES).unwrap();
        assert!(!st.held);
    }

    #[test]
    fn a_cut_off_node_must_leave_driving() {
        let all = set(&["node-a", "node-b", "node-c"]);
        let full = Reach::compute(&names(), &all, |_, _| true);
        let mut c = Checks::new(Bounds::default(), 10.0, set(&["tx-1"]), full);
        let cut = Reach::compute(&names(), &all, |x, y| x != "node-a" && y != "node-a");
        c.fault(0, "partition node-a", cut, false, false);
        let r = |t: u64, lease: &str| Round {
            t_ms: t,
            end_ms: t,
            nodes: BTreeMap::from([("node-a".to_string(), view(lease, &[], &[], t))]),
        };
        c.round(&r(500, "Driving"));
        c.round(&r(700, "ChargeOnly"));
        let s = c.finish(800);
        let co = &s[0];
        assert!(co.held && co.checks == 1, "{co:?}");
        assert!((co.worst_margin.unwrap() - 0.3).abs() < 1e-9);
        // The takeover never came: broken.
        assert!(!s[1].held);
    }

    fn record(node: &str, seq: u64, t: &str, event: ClusterEvent) -> EventRecord {
        EventRecord {
            node: node.into(),
            seq,
            at: t.into(),
            event,
        }
    }

    fn adopting(seg: &str) -> ClusterEvent {
        ClusterEvent::Adopting {
            segment: seg.into(),
            epoch: 1,
        }
    }

    #[test]
    fn overlapping_drivers_in_the_events_are_caught_and_kills_close_intervals() {
        use gridvisor_cluster_node::plan::ReleaseReason;
        let started = ClusterEvent::Started { boot: 1 };
        let a = [
            record("node-a", 1, "2026-01-01T00:00:00.000Z", started.clone()),
            record("node-a", 2, "2026-01-01T00:00:01.000Z", adopting("tx-1")),
            record("node-a", 1, "2026-01-01T00:00:05.000Z", started.clone()),
        ];
        let released = ClusterEvent::Released {
            segment: "tx-1".into(),
            reason: ReleaseReason::Moved,
        };
        let b = [
            record("node-b", 1, "2026-01-01T00:00:00.000Z", started.clone()),
            record("node-b", 2, "2026-01-01T00:00:03.500Z", adopting("tx-1")),
            record("node-b", 3, "2026-01-01T00:00:06.000Z", released),
        ];
        let t0 = parse_time("2026-01-01T00:00:00.000Z").unwrap();
        let kills = [t0 + 3.0];
        let nodes = |kills| {
            [
                NodeEvents {
                    node: "node-a",
                    records: &a,
                    kills,
                },
                NodeEvents {
                    node: "node-b",
                    records: &b,
                    kills: &[],
                },
            ]
        };
        let (iv, adoptions) = intervals(&nodes(&kills)).unwrap();
        assert_eq!(adoptions.len(), 2);
        let s = one_driver(&iv, t0);
        assert!(s.held, "{s:?}");
        assert!((s.worst_margin.unwrap() - 0.5).abs() < 1e-6);
        // Killed later than b adopted: an overlap.
        let kills = [t0 + 4.0];
        let s = one_driver(&intervals(&nodes(&kills)).unwrap().0, t0);
        assert!(!s.held);
        assert!(s
            .first_violation
            .unwrap()
            .message
            .contains("tx-1 driven by node-a"));
        assert!(!handoffs(&adoptions, t0 + 2.0, 0).held);
        assert!(handoffs(&adoptions, t0 + 2.0, 1).held);
    }

    #[test]
    fn a_stopped_lease_ends_the_intervals_before_a_late_release() {
        use gridvisor_cluster_node::plan::ReleaseReason;
        let stopped = ClusterEvent::Lease {
            from: LeaseState::ChargeOnly,
            to: LeaseState::Stopped,
        };
        let released = ClusterEvent::Released {
            segment: "tx-1".into(),
            reason: ReleaseReason::LeaseEnded,
        };
        let c = [
            record(
                "node-c",
                1,
                "2026-01-01T00:00:00Z",
                ClusterEvent::Started { boot: 1 },
            ),
            record("node-c", 2, "2026-01-01T00:00:01Z", adopting("tx-1")),
            record("node-c", 3, "2026-01-01T00:00:02Z", stopped),
            record("node-c", 4, "2026-01-01T00:00:04Z", released),
        ];
        let a = [record(
            "node-a",
            1,
            "2026-01-01T00:00:03Z",
            adopting("tx-1"),
        )];
        let n = [
            NodeEvents {
                node: "node-c",
                records: &c,
                kills: &[],
            },
            NodeEvents {
                node: "node-a",
                records: &a,
                kills: &[],
            },
        ];
        let (iv, _) = intervals(&n).unwrap();
        let t0 = parse_time("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(iv[0].to - t0, 2.0, "{iv:?}");
        let s = one_driver(&iv, t0);
        assert!(s.held, "{s:?}");
        assert!((s.worst_margin.unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn events_that_cannot_be_trusted_are_an_error() {
        let truncated = [record(
            "node-a",
            1,
            "2026-01-01T00:00:00Z",
            ClusterEvent::Truncated { bytes: 9 },
        )];
        let bad_time = [record("node-a", 7, "yesterday", adopting("tx-1"))];
        for (records, want) in [(&truncated[..], "truncated"), (&bad_time[..], "event 7")] {
            let n = [NodeEvents {
                node: "node-a",
                records,
                kills: &[],
            }];
            let err = intervals(&n).unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(!unreadable_events(err).held);
        }
    }

    #[test]
    fn acknowledged_ids_must_not_go_back() {
        let r = |d: u64, sent: u64, node: &str| Receipt {
            segment: "tx-2".into(),
            dispatch: d,
            sent_ms: sent,
            answered_ms: sent + 30,
            node: node.into(),
        };
        assert!(
            monotone(&[
                r(7, 0, "node-a"),
                r(11, 100, "node-b"),
                r(12, 200, "node-c")
            ])
            .held
        );
        // Concurrent requests (sent before the other's answer) may come in any order.
        assert!(monotone(&[r(8, 0, "node-a"), r(7, 10, "node-b")]).held);
        let s = monotone(&[
            r(11, 0, "node-a"),
            r(5, 100, "node-c"),
            r(13, 200, "node-c"),
        ]);
        assert!(!s.held && s.worst_margin == Some(-6.0), "{s:?}");
        assert!(s.first_violation.unwrap().message.contains("dispatch 5"));
    }

    #[test]
    fn acknowledged_dispatches_must_be_applied() {
        let acked = BTreeMap::from([(
            "tx-1".to_string(),
            Acked {
                dispatch: 7,
                devices: 2,
                t_ms: 10,
            },
        )]);
        let ok = BTreeMap::from([(
            "tx-1".to_string(),
            Ok(BTreeMap::from([
                ("evse-1".to_string(), 7),
                ("evse-2".to_string(), 9),
            ])),
        )]);
        assert!(acknowledged(&acked, &ok, 0).held);
        let lost = BTreeMap::from([(
            "tx-1".to_string(),
            Ok(BTreeMap::from([
                ("evse-1".to_string(), 6),
                ("evse-2".to_string(), 9),
            ])),
        )]);
        let s = acknowledged(&acked, &lost, 0);
        assert!(!s.held && s.worst_margin == Some(-1.0));
    }
}
