//! The node's clock source: what the safe-state ladder's PTP rows read.
//!
//! Three sources (`[safety.clock] source`, see [`crate::config::ClockConfig`]):
//!
//! - `ptp4l`: the `node/clock` poller (`runtime/clock_source.rs`) asks ptp4l's management
//!   socket every `poll_ms` for TIME_STATUS_NP and PORT_DATA_SET and publishes each answer
//!   (or failure) into the [`ClockBoard`]; every safety tick judges the board with
//!   [`judge`], a pure function of the board, the settings and the time. The poller is its
//!   own actor so that a hung ptp4l can never hold up a safety actor: a tick reads the
//!   board and never waits for ptp4l.
//! - `simulated`: the simulated monitor ([`crate::device::SimPtp`]) that tests, the demo and
//!   chaos runs set: an offset, or unsynchronised.
//! - `none`: the PTP rows are off, on purpose (said at start, in the API and in
//!   `gridvisor_clock_source{source="none"}`).
//!
//! # Rules ([`judge`])
//!
//! Unsynchronised (cause `clock_unsynchronised`, ChargeOnly) when: no good answer from
//! ptp4l yet, or the last one is older than `stale_ms`; `gmPresent` false; a port state that
//! does not follow a grandmaster (only SLAVE, and UNCALIBRATED with `accept_uncalibrated`);
//! `ingress_time` 0 (ptp4l resets it when the port leaves its master) or unchanged for longer
//! than `stale_ms` (no new Sync). The age of the last Sync is measured by when the node saw
//! `ingress_time` change, on the node's own monotonic clock, not by comparing it with the
//! host's clock: ptp4l reports it in the time stamps' clock (CLOCK_REALTIME with software
//! time stamps, the PHC's with hardware ones), which the node need not share. After the
//! grandmaster is gone, ptp4l keeps `gmPresent` true and the last `master_offset` (measured
//! with ptp4l 3.1.1): the port state and the Sync age catch it.
//!
//! Synchronised: `|master_offset|` feeds the drift rows (ChargeOnly above
//! `ptp_charge_only_ms`, Tripped above `ptp_trip_ms`). An unsynchronised clock feeds no
//! offset at all: a missing reading never counts as 0, and a drift cause keeps its level
//! until a synchronised reading clears it.

use std::sync::Mutex;
use std::time::Duration;

use gridvisor_transports::ptp::{PortDataSet, PortState, TimeStatusNp};
use serde::Serialize;

use crate::config::{ClockConfig, ClockSourceKind};
use crate::ladder::{Fault, SafeStateLadder, Transition};

/// What a ptp4l poll found, with what the node tracked about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PtpSample {
    /// When it was read (the node's clock).
    pub at: Duration,
    /// master_offset, ns.
    pub master_offset_ns: i64,
    /// gmPresent.
    pub gm_present: bool,
    /// The port's state.
    pub port_state: PortState,
    /// ingress_time as ptp4l reported it (0: no Sync since the port left its master).
    pub ingress_time_ns: i64,
    /// When the node first saw this `ingress_time` (the node's clock).
    pub ingress_seen_at: Duration,
}

/// The latest of ptp4l's answers, as the poller publishes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClockBoardState {
    /// The last good sample.
    pub last: Option<PtpSample>,
    /// The last failure (cleared by a good sample): why ptp4l gave nothing usable.
    pub error: Option<String>,
}

/// The board the poller writes and the safety ticks read.
#[derive(Debug, Default)]
pub struct ClockBoard {
    state: Mutex<ClockBoardState>,
}

impl ClockBoard {
    /// Publish a good answer: TIME_STATUS_NP and PORT_DATA_SET read at `now`.
    pub fn publish(&self, ts: &TimeStatusNp, port: &PortDataSet, now: Duration) {
        let mut s = crate::lock(&self.state);
        let ingress_seen_at = match s.last {
            Some(prev) if prev.ingress_time_ns == ts.ingress_time_ns => prev.ingress_seen_at,
            _ => now,
        };
        s.last = Some(PtpSample {
            at: now,
            master_offset_ns: ts.master_offset_ns,
            gm_present: ts.gm_present,
            port_state: port.port_state,
            ingress_time_ns: ts.ingress_time_ns,
            ingress_seen_at,
        });
        s.error = None;
    }

    /// Publish a failed poll (the last good sample stays, and ages).
    pub fn fail(&self, error: String) {
        crate::lock(&self.state).error = Some(error);
    }

    /// The board now.
    pub fn snapshot(&self) -> ClockBoardState {
        crate::lock(&self.state).clone()
    }
}

/// The clock as the ladder sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ClockStatus {
    /// The PTP rows are off (`source = "none"`).
    Off,
    /// Synchronised, with this offset from the master.
    Synchronised {
        /// master_offset, ns (signed).
        offset_ns: i64,
    },
    /// Not synchronised: why.
    Unsynchronised {
        /// Why, for operators.
        reason: String,
    },
}

/// Judge ptp4l's board at `now` by the rules of the module docs.
pub fn judge(board: &ClockBoardState, now: Duration, c: &ClockConfig) -> ClockStatus {
    let unsync = |reason: String| ClockStatus::Unsynchronised { reason };
    let stale = Duration::from_millis(c.stale_ms);
    let Some(s) = board.last else {
        let why = board.error.as_deref().unwrap_or("no answer yet");
        return unsync(format!(
            "no reading from ptp4l at {}: {why}",
            c.path.display()
        ));
    };
    let age = now.saturating_sub(s.at);
    if age > stale {
        let why = board.error.as_deref().unwrap_or("no answer");
        return unsync(format!(
            "last reading from ptp4l {} ms ago (bound {} ms): {why}",
            age.as_millis(),
            c.stale_ms
        ));
    }
    if !s.gm_present {
        return unsync("ptp4l has no grandmaster (gmPresent false)".into());
    }
    let following = s.port_state == PortState::Slave
        || (c.accept_uncalibrated && s.port_state == PortState::Uncalibrated);
    if !following {
        let hint = if s.port_state == PortState::Uncalibrated {
            " (accept_uncalibrated is false)"
        } else {
            ""
        };
        return unsync(format!(
            "ptp4l's port is {}, not following a grandmaster{hint}",
            s.port_state
        ));
    }
    if s.ingress_time_ns == 0 {
        return unsync("ptp4l has received no Sync (ingress_time 0)".into());
    }
    let sync_age = now.saturating_sub(s.ingress_seen_at);
    if sync_age > stale {
        return unsync(format!(
            "no new Sync for {} ms (bound {} ms)",
            sync_age.as_millis(),
            c.stale_ms
        ));
    }
    ClockStatus::Synchronised {
        offset_ns: s.master_offset_ns,
    }
}

/// Feed a clock status to a ladder (the safety tick): nothing when off; synchronised clears
/// `clock_unsynchronised` and feeds |offset| to the drift rows; unsynchronised raises
/// `clock_unsynchronised` and feeds no offset. Returns the newest transition.
pub fn observe(ladder: &mut SafeStateLadder, s: &ClockStatus, now: Duration) -> Option<Transition> {
    match s {
        ClockStatus::Off => None,
        ClockStatus::Synchronised { offset_ns } => {
            let t = ladder.observe(Fault::ClockUnsynchronised(false), now);
            let offset = Duration::from_nanos(offset_ns.unsigned_abs());
            ladder.observe(Fault::ClockOffset(offset), now).or(t)
        }
        ClockStatus::Unsynchronised { .. } => ladder.observe(Fault::ClockUnsynchronised(true), now),
    }
}

/// The clock source as the API shows it (a field of every segment).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClockView {
    /// `ptp4l`, `none` or `simulated`.
    pub source: &'static str,
    /// The status (`off` with source `none`).
    #[serde(flatten)]
    pub status: ClockStatus,
}

/// The clock metrics: `gridvisor_clock_offset_seconds`, `gridvisor_clock_synchronised`,
/// `gridvisor_clock_source{source}`.
#[derive(Clone)]
pub struct ClockMetrics {
    offset: prometheus::Gauge,
    synchronised: prometheus::Gauge,
}

impl ClockMetrics {
    /// Register them in `r`, with the source in force set to 1.
    pub fn register(
        r: &prometheus::Registry,
        source: ClockSourceKind,
    ) -> Result<Self, prometheus::Error> {
        let offset = prometheus::Gauge::new(
            "gridvisor_clock_offset_seconds",
            "The clock source's offset from its PTP master (signed); NaN without a \
             synchronised reading (a missing reading is never 0)",
        )?;
        let synchronised = prometheus::Gauge::new(
            "gridvisor_clock_synchronised",
            "1 while the clock source is synchronised to a grandmaster; 0 otherwise, and \
             with source none",
        )?;
        let sources = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "gridvisor_clock_source",
                "1 for the clock source in force (none: the PTP rows of the ladder are off)",
            ),
            &["source"],
        )?;
        r.register(Box::new(offset.clone()))?;
        r.register(Box::new(synchronised.clone()))?;
        r.register(Box::new(sources.clone()))?;
        for k in [
            ClockSourceKind::Ptp4l,
            ClockSourceKind::None,
            ClockSourceKind::Simulated,
        ] {
            let on = if k == source { 1.0 } else { 0.0 };
            sources.with_label_values(&[k.name()]).set(on);
        }
        let m = ClockMetrics {
            offset,
            synchronised,
        };
        m.set(&ClockStatus::Off);
        Ok(m)
    }

    /// Show `status`.
    pub fn set(&self, status: &ClockStatus) {
        match status {
            ClockStatus::Synchronised { offset_ns } => {
                self.offset.set(*offset_ns as f64 / 1e9);
                self.synchronised.set(1.0);
            }
            ClockStatus::Off | ClockStatus::Unsynchronised { .. } => {
                self.offset.set(f64::NAN);
                self.synchronised.set(0.0);
            }
        }
    }
}

/// The clock source of a node: its settings, the ptp4l board, the simulated monitor, the
/// metrics. Lives in [`crate::runtime::SiteShared`].
pub struct TimeSource {
    /// The settings in force ([`crate::config::Topology::clock`]).
    pub config: ClockConfig,
    /// What the ptp4l poller publishes.
    pub board: ClockBoard,
    sim: std::sync::Arc<crate::device::SimPtp>,
    metrics: ClockMetrics,
}

impl TimeSource {
    /// The clock source of `topology`, its metrics registered in `r`; says at start which
    /// source is in force.
    pub fn new(
        topology: &crate::config::Topology,
        sim: std::sync::Arc<crate::device::SimPtp>,
        r: &prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        let config = topology.clock();
        match config.source {
            ClockSourceKind::Ptp4l => tracing::info!(
                path = %config.path.display(),
                poll_ms = config.poll_ms,
                stale_ms = config.stale_ms,
                accept_uncalibrated = config.accept_uncalibrated,
                "clock source: ptp4l"
            ),
            ClockSourceKind::None => {
                tracing::warn!("clock source: none: the PTP rows of the safe-state ladder are off")
            }
            ClockSourceKind::Simulated => {
                tracing::info!("clock source: simulated (demo, tests and chaos runs)")
            }
        }
        let metrics = ClockMetrics::register(r, config.source)?;
        Ok(TimeSource {
            config,
            board: ClockBoard::default(),
            sim,
            metrics,
        })
    }

    /// The clock's status at `now` (and the metrics set to it).
    pub fn status(&self, now: Duration) -> ClockStatus {
        let s = match self.config.source {
            ClockSourceKind::None => ClockStatus::Off,
            ClockSourceKind::Ptp4l => judge(&self.board.snapshot(), now, &self.config),
            ClockSourceKind::Simulated => match self.sim.unsynchronised() {
                true => ClockStatus::Unsynchronised {
                    reason: "the simulated monitor is unsynchronised".into(),
                },
                false => ClockStatus::Synchronised {
                    offset_ns: i64::try_from(self.sim.offset().as_nanos()).unwrap_or(i64::MAX),
                },
            },
        };
        self.metrics.set(&s);
        s
    }

    /// The clock as the API shows it at `now`.
    pub fn view(&self, now: Duration) -> ClockView {
        ClockView {
            source: self.config.source.name(),
            status: self.status(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::{FaultKey, LadderConfig, SafeState};
    use gridvisor_transports::ptp::{ClockIdentity, PortIdentity};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(accept_uncalibrated: bool) -> ClockConfig {
        ClockConfig {
            stale_ms: 1_000,
            accept_uncalibrated,
            ..ClockConfig::new(ClockSourceKind::Ptp4l)
        }
    }

    fn ts(offset: i64, ingress: i64, gm: bool) -> TimeStatusNp {
        TimeStatusNp {
            master_offset_ns: offset,
            ingress_time_ns: ingress,
            cumulative_scaled_rate_offset: 0,
            scaled_last_gm_phase_change: 0,
            gm_time_base_indicator: 0,
            last_gm_phase_change: [0; 12],
            gm_present: gm,
            gm_identity: ClockIdentity([1; 8]),
        }
    }

    fn port(state: PortState) -> PortDataSet {
        PortDataSet {
            port_identity: PortIdentity::default(),
            port_state: state,
            log_min_delay_req_interval: 0,
            peer_mean_path_delay: 0,
            log_announce_interval: 0,
            announce_receipt_timeout: 3,
            log_sync_interval: -2,
            delay_mechanism: 1,
            log_min_pdelay_req_interval: 0,
            version_number: 2,
        }
    }

    fn reason(s: ClockStatus) -> String {
        match s {
            ClockStatus::Unsynchronised { reason } => reason,
            other => panic!("synchronised: {other:?}"),
        }
    }

    #[test]
    fn a_slave_with_fresh_syncs_is_synchronised_and_uncalibrated_only_when_accepted() {
        let b = ClockBoard::default();
        b.publish(&ts(-2_500, 10, true), &port(PortState::Slave), ms(0));
        let want = ClockStatus::Synchronised { offset_ns: -2_500 };
        assert_eq!(judge(&b.snapshot(), ms(500), &config(false)), want);
        b.publish(
            &ts(-2_500, 11, true),
            &port(PortState::Uncalibrated),
            ms(100),
        );
        assert!(
            reason(judge(&b.snapshot(), ms(100), &config(false))).contains("accept_uncalibrated")
        );
        assert_eq!(judge(&b.snapshot(), ms(100), &config(true)), want);
    }

    #[test]
    fn no_answer_a_stale_answer_or_a_failing_ptp4l_is_unsynchronised() {
        let b = ClockBoard::default();
        b.fail("no answer to TIME_STATUS_NP within 200ms".into());
        let r = reason(judge(&b.snapshot(), ms(0), &config(true)));
        assert!(
            r.contains("no reading") && r.contains("within 200ms"),
            "{r}"
        );
        b.publish(&ts(0, 10, true), &port(PortState::Slave), ms(0));
        b.fail("refused".into());
        // A failed poll alone is not yet a fault: the last good reading is fresh.
        assert!(matches!(
            judge(&b.snapshot(), ms(1_000), &config(true)),
            ClockStatus::Synchronised { .. }
        ));
        let r = reason(judge(&b.snapshot(), ms(1_001), &config(true)));
        assert!(r.contains("1001 ms ago") && r.contains("refused"), "{r}");
    }

    #[test]
    fn a_lost_grandmaster_is_seen_by_port_state_gm_present_and_sync_age() {
        let c = config(true);
        let b = ClockBoard::default();
        b.publish(&ts(5, 10, false), &port(PortState::Slave), ms(0));
        assert!(reason(judge(&b.snapshot(), ms(0), &c)).contains("gmPresent false"));
        b.publish(&ts(5, 10, true), &port(PortState::Listening), ms(0));
        assert!(reason(judge(&b.snapshot(), ms(0), &c)).contains("LISTENING"));
        b.publish(&ts(5, 0, true), &port(PortState::Slave), ms(0));
        assert!(reason(judge(&b.snapshot(), ms(0), &c)).contains("ingress_time 0"));
        // Answers keep coming, but the same Sync: stale once the bound passes.
        b.publish(&ts(5, 42, true), &port(PortState::Slave), ms(100));
        b.publish(&ts(5, 42, true), &port(PortState::Slave), ms(900));
        assert!(matches!(
            judge(&b.snapshot(), ms(1_100), &c),
            ClockStatus::Synchronised { .. }
        ));
        b.publish(&ts(5, 42, true), &port(PortState::Slave), ms(1_101));
        assert!(reason(judge(&b.snapshot(), ms(1_101), &c)).contains("no new Sync for 1001 ms"));
        b.publish(&ts(5, 43, true), &port(PortState::Slave), ms(1_200));
        assert!(matches!(
            judge(&b.snapshot(), ms(1_200), &c),
            ClockStatus::Synchronised { .. }
        ));
    }

    #[test]
    fn the_ladder_sees_offsets_only_when_synchronised() {
        let mut l = SafeStateLadder::new(LadderConfig::default(), ms(0));
        let off = |ns| ClockStatus::Synchronised { offset_ns: ns };
        assert_eq!(
            observe(&mut l, &off(-3_000_000), ms(0)).unwrap().to,
            SafeState::ChargeOnly
        );
        assert_eq!(
            observe(&mut l, &off(150_000_000), ms(1)).unwrap().to,
            SafeState::Tripped
        );
        let u = ClockStatus::Unsynchronised { reason: "x".into() };
        assert_eq!(observe(&mut l, &u, ms(2)), None);
        assert!(
            l.causes().contains(&FaultKey::ClockDrift),
            "a missing offset is not 0"
        );
        assert!(l.causes().contains(&FaultKey::ClockUnsynchronised));
        let mut fresh = SafeStateLadder::new(LadderConfig::default(), ms(0));
        assert_eq!(observe(&mut fresh, &ClockStatus::Off, ms(0)), None);
        assert_eq!(
            observe(&mut fresh, &u, ms(0)).unwrap().to,
            SafeState::ChargeOnly
        );
    }

    #[test]
    fn metrics_show_nan_without_a_synchronised_reading() {
        let r = prometheus::Registry::new();
        let m = ClockMetrics::register(&r, ClockSourceKind::Ptp4l).unwrap();
        m.set(&ClockStatus::Synchronised {
            offset_ns: -3_000_000,
        });
        assert_eq!(m.offset.get(), -0.003);
        assert_eq!(m.synchronised.get(), 1.0);
        m.set(&ClockStatus::Unsynchronised { reason: "x".into() });
        assert!(m.offset.get().is_nan());
        assert_eq!(m.synchronised.get(), 0.0);
    }
}
