//! The meter and inverter pollers of a segment.
//!
//! A meter poller reads the transformer's power and the grid's voltage and frequency every
//! [`METER_POLL`]; it steps the transformer's thermal model and feeds the ladder the grid
//! reading (islanding) and the thermal verdict. An inverter poller reads the core temperature
//! every [`INVERTER_POLL`] and feeds the ladder (derating). Both feed the ladder through
//! [`SegmentShared::observe`], which tells the safety actor of any change: detection costs no
//! mailbox hop.

use std::sync::Arc;
use std::time::Duration;

use gridvisor_supervisors::Mailbox;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::shared::{SegmentShared, SiteShared};
use super::{InverterMsg, MeterMsg, INVERTER_POLL, METER_POLL};
use crate::device::{InverterIo, MeterIo};
use crate::ladder::Fault;

/// Consecutive failed meter reads after which the segment is put in ChargeOnly.
pub const METER_FAILURE_LIMIT: u32 = 3;
/// How often the meter poller steps the thermal model and reports it (every n-th poll).
const THERMAL_EVERY_POLLS: u64 = 20;

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
    timer: Option<JoinHandle<()>>,
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
        // A reading that is not a number is no reading: it counts as a failed read (a meter
        // that alternates errors and garbage must still end in Metering, not reset its count).
        let read = s
            .io
            .read(now)
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.power_kw.is_finite() && r.voltage_pu.is_finite() && r.frequency_hz.is_finite()
                {
                    Ok(r)
                } else {
                    Err(format!(
                        "reading not a number: {} kW, {} pu, {} Hz",
                        r.power_kw, r.voltage_pu, r.frequency_hz
                    ))
                }
            });
        let r = match read {
            Ok(r) => r,
            Err(e) => {
                s.errors += 1;
                s.failing += 1;
                tracing::warn!(meter = %s.path, error = %e, errors = s.errors, "meter read failed");
                if s.failing >= METER_FAILURE_LIMIT {
                    // Decided now, after a read that may have hung until its time-out: the
                    // transition is stamped with when it was decided, not when the read began.
                    s.seg.observe(Fault::Metering(false), s.shared.clock.now());
                }
                return Ok(());
            }
        };
        if s.failing > 0 {
            s.failing = 0;
            s.seg.observe(Fault::Metering(true), now);
        }
        s.polls += 1;
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
        super::shared::lock(&s.seg.telemetry).metered_kw = r.power_kw;
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
    timer: Option<JoinHandle<()>>,
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
        Ok(InverterState {
            shared,
            seg,
            io,
            id,
            max_kw,
            path,
            mailbox,
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
            InverterMsg::Poll => match s.io.read(now).await {
                Ok(r) => {
                    s.seg.observe(
                        Fault::InverterTemperature {
                            inverter: s.id.clone(),
                            celsius: r.core_c,
                            rated_kw: s.max_kw,
                        },
                        now,
                    );
                }
                Err(e) => tracing::warn!(inverter = %s.path, error = %e, "inverter read failed"),
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
