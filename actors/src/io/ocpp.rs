//! OCPP chargers (being written).
