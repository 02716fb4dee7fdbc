//! The meter and inverter pollers of a segment.
//!
//! A meter poller reads the transformer's power and the grid's voltage and frequency every
//! [`METER_POLL`]; it steps the transformer's thermal model and feeds the ladder the grid
//! reading (islanding, ROCOF) and the thermal verdict. Only a good reading (every value a
//! number, within the read's time-out) reaches the ladder: the ladder keeps its age, and the
//! safety tick puts the segment in ChargeOnly (`meter_stale`) once it is older than
//! `[safety] max_reading_age_ms`. A failed read is logged, never turned into a value. Each
//! read is bounded by a share of that age ([`METER_READ_TIMEOUT_DIVISOR`]), so a hung meter
//! is asked again in time to count, and its staleness does not wait for any time-out.
//!
//! With `[grid_services.frequency]` on, each good reading also feeds the segment's droop
//! tracker ([`crate::droop::FrequencyTracker`]); a step beyond its trigger asks the site for
//! a dispatch round at once (`SiteMsg::Redispatch`), so the response does not wait for the
//! next cycle.
//!
//! An inverter poller reads the core temperature every [`INVERTER_POLL`] (each read bounded
//! by [`INVERTER_READ_TIMEOUT`]) and feeds the ladder (derating); `[safety]
//! temperature_read_failures` failed reads in a row count as over-temperature for that
//! inverter ([`Fault::InverterTemperatureLost`]). Both feed the ladder through
//! [`SegmentShared::observe`], which tells the safety actor of any change: detection costs no
//! mailbox hop.

use std::sync::Arc;
use std::time::Duration;

use gridvisor_supervisors::Mailbox;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::shared::{SegmentShared, SiteShared};
use super::{
    InverterMsg, MeterMsg, INVERTER_POLL, INVERTER_READ_TIMEOUT, METER_POLL,
    METER_READ_TIMEOUT_DIVISOR,
};
use crate::device::{InverterIo, InverterReading, MeterIo, MeterReading};
use crate::ladder::Fault;

/// How often the meter poller steps the thermal model and reports it (every n-th poll).
const THERMAL_EVERY_POLLS: u64 = 20;
/// A meter or inverter that keeps failing is logged at warning level on its first failure
/// in a row and every this many after (at [`METER_POLL`], once a second), at debug between.
const WARN_EVERY_FAILURES: u32 = 20;

/// The time-out of one meter read for a reading-age bound of `max_reading_age`.
pub fn meter_read_timeout(max_reading_age: Duration) -> Duration {
    max_reading_age / METER_READ_TIMEOUT_DIVISOR
}

/// Whether the `failing`-th failure in a row is logged as a warning.
fn warn_now(failing: u32) -> bool {
    failing % WARN_EVERY_FAILURES == 1
}

pub(crate) struct Meter;

pub(crate) struct MeterState {
    shared: Arc<SiteShared>,
    seg: Arc<SegmentShared>,
    io: Arc<dyn MeterIo>,
    path: String,
    mailbox: Mailbox,
    polls: u64,
    thermal_at: Duration,
    errors: u64,
    failing: u32,
    read_timeout: Duration,
    timer: Option<JoinHandle<()>>,
}

impl MeterState {
    /// One read within the time-out; a reading that is not a number is a failed read (a
    /// meter that alternates errors and garbage is as blind as one that never answers).
    async fn read(&self, now: Duration) -> Result<MeterReading, String> {
        let r = match tokio::time::timeout(self.read_timeout, self.io.read(now)).await {
            Err(_) => return Err(format!("no answer within {:?}", self.read_timeout)),
            Ok(r) => r.map_err(|e| e.to_string())?,
        };
        if r.power_kw.is_finite() && r.voltage_pu.is_finite() && r.frequency_hz.is_finite() {
            Ok(r)
        } else {
            Err(format!(
                "reading not a number: {} kW, {} pu, {} Hz",
                r.power_kw, r.voltage_pu, r.frequency_hz
            ))
        }
    }

    fn failed(&mut self, error: &str) {
        self.errors += 1;
        self.failing += 1;
        let (path, errors, failing) = (&self.path, self.errors, self.failing);
        if warn_now(failing) {
            tracing::warn!(meter = %path, %error, errors, failing, "meter read failed");
        } else {
            tracing::debug!(meter = %path, %error, errors, failing, "meter read failed");
        }
    }
}

impl Actor for Meter {
    type Msg = MeterMsg;
    type State = MeterState;
    type Arguments = (Arc<SiteShared>, Arc<SegmentShared>, String, String);

    async fn pre_start(
        &self,
        myself: ActorRef<MeterMsg>,
        (shared, seg, id, path): Self::Arguments,
    ) -> Result<MeterState, ActorProcessingErr> {
        let io = shared.devices.meter(&id)?;
        let now = shared.clock.now();
        let timer = Some(super::tick_after(&myself, METER_POLL, || MeterMsg::Poll));
        let mailbox = shared.supervision.mailbox(&path).reopen();
        let max_age = shared.topology.safety.ladder_config().max_reading_age;
        Ok(MeterState {
            shared,
            seg,
            io,
            path,
            mailbox,
            polls: 0,
            thermal_at: now,
            errors: 0,
            failing: 0,
            read_timeout: meter_read_timeout(max_age),
            timer,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MeterMsg>,
        MeterMsg::Poll: MeterMsg,
        s: &mut MeterState,
    ) -> Result<(), ActorProcessingErr> {
        s.timer = Some(super::tick_after(&myself, METER_POLL, || MeterMsg::Poll));
        s.mailbox.handled();
        let now = s.shared.clock.now();
        // Nothing is observed for a failed read: the safety tick sees the reading's age.
        let r = match s.read(now).await {
            Ok(r) => r,
            Err(e) => {
                s.failed(&e);
                return Ok(());
            }
        };
        if s.failing > 0 {
            tracing::info!(meter = %s.path, after = s.failing, "meter answers again");
            s.failing = 0;
        }
        s.polls += 1;
        // Stamped with when the reading was taken: a reading that took long to arrive is
        // as old as its request, so a slow meter ages.
        s.seg.observe(
            Fault::GridReading {
                voltage_pu: r.voltage_pu,
                frequency_hz: r.frequency_hz,
                exporting: r.power_kw < 0.0,
            },
            now,
        );
        if s.polls % THERMAL_EVERY_POLLS == 1 {
            let dt = now.saturating_sub(s.thermal_at);
            s.thermal_at = now;
            let (fault, hot, headroom) = {
                let mut th = super::shared::lock(&s.seg.thermal);
                th.step(r.power_kw, dt);
                (th.fault(), th.hot_spot_c(), th.headroom())
            };
            // The allowance is for everything through the transformer; the cap is for our
            // devices. What the meter sees beyond the chargers (the building, PV, other
            // load) takes its share first, in either direction (the cap is symmetric).
            let fault = match fault {
                Fault::TransformerLimit(Some(allowance)) => {
                    // The chargers' share is known only between what each was last
                    // measured at and what it was last commanded (a reading can be a cycle
                    // old), signed: a discharging charger offsets load. The rest takes the
                    // end of that range that makes it largest, so a stale or ramping charger
                    // never loosens the cap.
                    let (low, high) = s.seg.links.iter().fold((0.0, 0.0), |(lo, hi), l| {
                        match (l.status.measured_kw, l.status.commanded_kw) {
                            (Some(m), Some(c)) => (lo + m.min(c), hi + m.max(c)),
                            (Some(x), None) | (None, Some(x)) => (lo + x, hi + x),
                            (None, None) => (lo, hi),
                        }
                    });
                    let uncontrolled = (r.power_kw - low).abs().max((r.power_kw - high).abs());
                    Fault::TransformerLimit(Some((allowance - uncontrolled).max(0.0)))
                }
                other => other,
            };
            s.seg.observe(fault, now);
            let m = &s.shared.metrics;
            m.segment_hot_spot.with_label_values(&[&s.seg.id]).set(hot);
            let mut t = super::shared::lock(&s.seg.telemetry);
            t.hot_spot_c = hot;
            t.headroom = headroom;
        }
        {
            let mut t = super::shared::lock(&s.seg.telemetry);
            t.metered_kw = r.power_kw;
            t.frequency_hz = Some(r.frequency_hz);
        }
        // A frequency step beyond the droop's deadband is answered now, not next cycle.
        if super::shared::lock(&s.seg.droop).observe(r.frequency_hz, now) {
            if let Some(site) = super::shared::lock(&s.shared.site).as_ref() {
                let _ = site.send_message(super::SiteMsg::Redispatch);
            }
        }
        s.shared
            .metrics
            .segment_power
            .with_label_values(&[&s.seg.id])
            .set(r.power_kw);
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<MeterMsg>,
        s: &mut MeterState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = s.timer.take() {
            t.abort();
        }
        s.mailbox.close();
        Ok(())
    }
}

pub(crate) struct Inverter;

pub(crate) struct InverterState {
    shared: Arc<SiteShared>,
    seg: Arc<SegmentShared>,
    io: Arc<dyn InverterIo>,
    id: String,
    max_kw: f64,
    path: String,
    mailbox: Mailbox,
    /// Failed temperature reads in a row.
    failing: u32,
    /// After this many the inverter counts as over-temperature.
    failure_limit: u32,
    timer: Option<JoinHandle<()>>,
}

impl InverterState {
    async fn read(&self, now: Duration) -> Result<InverterReading, String> {
        match tokio::time::timeout(INVERTER_READ_TIMEOUT, self.io.read(now)).await {
            Err(_) => Err(format!("no answer within {INVERTER_READ_TIMEOUT:?}")),
            Ok(r) => r.map_err(|e| e.to_string()),
        }
    }

    /// A failed temperature read: past the limit in a row, the inverter's temperature is
    /// unknown, which counts as over-temperature (decided now, after the read's time-out).
    fn failed(&mut self, error: &str) {
        self.failing = self.failing.saturating_add(1);
        let (path, failing) = (&self.path, self.failing);
        if warn_now(failing) {
            tracing::warn!(inverter = %path, %error, failing, "inverter read failed");
        } else {
            tracing::debug!(inverter = %path, %error, failing, "inverter read failed");
        }
        if self.failing >= self.failure_limit {
            let lost = Fault::InverterTemperatureLost {
                inverter: self.id.clone(),
            };
            self.seg.observe(lost, self.shared.clock.now());
        }
    }
}

impl Actor for Inverter {
    type Msg = InverterMsg;
    type State = InverterState;
    type Arguments = (Arc<SiteShared>, Arc<SegmentShared>, String, f64, String);

    async fn pre_start(
        &self,
        myself: ActorRef<InverterMsg>,
        (shared, seg, id, max_kw, path): Self::Arguments,
    ) -> Result<InverterState, ActorProcessingErr> {
        let io = shared.devices.inverter(&id)?;
        // Read before write: bring the device under the segment's current level.
        let now = shared.clock.now();
        let r = io.read(now).await?;
        let clamped = seg.level().clamp(r.setpoint_kw);
        if clamped != r.setpoint_kw {
            io.write(clamped, now).await?;
        }
        seg.inverters.insert(id.clone(), myself.clone());
        let timer = Some(super::tick_after(&myself, INVERTER_POLL, || {
            InverterMsg::Poll
        }));
        let mailbox = shared.supervision.mailbox(&path).reopen();
        let failure_limit = shared.topology.safety.temperature_read_failures.max(1);
        Ok(InverterState {
            shared,
            seg,
            io,
            id,
            max_kw,
            path,
            mailbox,
            failing: 0,
            failure_limit,
            timer,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<InverterMsg>,
        msg: InverterMsg,
        s: &mut InverterState,
    ) -> Result<(), ActorProcessingErr> {
        s.timer = Some(super::tick_after(&myself, INVERTER_POLL, || {
            InverterMsg::Poll
        }));
        s.mailbox.handled();
        let now = s.shared.clock.now();
        match msg {
            InverterMsg::Poll => match s.read(now).await {
                Ok(r) => {
                    s.failing = 0;
                    s.seg.observe(
                        Fault::InverterTemperature {
                            inverter: s.id.clone(),
                            celsius: r.core_c,
                            rated_kw: s.max_kw,
                        },
                        now,
                    );
                }
                Err(e) => s.failed(&e),
            },
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<InverterMsg>,
        s: &mut InverterState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = s.timer.take() {
            t.abort();
        }
        s.seg
            .inverters
            .remove_if(&s.id, |_, r| r.get_id() == myself.get_id());
        s.mailbox.close();
        Ok(())
    }
}
