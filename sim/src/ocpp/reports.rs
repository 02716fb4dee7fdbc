//! The messages a simulated charge point sends, built from its state: BootNotification,
//! StatusNotification, meter samples, TransactionEvent and MeterValues.
//!
//! Invariant: every sample is taken from one [`SimState`] snapshot with the simulated time as
//! its timestamp; power is split into `Power.Active.Import` / `Power.Active.Export` (both ≥ 0,
//! W), energy registers are in Wh, SoC in percent.

use gridvisor_transports::ocpp::messages::*;
use serde_json::Map;

use super::state::SimState;

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
