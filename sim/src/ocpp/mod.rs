//! Simulated OCPP charge points (being built).
