//! The messages a simulated charge point sends, built from its state: BootNotification,
//! StatusNotification, meter samples, TransactionEvent and MeterValues.
//!
//! Invariant: every sample is taken from one [`SimState`] snapshot with the simulated time as
//! its timestamp; power is split into `Power.Active.Import` / `Power.Active.Export` (both ≥ 0,
//! W), energy registers are in Wh, SoC in percent.

use gridvisor_transports::ocpp::messages::*;
use serde_json::Map;

use super::state::SimState;
use super::vehicle::EvNeeds;
use gridvisor_transports::ocpp::OcppVersion;

/// The simulated DC charger's voltage limit reported for the EV, V.
pub const EV_MAX_VOLTAGE: f64 = 800.0;

/// The simulated station's vendor name in BootNotification.
pub const VENDOR: &str = "gridvisor";
/// The simulated station's model in BootNotification.
pub const MODEL: &str = "sim-v2g";

/// The simulated time as an OCPP date-time (the wall clock if it is out of range).
pub fn timestamp(state: &SimState) -> DateTime {
    DateTime::from_system_time(state.now).unwrap_or_else(|_| DateTime::now())
}

/// BootNotification for `reason`.
pub fn boot(reason: BootReason) -> BootNotificationRequest {
    BootNotificationRequest {
        charging_station: ChargingStation {
            serial_number: None,
            model: MODEL.to_owned(),
            modem: None,
            vendor_name: VENDOR.to_owned(),
            firmware_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            extra: Map::new(),
        },
        reason,
        extra: Map::new(),
    }
}

/// StatusNotification of the EVSE's connector 1: Occupied with a vehicle, else Available.
pub fn status(state: &SimState, evse_id: i32) -> StatusNotificationRequest {
    StatusNotificationRequest {
        timestamp: timestamp(state),
        connector_status: if state.vehicle.is_some() {
            ConnectorStatus::Occupied
        } else {
            ConnectorStatus::Available
        },
        evse_id,
        connector_id: 1,
        extra: Map::new(),
    }
}

fn sample(measurand: Measurand, value: f64, unit: &str, context: ReadingContext) -> SampledValue {
    SampledValue {
        value,
        measurand: Some(measurand),
        context: Some(context),
        phase: None,
        location: Some(Location::Outlet),
        unit_of_measure: Some(UnitOfMeasure {
            unit: Some(unit.to_owned()),
            multiplier: None,
            extra: Map::new(),
        }),
        extra: Map::new(),
    }
}

/// One meter sample of the state now.
pub fn meter_value(state: &SimState, context: ReadingContext) -> MeterValue {
    let w = (state.power_kw * 1000.0).round();
    let mut values = vec![
        sample(Measurand::PowerActiveImport, w.max(0.0), "W", context),
        sample(Measurand::PowerActiveExport, (-w).max(0.0), "W", context),
        sample(
            Measurand::EnergyActiveImportRegister,
            (state.register.import_kwh * 1000.0).round(),
            "Wh",
            context,
        ),
        sample(
            Measurand::EnergyActiveExportRegister,
            (state.register.export_kwh * 1000.0).round(),
            "Wh",
            context,
        ),
    ];
    if let Some(v) = &state.vehicle {
        let soc = (v.soc() * 1000.0).round() / 10.0;
        values.push(sample(Measurand::SoC, soc, "Percent", context));
    }
    MeterValue {
        timestamp: timestamp(state),
        sampled_value: values,
        extra: Map::new(),
    }
}

/// MeterValues outside a transaction.
pub fn meter_values(state: &SimState, evse_id: i32) -> MeterValuesRequest {
    MeterValuesRequest {
        evse_id,
        meter_value: vec![meter_value(state, ReadingContext::SamplePeriodic)],
        extra: Map::new(),
    }
}

/// A TransactionEvent of the open transaction (`None` without one); advances its sequence
/// number.
pub fn transaction_event(
    state: &mut SimState,
    evse_id: i32,
    event_type: TransactionEventType,
    trigger_reason: TriggerReason,
    id_token: Option<IdToken>,
) -> Option<TransactionEventRequest> {
    let context = match event_type {
        TransactionEventType::Started => ReadingContext::TransactionBegin,
        TransactionEventType::Updated => ReadingContext::SamplePeriodic,
        TransactionEventType::Ended => ReadingContext::TransactionEnd,
    };
    let sample = meter_value(state, context);
    let charging = if state.power_kw.abs() > 0.0 {
        ChargingState::Charging
    } else {
        ChargingState::SuspendedEVSE
    };
    let tx = state.transaction.as_mut()?;
    let seq_no = tx.seq_no;
    tx.seq_no = tx.seq_no.saturating_add(1);
    Some(TransactionEventRequest {
        event_type,
        timestamp: sample.timestamp.clone(),
        trigger_reason,
        seq_no,
        offline: tx.began_offline.then_some(true),
        number_of_phases_used: None,
        cable_max_current: None,
        reservation_id: None,
        preconditioning_status: None,
        evse_sleep: None,
        transaction_info: Transaction {
            transaction_id: tx.id.clone(),
            charging_state: Some(charging),
            time_spent_charging: None,
            stopped_reason: (event_type == TransactionEventType::Ended).then_some(
                if trigger_reason == TriggerReason::RemoteStop {
                    StopReason::Remote
                } else {
                    StopReason::EVDisconnected
                },
            ),
            remote_start_id: tx.remote_start_id,
            operation_mode: None,
            tariff_id: None,
            transaction_limit: None,
            extra: Map::new(),
        },
        evse: Some(Evse {
            id: evse_id,
            connector_id: Some(1),
            extra: Map::new(),
        }),
        id_token,
        meter_value: Some(vec![sample]),
        extra: Map::new(),
    })
}

/// The id token the simulated driver presents.
pub fn id_token(token: &str) -> IdToken {
    IdToken {
        id_token: token.to_owned(),
        kind: "ISO14443".to_owned(),
        additional_info: None,
        extra: Map::new(),
    }
}

/// NotifyEVChargingNeeds of the plugged-in vehicle with `needs` (`None` without a vehicle):
/// departure, energy to the target, and on 2.1 the V2X parameters: power limits and the
/// energy requests to the target, the vehicle's floor, full, and the V2X floor (Wh, negative
/// when that level is below the vehicle's state of charge).
pub fn charging_needs(
    state: &SimState,
    evse_id: i32,
    version: OcppVersion,
    needs: &EvNeeds,
) -> Option<NotifyEVChargingNeedsRequest> {
    let v = state.vehicle.as_ref()?;
    let wh = |soc: f64| ((soc - v.soc()) * v.capacity_kwh() * 1000.0).round();
    let departure = DateTime::from_system_time(needs.departure).ok();
    let dc = DcChargingParameters {
        ev_max_current: (v.max_charge_kw() * 1000.0 / EV_MAX_VOLTAGE).round(),
        ev_max_voltage: EV_MAX_VOLTAGE,
        ev_max_power: Some(v.max_charge_kw() * 1000.0),
        ev_energy_capacity: Some(v.capacity_kwh() * 1000.0),
        energy_amount: Some(wh(needs.target_soc).max(0.0)),
        state_of_charge: Some((v.soc() * 100.0).round() as i32),
        full_soc: Some(100),
        bulk_soc: None,
        extra: Map::new(),
    };
    let bidirectional = v.bidirectional() && version == OcppVersion::V21;
    let v2x = bidirectional.then(|| V2xChargingParameters {
        max_charge_power: Some(v.max_charge_kw() * 1000.0),
        max_discharge_power: Some(v.max_discharge_kw() * 1000.0),
        ev_target_energy_request: Some(wh(needs.target_soc)),
        ev_min_energy_request: Some(wh(v.min_soc())),
        ev_max_energy_request: Some(wh(1.0)),
        ev_min_v2x_energy_request: Some(wh(needs.min_v2x_soc)),
        ev_max_v2x_energy_request: Some(wh(1.0)),
        target_soc: Some((needs.target_soc * 100.0).round() as i32),
        ..Default::default()
    });
    let (requested, available, control, mobility) = match version {
        OcppVersion::V21 if bidirectional => (
            EnergyTransferMode::DcBpt,
            Some(vec![EnergyTransferMode::Dc, EnergyTransferMode::DcBpt]),
            Some(ControlMode::DynamicControl),
            Some(MobilityNeedsMode::Evcc),
        ),
        _ => (EnergyTransferMode::Dc, None, None, None),
    };
    Some(NotifyEVChargingNeedsRequest {
        evse_id,
        max_schedule_tuples: None,
        charging_needs: ChargingNeeds {
            requested_energy_transfer: requested,
            available_energy_transfer: available,
            control_mode: control,
            mobility_needs_mode: mobility,
            departure_time: departure,
            ac_charging_parameters: None,
            dc_charging_parameters: Some(dc),
            v2x_charging_parameters: v2x,
            ev_energy_offer: None,
            extra: Map::new(),
        },
        timestamp: (version == OcppVersion::V21).then(|| timestamp(state)),
        extra: Map::new(),
    })
}
